//! The local control API: a unix socket (mode 0600) the CLI and the desktop app use to ask the running agent
//! for its status and to pause, resume or quit it.

use std::path::{Path, PathBuf};

use axum::extract::State as AxState;
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::agent::{Command, Session, State};

#[derive(Clone)]
struct Ctl {
    state: watch::Receiver<State>,
    session: watch::Receiver<Session>,
    commands: mpsc::Sender<Command>,
}

/// What `GET /status` answers: the agent's state and session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// The volunteer's own contribution in words, where a person reading the JSON looks first.
    pub contribution: Option<String>,
    /// What the agent is doing.
    pub state: State,
    /// Who it is.
    pub session: Session,
}

impl std::fmt::Display for Status {
    /// The lines `commons-agent status` prints: what it is doing, what it gave, where it is joined, what holds it
    /// back or needs fixing, and its containers.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.session;
        let doing = match &self.state {
            State::Stopped => "stopped".to_owned(),
            State::Registering => "joining a coordinator".to_owned(),
            State::Pulling => "fetching its services' images".to_owned(),
            State::Active => "donating".to_owned(),
            State::Paused => "paused".to_owned(),
            State::Error(why) => format!("stuck: {why}"),
        };
        writeln!(f, "Commons agent: {doing}")?;
        if let Some(c) = &self.contribution {
            writeln!(f, "{c}")?;
        }
        if !s.worker_id.is_empty() {
            let tier = s.tier.map(|t| format!(", tier {t}")).unwrap_or_default();
            writeln!(f, "Worker {} at {}{tier}", s.worker_id, s.coordinator_url)?;
        }
        if let Some(r) = &s.reached {
            writeln!(f, "Reached {r}")?;
        } else if let Some(e) = &s.endpoint {
            writeln!(f, "Reached at {e}")?;
        }
        if let Some(h) = &s.held {
            writeln!(f, "Held back: {h}")?;
        }
        if let Some(p) = &s.problem {
            writeln!(f, "To fix: {p}")?;
        }
        if let Some(c) = &s.catalogue {
            writeln!(f, "Runs what {c} says")?;
        }
        if s.containers.is_empty() {
            return Ok(());
        }
        writeln!(f, "Services:")?;
        let width = s
            .containers
            .iter()
            .map(|c| c.service.len())
            .max()
            .unwrap_or(0);
        for c in &s.containers {
            writeln!(
                f,
                "  {:width$}  {:8}  {}",
                c.service,
                c.state.as_str(),
                c.image
            )?;
        }
        Ok(())
    }
}

async fn status(AxState(c): AxState<Ctl>) -> Json<Status> {
    let state = c.state.borrow().clone();
    let session = c.session.borrow().clone();
    Json(Status {
        contribution: session.contribution.clone(),
        state,
        session,
    })
}

async fn send(c: &Ctl, cmd: Command) -> Json<Value> {
    let ok = c.commands.send(cmd).await.is_ok();
    Json(json!({"ok": ok}))
}

async fn pause(AxState(c): AxState<Ctl>) -> Json<Value> {
    send(&c, Command::Pause).await
}

async fn resume(AxState(c): AxState<Ctl>) -> Json<Value> {
    send(&c, Command::Resume).await
}

async fn quit(AxState(c): AxState<Ctl>) -> Json<Value> {
    send(&c, Command::Quit).await
}

/// The control server; removes its socket when dropped.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The control socket cannot be served or called.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Another agent answers on the socket.
    #[error("an agent is already running (its control socket {} answers)", .0.display())]
    AlreadyRunning(PathBuf),
    /// The socket cannot be made.
    #[error("cannot open the control socket {}: {source}", path.display())]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No agent answers.
    #[error("no agent is running (cannot open its control socket {}: {source}); start one with `commons-agent run`", path.display())]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The call failed on the way.
    #[error("the agent did not answer: {0}")]
    Call(#[from] hyper::Error),
    /// The request could not be made.
    #[error("bad control request: {0}")]
    Request(#[from] axum::http::Error),
    /// The answer is not JSON.
    #[error("the agent's answer is not JSON: {0}")]
    Answer(#[from] serde_json::Error),
}

/// Serves the control API at `path`.
pub async fn serve(
    path: &Path,
    state: watch::Receiver<State>,
    session: watch::Receiver<Session>,
    commands: mpsc::Sender<Command>,
) -> Result<ControlServer, ControlError> {
    if path.exists() && UnixStream::connect(path).await.is_ok() {
        return Err(ControlError::AlreadyRunning(path.to_owned()));
    }
    let socket = || -> std::io::Result<UnixListener> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let listener = UnixListener::bind(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(listener)
    };
    let listener = socket().map_err(|source| ControlError::Socket {
        path: path.to_owned(),
        source,
    })?;
    let app = Router::new()
        .route("/status", get(status))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/quit", post(quit))
        .with_state(Ctl {
            state,
            session,
            commands,
        });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(ControlServer {
        path: path.to_owned(),
        task,
    })
}

/// Calls the running agent: `GET /status` or `POST /pause|/resume|/quit`.
pub async fn call(path: &Path, method: &str, route: &str) -> Result<Value, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::NotRunning {
            path: path.to_owned(),
            source,
        })?;
    let req = hyper::Request::builder()
        .method(method)
        .uri(route)
        .header("host", "agent")
        .body(http_body_util::Empty::<axum::body::Bytes>::new())?;
    let resp = commons_server::forward::request(stream, req).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ContainerView;
    use commons_shared::api::ContainerState;

    #[test]
    fn status_reads_as_sentences_and_survives_json() {
        let status = Status {
            contribution: Some("Today you served 3 OCR pages; 1.0 hours donated this week.".into()),
            state: State::Active,
            session: Session {
                worker_id: "w-1".into(),
                coordinator_url: "http://c.example".into(),
                tier: Some(2),
                endpoint: Some("http://127.0.0.1:4100".into()),
                reached: Some("over this computer's own connection to the coordinator".into()),
                held: Some("on battery".into()),
                containers: vec![ContainerView {
                    name: "commons-ocr".into(),
                    service: "ocr".into(),
                    image: "commons/ocr:1".into(),
                    state: ContainerState::Running,
                }],
                ..Session::default()
            },
        };
        assert_eq!(
            status.to_string(),
            "Commons agent: donating\n\
             Today you served 3 OCR pages; 1.0 hours donated this week.\n\
             Worker w-1 at http://c.example, tier 2\n\
             Reached over this computer's own connection to the coordinator\n\
             Held back: on battery\n\
             Services:\n  ocr  running   commons/ocr:1\n"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["state"]["state"], "active");
        assert_eq!(serde_json::from_value::<Status>(json).unwrap(), status);
        let stuck = Status {
            state: State::Error("no engine".into()),
            ..status
        };
        assert!(
            stuck
                .to_string()
                .starts_with("Commons agent: stuck: no engine\n")
        );
    }
}
