//! The assignment and its containers: connecting to the engine, reconciling, pausing, removing.

use std::collections::{BTreeSet, HashMap};

use commons_shared::api::{ContainerAssignment, ContainerState, ContainerStatus};
use tokio::sync::mpsc;

use super::ContainerView;
use crate::containers::{Engine, Policy, Progress, Upstream};
use crate::settings::Settings;

/// The containers' side of the agent.
pub(super) struct Work {
    engine: Option<Engine>,
    /// The assignment; `None` until the coordinator has said it (after a restart, until the first heartbeat):
    /// reconciling against nothing would remove what should be adopted.
    desired: Option<Vec<ContainerAssignment>>,
    /// Their states, for the next heartbeat.
    containers: Vec<ContainerStatus>,
    progress: mpsc::Sender<Progress>,
    /// What the volunteer should know: the engine is missing, or the assigned services could not be started.
    problem: Option<String>,
}

impl Work {
    pub(super) fn new(progress: mpsc::Sender<Progress>) -> Self {
        Self {
            engine: None,
            desired: None,
            containers: Vec::new(),
            progress,
            problem: None,
        }
    }

    /// What is wrong, in plain words with the next step, if anything is.
    pub(super) fn problem(&self) -> Option<String> {
        self.problem.clone()
    }

    /// Why nothing serves, when services are assigned, an engine is there, and every one of them failed.
    pub(super) fn failing(&self) -> Option<String> {
        let all_failed = self.engine.is_some()
            && self.desired.as_ref().is_some_and(|d| !d.is_empty())
            && !self.containers.is_empty()
            && self
                .containers
                .iter()
                .all(|c| c.state == ContainerState::Failed);
        all_failed.then(|| self.problem.clone()).flatten()
    }

    /// Connects to the container engine; without one, what the volunteer can do about it.
    pub(super) async fn connect(&mut self, settings: &Settings) -> Option<String> {
        match Engine::connect(settings.policy()).await {
            Ok(e) => {
                self.engine = Some(e);
                None
            }
            Err(e) => {
                tracing::warn!("{e}");
                self.problem = Some(crate::containers::engine_hint(&e));
                self.problem.clone()
            }
        }
    }

    /// New caps and allow-list, for the containers created from now on (and those recreated because theirs changed).
    pub(super) fn set_policy(&mut self, policy: Policy) {
        if let Some(engine) = self.engine.as_mut() {
            engine.set_policy(policy);
        }
    }

    /// The coordinator's assignment.
    pub(super) fn assign(&mut self, list: Vec<ContainerAssignment>) {
        self.desired = Some(list);
    }

    /// There is an engine and something assigned to run on it.
    pub(super) fn has_work(&self) -> bool {
        self.engine.is_some() && self.desired.as_ref().is_some_and(|d| !d.is_empty())
    }

    /// The services assigned.
    pub(super) fn services(&self) -> BTreeSet<String> {
        self.desired
            .iter()
            .flatten()
            .map(|a| a.service.clone())
            .collect()
    }

    /// The containers' states, for a heartbeat.
    pub(super) fn statuses(&self) -> Vec<ContainerStatus> {
        self.containers.clone()
    }

    /// Makes the containers match the assignment. Returns the services running and where they listen, for the gateway,
    /// when the engine could list them.
    pub(super) async fn reconcile(&mut self) -> Option<HashMap<String, Upstream>> {
        let (Some(engine), Some(desired)) = (self.engine.as_mut(), self.desired.as_ref()) else {
            return None;
        };
        let result = engine.reconcile(desired, Some(&self.progress)).await;
        let routes = engine.ours().await.ok().map(|ours| {
            ours.into_iter()
                .filter(|c| c.running)
                .map(|c| (c.service, c.upstream))
                .collect()
        });
        match result {
            Ok(states) => {
                self.containers = states;
                self.problem = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "containers could not be brought up");
                let services: Vec<String> = self.services().into_iter().collect();
                self.problem = Some(format!(
                    "could not start the {} service{}: {e}",
                    services.join(", "),
                    if services.len() == 1 { "" } else { "s" }
                ));
                self.containers = self
                    .desired
                    .iter()
                    .flatten()
                    .map(|a| ContainerStatus {
                        name: a.name.clone(),
                        state: ContainerState::Failed,
                        restarts: 0,
                    })
                    .collect();
            }
        }
        routes
    }

    /// Stops the containers (kept, for resuming or for the next process to adopt).
    pub(super) async fn pause(&mut self) {
        if let Some(engine) = self.engine.as_ref() {
            if let Err(e) = engine.stop_all().await {
                tracing::warn!(error = %e, "could not stop the containers");
            }
            for c in &mut self.containers {
                c.state = ContainerState::Stopped;
            }
        }
    }

    /// Removes the containers.
    pub(super) async fn remove_all(&mut self) {
        if let Some(engine) = self.engine.as_mut()
            && let Err(e) = engine.remove_all().await
        {
            tracing::warn!(error = %e, "could not remove the containers");
        }
    }

    /// The assigned containers with their states, as a UI shows them: one the engine has not reported yet is
    /// pulling, unless nothing runs (`idle`: paused or held back, or there is no engine).
    pub(super) fn views(&self, idle: bool) -> Vec<ContainerView> {
        let unreported = if idle || self.engine.is_none() {
            ContainerState::Stopped
        } else {
            ContainerState::Pulling
        };
        self.desired
            .iter()
            .flatten()
            .map(|a| ContainerView {
                name: a.name.clone(),
                service: a.service.clone(),
                image: a.image.clone(),
                state: self
                    .containers
                    .iter()
                    .find(|c| c.name == a.name)
                    .map_or(unreported, |c| c.state),
            })
            .collect()
    }
}
