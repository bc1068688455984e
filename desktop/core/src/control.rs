//! The local control API: a unix socket (mode 0600), on Windows a named pipe (local clients only; only its owner,
//! the administrators and the system may write to it), that the CLI and the desktop app use to ask the running
//! agent for its status and to pause, resume or quit it.

use std::path::{Path, PathBuf};

use axum::extract::State as AxState;
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
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
        endpoint::remove(&self.path);
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

/// The control socket: a unix socket file.
#[cfg(unix)]
mod endpoint {
    use std::path::Path;

    use tokio::net::{UnixListener, UnixStream};

    pub(super) type Listener = UnixListener;

    /// Whether an agent answers at `path`.
    pub(super) async fn answers(path: &Path) -> bool {
        path.exists() && UnixStream::connect(path).await.is_ok()
    }

    /// Listens at `path` (a stale socket file replaced), readable and writable by this user only.
    pub(super) fn bind(path: &Path) -> std::io::Result<Listener> {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(listener)
    }

    /// Serves `app` on `listener` for ever.
    pub(super) async fn serve(listener: Listener, app: axum::Router) {
        let _ = axum::serve(listener, app).await;
    }

    pub(super) async fn connect(path: &Path) -> std::io::Result<UnixStream> {
        UnixStream::connect(path).await
    }

    /// What is left when the server goes.
    pub(super) fn remove(path: &Path) {
        let _ = std::fs::remove_file(path);
    }
}

/// The control socket: a named pipe, `\\.\pipe\commons-agent-<hash of the path>` (a path already in `\\.\pipe\`
/// is taken as it is), so that the settings name it as on other systems.
#[cfg(windows)]
mod endpoint {
    use std::path::Path;
    use std::time::Duration;

    use tokio::net::windows::named_pipe::{
        ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
    };

    pub(super) struct Listener {
        name: String,
        next: NamedPipeServer,
    }

    const PIPES: &str = r"\\.\pipe\";

    /// The pipe's name for a settings path.
    pub(super) fn name(path: &Path) -> String {
        let p = path.to_string_lossy();
        if p.to_ascii_lowercase().starts_with(PIPES) {
            return p.into_owned();
        }
        use sha2::Digest;
        let hash = sha2::Sha256::digest(p.as_bytes());
        format!("{PIPES}commons-agent-{}", hex::encode(&hash[..8]))
    }

    /// ERROR_PIPE_BUSY: every instance of the pipe is serving someone.
    const PIPE_BUSY: i32 = 231;

    pub(super) async fn connect(path: &Path) -> std::io::Result<NamedPipeClient> {
        let name = name(path);
        let mut tries = 0;
        loop {
            match ClientOptions::new().open(&name) {
                Err(e) if e.raw_os_error() == Some(PIPE_BUSY) && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    pub(super) async fn answers(path: &Path) -> bool {
        connect(path).await.is_ok()
    }

    fn instance(name: &str, first: bool) -> std::io::Result<NamedPipeServer> {
        ServerOptions::new()
            .first_pipe_instance(first)
            .reject_remote_clients(true)
            .create(name)
    }

    pub(super) fn bind(path: &Path) -> std::io::Result<Listener> {
        let name = name(path);
        let next = instance(&name, true)?;
        Ok(Listener { name, next })
    }

    /// Serves `app` on the pipe for ever: each client gets the waiting instance, and a new one waits for the next.
    pub(super) async fn serve(mut listener: Listener, app: axum::Router) {
        use hyper_util::rt::TokioIo;
        use hyper_util::service::TowerToHyperService;
        loop {
            if listener.next.connect().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let fresh = match instance(&listener.name, false) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the next instance of the control pipe");
                    return;
                }
            };
            let connected = std::mem::replace(&mut listener.next, fresh);
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(connected), service)
                    .await;
            });
        }
    }

    /// A pipe leaves nothing behind.
    pub(super) fn remove(_path: &Path) {}
}

/// Serves the control API at `path`.
pub async fn serve(
    path: &Path,
    state: watch::Receiver<State>,
    session: watch::Receiver<Session>,
    commands: mpsc::Sender<Command>,
) -> Result<ControlServer, ControlError> {
    if endpoint::answers(path).await {
        return Err(ControlError::AlreadyRunning(path.to_owned()));
    }
    let listener = endpoint::bind(path).map_err(|source| ControlError::Socket {
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
    let task = tokio::spawn(endpoint::serve(listener, app));
    Ok(ControlServer {
        path: path.to_owned(),
        task,
    })
}

/// Calls the running agent: `GET /status` or `POST /pause|/resume|/quit`.
pub async fn call(path: &Path, method: &str, route: &str) -> Result<Value, ControlError> {
    let stream = endpoint::connect(path)
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

    #[tokio::test]
    async fn the_api_answers_at_its_path_for_one_agent_only_and_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (_state, state) = watch::channel(State::Active);
        let (_session, session) = watch::channel(Session::default());
        let (commands, mut received) = mpsc::channel(4);
        let e = call(&path, "GET", "/status").await.unwrap_err();
        assert!(matches!(e, ControlError::NotRunning { .. }), "{e}");
        let server = serve(&path, state.clone(), session.clone(), commands.clone())
            .await
            .unwrap();
        let status: Status =
            serde_json::from_value(call(&path, "GET", "/status").await.unwrap()).unwrap();
        assert_eq!(status.state, State::Active);
        // Several calls at once are each answered.
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let path = path.clone();
            calls.spawn(async move { call(&path, "GET", "/status").await });
        }
        while let Some(answer) = calls.join_next().await {
            assert_eq!(answer.unwrap().unwrap()["state"]["state"], "active");
        }
        assert_eq!(call(&path, "POST", "/pause").await.unwrap()["ok"], true);
        assert!(matches!(received.recv().await, Some(Command::Pause)));
        // A second agent is refused while the first answers.
        let e = serve(&path, state, session, commands).await.unwrap_err();
        assert!(matches!(e, ControlError::AlreadyRunning(_)), "{e}");
        drop(server);
        // Its task ends at the runtime's next turn.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let e = call(&path, "GET", "/status").await.unwrap_err();
        assert!(matches!(e, ControlError::NotRunning { .. }), "{e}");
    }

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
