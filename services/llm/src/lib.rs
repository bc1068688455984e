//! The llm service's front. llama.cpp's `llama-server` serves chat and completions, or embeddings (`--embeddings`
//! refuses completions), never both; this front runs one of each on the same model (or an embedding model of its
//! own) on unix sockets inside the container, and serves them as one OpenAI-compatible API:
//!
//! - `/v1/embeddings` goes to the embedding server, every other `/v1/...` path to the chat server, both streamed
//!   (SSE answers pass chunk by chunk);
//! - `GET /health` is 200 once both servers have loaded their models, 503 until then;
//! - a streamed chat or completion asks llama-server for its usage (`stream_options.include_usage`), so the stream
//!   ends with OpenAI's usage chunk (empty `choices`) that the coordinator meters tokens by;
//! - bodies over the limit get 413, unknown paths 404, as JSON `{error, message}` (llama.cpp's own errors keep
//!   OpenAI's shape, which OpenAI clients read);
//! - SIGTERM is passed on to both servers, and the front exits once they have.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use commons_server::error::ApiError;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

/// What the front runs, from the container's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `unix:/path` or `host:port` (`COMMONS_LISTEN`).
    pub listen: String,
    /// The GGUF model for chat and completions (`COMMONS_LLM_MODEL`).
    pub model: PathBuf,
    /// The GGUF model for embeddings (`COMMONS_LLM_EMBEDDING_MODEL`, default: the chat model).
    pub embedding_model: PathBuf,
    /// The name clients use for it (`COMMONS_LLM_ALIAS`, default: the file name without `.gguf`).
    pub alias: String,
    /// Context length per server (`COMMONS_LLM_CONTEXT`, default 4096).
    pub context: u32,
    /// Streams served at once by the chat server (`COMMONS_LLM_PARALLEL`, default 4).
    pub parallel: u32,
    /// Layers offloaded to the GPU (`COMMONS_LLM_GPU_LAYERS`, default 0: CPU; 999: all, on a CUDA build).
    pub gpu_layers: u32,
    /// The llama.cpp server binary (`COMMONS_LLAMA_SERVER`, default `llama-server`).
    pub llama_server: PathBuf,
    /// Where the two servers' sockets go (`COMMONS_LLM_RUN`, default `/tmp`).
    pub run_dir: PathBuf,
    /// The largest request body, bytes (`COMMONS_LLM_MAX_BODY`, default 8 MiB).
    pub max_body: usize,
}

/// A setting in the environment that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {why}")]
pub struct ConfigError {
    name: &'static str,
    value: String,
    why: &'static str,
}

impl Config {
    /// Reads the settings from `var` (the process environment in `main`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        fn number<T: std::str::FromStr>(
            var: &impl Fn(&str) -> Option<String>,
            name: &'static str,
            default: T,
        ) -> Result<T, ConfigError> {
            match var(name) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| ConfigError {
                    name,
                    value: v,
                    why: "not a whole number",
                }),
            }
        }
        let model = PathBuf::from(var("COMMONS_LLM_MODEL").ok_or(ConfigError {
            name: "COMMONS_LLM_MODEL",
            value: String::new(),
            why: "name the GGUF model file (the catalogue mounts it under /models)",
        })?);
        let alias = var("COMMONS_LLM_ALIAS").unwrap_or_else(|| {
            model
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_owned())
                .unwrap_or_else(|| "model".into())
        });
        Ok(Self {
            listen: var("COMMONS_LISTEN")
                .unwrap_or_else(|| commons_server::serve::DEFAULT_SERVICE_LISTEN.into()),
            embedding_model: var("COMMONS_LLM_EMBEDDING_MODEL")
                .map(PathBuf::from)
                .unwrap_or_else(|| model.clone()),
            model,
            alias,
            context: number(&var, "COMMONS_LLM_CONTEXT", 4096)?,
            parallel: number(&var, "COMMONS_LLM_PARALLEL", 4)?,
            gpu_layers: number(&var, "COMMONS_LLM_GPU_LAYERS", 0)?,
            llama_server: var("COMMONS_LLAMA_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(|| "llama-server".into()),
            run_dir: var("COMMONS_LLM_RUN")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/tmp".into()),
            max_body: number(&var, "COMMONS_LLM_MAX_BODY", 8 << 20)?,
        })
    }

    fn chat_socket(&self) -> PathBuf {
        self.run_dir.join("llm-chat.sock")
    }

    fn embedding_socket(&self) -> PathBuf {
        self.run_dir.join("llm-embeddings.sock")
    }

    /// The chat server's arguments.
    pub fn chat_args(&self) -> Vec<String> {
        let mut a = self.common_args(&self.model, &self.chat_socket());
        a.extend(["--parallel".into(), self.parallel.to_string()]);
        a
    }

    /// The embedding server's arguments.
    pub fn embedding_args(&self) -> Vec<String> {
        let mut a = self.common_args(&self.embedding_model, &self.embedding_socket());
        a.extend([
            "--embeddings".into(),
            "--pooling".into(),
            "mean".into(),
            "--parallel".into(),
            "1".into(),
        ]);
        a
    }

    fn common_args(&self, model: &Path, socket: &Path) -> Vec<String> {
        vec![
            "--model".into(),
            model.display().to_string(),
            "--alias".into(),
            self.alias.clone(),
            "--host".into(),
            socket.display().to_string(),
            "--ctx-size".into(),
            self.context.to_string(),
            "--n-gpu-layers".into(),
            self.gpu_layers.to_string(),
            "--no-webui".into(),
        ]
    }
}

/// The two llama.cpp servers, running.
#[derive(Debug)]
pub struct Servers {
    chat: Child,
    embeddings: Child,
}

/// A llama.cpp server could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {program}: {source}")]
pub struct SpawnError {
    program: String,
    #[source]
    source: std::io::Error,
}

impl Servers {
    /// Starts both servers.
    pub fn start(config: &Config) -> Result<Self, SpawnError> {
        let spawn = |args: Vec<String>| {
            Command::new(&config.llama_server)
                .args(args)
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| SpawnError {
                    program: config.llama_server.display().to_string(),
                    source,
                })
        };
        Ok(Self {
            chat: spawn(config.chat_args())?,
            embeddings: spawn(config.embedding_args())?,
        })
    }

    /// Resolves when either server exits, with which one and how.
    pub async fn exited(&mut self) -> String {
        tokio::select! {
            s = self.chat.wait() => format!("the chat server exited ({})", describe(s)),
            s = self.embeddings.wait() => format!("the embedding server exited ({})", describe(s)),
        }
    }

    /// Sends both servers SIGTERM and waits for them (killed after `grace`).
    pub async fn stop(mut self, grace: Duration) {
        for child in [&self.chat, &self.embeddings] {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for child in [&mut self.chat, &mut self.embeddings] {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

fn describe(s: std::io::Result<std::process::ExitStatus>) -> String {
    match s {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

struct Front {
    chat: PathBuf,
    embeddings: PathBuf,
    max_body: usize,
}

/// The front's routes.
pub fn router(config: &Config) -> Router {
    let front = Arc::new(Front {
        chat: config.chat_socket(),
        embeddings: config.embedding_socket(),
        max_body: config.max_body,
    });
    commons_server::finish(
        Router::new()
            .route("/health", get(health))
            .route("/v1/embeddings", any(to_embeddings))
            .route("/v1/{*path}", any(to_chat))
            .with_state(front),
    )
}

/// Sends `req` to the server on `socket`, its body bounded, the answer streamed back.
async fn forward(socket: &Path, req: Request, max_body: usize) -> Result<Response, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(ApiError::TooLarge(max_body));
    }
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the model server is not up yet: {e}")))?;
    let (mut parts, body) = req.into_parts();
    parts
        .headers
        .insert(header::HOST, HeaderValue::from_static("localhost"));
    parts.version = axum::http::Version::HTTP_11;
    let body = http_body_util::Limited::new(body, max_body);
    let upstream = axum::http::Request::from_parts(parts, body);
    let answer = commons_server::forward::request(stream, upstream)
        .await
        .map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                ApiError::TooLarge(max_body)
            } else {
                ApiError::BadGateway(format!("the model server failed: {e}"))
            }
        })?;
    Ok(answer.map(Body::new))
}

async fn to_chat(State(f): State<Arc<Front>>, req: Request) -> Response {
    async {
        let req = asking_usage(req, f.max_body).await?;
        forward(&f.chat, req, f.max_body).await
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// A streamed request's JSON body with `stream_options.include_usage` set when the client left it out; `None` when
/// nothing needs to change (not JSON, not streamed, or the client chose).
fn with_usage(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let request = v.as_object_mut()?;
    if request.get("stream") != Some(&serde_json::Value::Bool(true)) {
        return None;
    }
    let options = request
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()?;
    if options.contains_key("include_usage") {
        return None;
    }
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&v).ok()
}

/// `req`, a POST with a JSON body, read (within `max_body`) and given [`with_usage`]; any other request as it is.
async fn asking_usage(req: Request, max_body: usize) -> Result<Request, ApiError> {
    use http_body_util::BodyExt;
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if req.method() != axum::http::Method::POST || !json {
        return Ok(req);
    }
    let (mut parts, body) = req.into_parts();
    let bytes = http_body_util::Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::TooLarge(max_body)
            } else {
                ApiError::BadRequest(format!("the request body could not be read: {e}"))
            }
        })?
        .to_bytes();
    let bytes = match with_usage(&bytes) {
        Some(changed) => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(changed.len()));
            bytes::Bytes::from(changed)
        }
        None => bytes,
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

async fn to_embeddings(State(f): State<Arc<Front>>, req: Request) -> Response {
    forward(&f.embeddings, req, f.max_body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Whether the server on `socket` answers its `/health` (it has loaded its model).
async fn healthy(socket: &Path) -> bool {
    let check = async {
        match UnixStream::connect(socket).await {
            Ok(io) => commons_server::forward::answers(io, "/health").await,
            Err(_) => false,
        }
    };
    tokio::time::timeout(Duration::from_secs(2), check)
        .await
        .unwrap_or(false)
}

async fn health(State(f): State<Arc<Front>>) -> Response {
    let (chat, embeddings) = tokio::join!(healthy(&f.chat), healthy(&f.embeddings));
    if chat && embeddings {
        axum::Json(serde_json::json!({"status": "ok"})).into_response()
    } else {
        let waiting: Vec<&str> = [(chat, "chat"), (embeddings, "embeddings")]
            .into_iter()
            .filter_map(|(up, name)| (!up).then_some(name))
            .collect();
        ApiError::Unavailable(format!(
            "the model is still loading ({} server)",
            waiting.join(" and ")
        ))
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stream_asks_for_its_usage_unless_the_client_chose() {
        let asked = with_usage(br#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&asked).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        let kept = with_usage(br#"{"stream":true,"stream_options":{"include_usage":false}}"#);
        assert!(kept.is_none(), "the client's choice stands");
        assert!(with_usage(br#"{"stream":false}"#).is_none());
        assert!(with_usage(br#"{"prompt":"x"}"#).is_none());
        assert!(with_usage(b"not json").is_none());
    }

    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn settings_from_the_environment() {
        let c = Config::from_env(env(&[("COMMONS_LLM_MODEL", "/models/tiny.gguf")])).unwrap();
        assert_eq!(c.alias, "tiny");
        assert_eq!(c.embedding_model, PathBuf::from("/models/tiny.gguf"));
        assert_eq!(c.listen, "unix:/run/commons/http.sock");
        let chat = c.chat_args();
        let emb = c.embedding_args();
        assert!(
            chat.windows(2)
                .any(|w| w == ["--host", "/tmp/llm-chat.sock"])
        );
        assert!(!chat.contains(&"--embeddings".to_owned()));
        assert!(emb.contains(&"--embeddings".to_owned()));
        assert!(emb.windows(2).any(|w| w == ["--pooling", "mean"]));

        let e = Config::from_env(env(&[])).unwrap_err();
        assert!(e.to_string().contains("COMMONS_LLM_MODEL"), "{e}");
        let e = Config::from_env(env(&[
            ("COMMONS_LLM_MODEL", "/m.gguf"),
            ("COMMONS_LLM_CONTEXT", "lots"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("not a whole number"), "{e}");
    }
}
