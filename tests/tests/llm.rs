//! The llm service end to end on real parts: an edge, a coordinator registered with it, two agents joining through
//! the edge, and a real container engine running the llm image `cargo xtask images` built (llama.cpp's server behind
//! commons-llm), each container without network and reached over its socket. The model is the tiny GGUF the tests
//! generate (random weights: nonsense text, well-formed answers), downloaded by each agent from a loopback server
//! and mounted read-only. `.ci/test` starts the engine and builds the images first.

use std::time::{Duration, Instant};

use commons_agent::agent::{Command, State};
use commons_tests::{
    FileServer, built_image, eventually, llm_service, llm_service_on, operator_catalogue, pool,
    python, service_engine, spawn_service_agent, start_service_agent, tiny_model,
};
use futures::StreamExt;
use serde_json::{Value, json};

/// The events of an SSE body read so far, and how many network chunks carried them.
struct Events {
    events: Vec<String>,
    chunks: usize,
}

/// Reads an event stream to its end (or for `limit`), noting the arrival of each chunk.
async fn read_events(resp: reqwest::Response, limit: Duration) -> (Events, Option<String>) {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Events {
        events: Vec::new(),
        chunks: 0,
    };
    let until = Instant::now() + limit;
    let mut failed = None;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(until.into(), stream.next()).await {
        match chunk {
            Ok(bytes) => {
                out.chunks += 1;
                buf.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = buf.find("\n\n") {
                    out.events.push(buf[..end].to_owned());
                    buf.drain(..end + 2);
                }
            }
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    (out, failed)
}

fn data(event: &str) -> Option<Value> {
    let line = event.lines().find_map(|l| l.strip_prefix("data: "))?;
    serde_json::from_str(line).ok()
}

#[tokio::test]
async fn chat_streams_and_embeddings_answer_through_edge_coordinator_agent_and_container() {
    let client = reqwest::Client::new();
    let files = FileServer::start().await;
    let (path, sha, size) = tiny_model();
    let url = files.put("tiny.gguf", std::fs::read(path).unwrap());
    let (edge, c) = pool(&client, |dir| {
        operator_catalogue(dir, &llm_service(&url, sha, *size, 2))
    })
    .await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let pid = std::process::id();
    let instances = [format!("llm-a-{pid}"), format!("llm-b-{pid}")];
    let a = start_service_agent(&edge.url(), &instances[0], dirs[0].path()).await;
    let b = start_service_agent(&edge.url(), &instances[1], dirs[1].path()).await;
    // Both download the model once and serve once llama.cpp has loaded it.
    assert!(
        eventually(90, || async {
            let list = c.admin(&client, "/api/admin/workers").await;
            list["workers"].as_array().is_some_and(|ws| {
                ws.len() == 2 && ws.iter().all(|w| w["containers"][0]["state"] == "running")
            })
        })
        .await,
        "both llm containers serve: {}",
        c.admin(&client, "/api/admin/workers").await
    );
    assert_eq!(
        files.asked().len(),
        2,
        "each agent downloaded the model once"
    );
    let base = edge.url();

    // Embeddings: one vector of the model's width (256) per input.
    let r = client
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"model": "tiny", "input": ["the pool answers", "volunteer compute"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let data_list = v["data"].as_array().unwrap();
    assert_eq!(data_list.len(), 2, "{v}");
    assert!(
        data_list
            .iter()
            .all(|d| d["embedding"].as_array().map(Vec::len) == Some(256)),
        "{v}"
    );

    // A chat completion streams: its events arrive in many chunks, one after another, not as one buffered answer.
    let started = Instant::now();
    let r = client
        .post(format!("{base}/api/service/llm/v1/chat/completions"))
        .json(
            &json!({"model": "tiny", "stream": true, "max_tokens": 200, "ignore_eos": true,
                      "messages": [{"role": "user", "content": "hello"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (ev, failed) = read_events(r, Duration::from_secs(60)).await;
    assert!(failed.is_none(), "{failed:?}");
    assert_eq!(ev.events.last().map(String::as_str), Some("data: [DONE]"));
    let deltas = ev
        .events
        .iter()
        .filter_map(|e| data(e))
        .filter(|d| d["choices"][0]["delta"].is_object())
        .count();
    // A delta per token, but for byte tokens held back until they make whole UTF-8 characters.
    assert!(deltas >= 100, "deltas as tokens come: {deltas}");
    assert!(
        ev.chunks >= 20,
        "the answer arrived in {} chunks over {:?}: something buffered it",
        ev.chunks,
        started.elapsed()
    );
    // Not streaming: one JSON answer with its usage.
    let r = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": "tiny", "prompt": "the pool", "max_tokens": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 8, "{v}");

    // The real OpenAI client, pointed at the edge with an API key the admin made: models, a chat, a stream,
    // embeddings; a wrong key is the client's AuthenticationError.
    let made = c
        .api_key(
            &client,
            json!({"name": "openai client", "services": ["llm"]}),
        )
        .await;
    let key = made["key"].as_str().unwrap();
    let script = format!(
        r#"
import openai
try:
    openai.OpenAI(base_url="{base}/v1", api_key="ck_not_a_key", max_retries=0).models.list()
    raise SystemExit("a wrong key was let through")
except openai.AuthenticationError as e:
    assert e.status_code == 401, e
c = openai.OpenAI(base_url="{base}/v1", api_key="{key}", max_retries=0)
models = [m.id for m in c.models.list().data]
assert models == ["tiny"], models
chat = c.chat.completions.create(model="tiny", messages=[{{"role": "user", "content": "hi"}}], max_tokens=5)
assert chat.usage.completion_tokens >= 1, chat
n = 0
for chunk in c.chat.completions.create(model="tiny", messages=[{{"role": "user", "content": "hi"}}], max_tokens=30,
                                       stream=True, extra_body={{"ignore_eos": True}}):
    if chunk.choices and chunk.choices[0].delta.content:
        n += 1
assert n >= 10, n
e = c.embeddings.create(model="tiny", input="hello")
assert len(e.data[0].embedding) == 256
print("openai ok", n)
"#
    );
    let out = tokio::process::Command::new(python())
        .arg("-c")
        .arg(&script)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the openai client: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("openai ok"));

    // Tokens are counted from the answers' usage, streamed or not, against a key's daily token quota.
    let metered = c
        .api_key(
            &client,
            json!({"name": "metered", "services": ["llm"], "daily_tokens": 60}),
        )
        .await;
    let (metered_id, metered_key) = (
        metered["id"].as_str().unwrap().to_owned(),
        metered["key"].as_str().unwrap().to_owned(),
    );
    let tokens_today = || async {
        let list = c.admin(&client, "/api/admin/keys").await;
        list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == metered_id.as_str())
            .map_or(0, |k| k["tokens_today"].as_u64().unwrap())
    };
    let complete = |prompt: &'static str, max_tokens: u32| {
        client
            .post(format!("{base}/v1/completions"))
            .bearer_auth(&metered_key)
            .json(&json!({"model": "tiny", "prompt": prompt, "max_tokens": max_tokens}))
            .send()
    };
    let r = complete("the pool", 8).await.unwrap();
    let v: Value = r.json().await.unwrap();
    let used = v["usage"]["prompt_tokens"].as_u64().unwrap() + 8;
    // Counted when the answer's body has been sent, a moment after the client has it all.
    assert!(
        eventually(5, || async { tokens_today().await == used }).await,
        "the answer's usage is counted: {} of {used}",
        tokens_today().await
    );
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&metered_key)
        .json(
            &json!({"model": "tiny", "stream": true, "max_tokens": 40, "ignore_eos": true,
                      "messages": [{"role": "user", "content": "hello"}]}),
        )
        .send()
        .await
        .unwrap();
    let (_, failed) = read_events(r, Duration::from_secs(60)).await;
    assert!(failed.is_none(), "{failed:?}");
    assert!(
        eventually(5, || async { tokens_today().await >= used + 40 }).await,
        "a stream's usage is counted: {} after {used}",
        tokens_today().await
    );
    let streamed = tokens_today().await;
    let r = complete("more", 1).await.unwrap();
    assert_eq!(r.status(), 429, "over its 60 tokens");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "quota_exceeded", "{v}");
    assert!(v["message"].as_str().unwrap().contains("60 tokens"), "{v}");
    // The usage report has the same tokens, once the ledger has written them.
    assert!(
        eventually(10, || async {
            let usage = c.admin(&client, "/api/admin/usage?hours=1").await;
            usage["keys"].as_array().unwrap().iter().any(|k| {
                k["key_id"] == metered_id.as_str()
                    && k["totals"]["prompt_tokens"].as_u64().unwrap()
                        + k["totals"]["completion_tokens"].as_u64().unwrap()
                        == streamed
            })
        })
        .await,
        "the ledger's tokens: {}",
        c.admin(&client, "/api/admin/usage?hours=1").await
    );

    // Killing the agent that serves a stream, mid-stream: the client's stream ends with an error event (not a cut
    // connection), and the next request goes to the other agent.
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &json!({"model": "tiny", "stream": true, "max_tokens": 1500, "ignore_eos": true,
                      "messages": [{"role": "user", "content": "a long answer"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let serving = r.headers()["x-commons-worker"].to_str().unwrap().to_owned();
    let (victim, survivor, victim_dir, victim_instance) = if a.session.borrow().worker_id == serving
    {
        (a, b, &dirs[0], &instances[0])
    } else {
        (b, a, &dirs[1], &instances[1])
    };
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    victim.abort().await;
    let mut rest = String::new();
    let mut cut = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => rest.push_str(&String::from_utf8_lossy(&b)),
            Err(e) => {
                cut = Some(e);
                break;
            }
        }
    }
    assert!(cut.is_none(), "the stream ended cleanly: {cut:?}");
    let tail: Vec<&str> = rest.split("\n\n").filter(|e| !e.is_empty()).collect();
    let last = tail.last().copied().unwrap_or("");
    assert!(
        last.starts_with("event: error") && last.contains("upstream_failed"),
        "the stream ends with an error event: {last}"
    );
    assert!(!rest.contains("[DONE]"));
    assert!(
        eventually(10, || async {
            let r = client
                .post(format!("{base}/v1/chat/completions"))
                .json(&json!({"model": "tiny", "max_tokens": 4,
                              "messages": [{"role": "user", "content": "again"}]}))
                .send()
                .await
                .unwrap();
            r.status() == 200 && r.headers()["x-commons-worker"].to_str().unwrap() != serving
        })
        .await,
        "the next request goes to the other agent"
    );
    survivor.send(Command::Quit).await;
    survivor.join().await.unwrap();
    // The crashed agent left its container; a volunteer's restart would adopt it, the test removes it.
    service_engine(&edge.url(), victim_instance, victim_dir.path())
        .await
        .remove_all()
        .await
        .unwrap();
}

/// A model that is not the one the signed catalogue names (tampered on the download site) is refused: nothing runs
/// with it, and the agent says why.
#[tokio::test]
async fn a_tampered_model_is_refused_and_nothing_runs_with_it() {
    let client = reqwest::Client::new();
    let files = FileServer::start().await;
    let (path, sha, size) = tiny_model();
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    let url = files.put("tiny.gguf", bytes);
    let (edge, c) = pool(&client, |dir| {
        operator_catalogue(dir, &llm_service(&url, sha, *size, 1))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("llm-t-{}", std::process::id());
    let mut a = spawn_service_agent(&edge.url(), &instance, dir.path());
    let state = a
        .wait_for(Duration::from_secs(90), |s| matches!(s, State::Error(_)))
        .await;
    let Some(State::Error(why)) = state else {
        panic!("an error state, not {state:?}")
    };
    assert!(
        why.contains("tiny.gguf")
            && why.contains("SHA-256")
            && why.contains("nothing runs with it"),
        "the agent says the model was refused: {why}"
    );
    assert!(
        eventually(10, || async {
            let list = c.admin(&client, "/api/admin/workers").await;
            list["workers"][0]["containers"][0]["state"] == "failed"
        })
        .await
    );
    let engine = service_engine(&edge.url(), &instance, dir.path()).await;
    assert!(
        engine.ours().await.unwrap().is_empty(),
        "no container was created"
    );
    let models = dir.path().join("models");
    assert!(!files.asked().is_empty(), "the agent downloaded the model");
    assert!(
        std::fs::read_dir(&models).map_or(true, |d| d
            .flatten()
            .all(|e| e.file_name().to_string_lossy().ends_with(".lock"))),
        "nothing of the model is kept"
    );
    a.send(Command::Quit).await;
    a.join().await.unwrap();
}

/// What a command prints in a throwaway container of `image` (no network, unprivileged), both streams.
async fn run_in(image: &str, script: &str) -> String {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::{
        CreateContainerOptions, LogsOptions, RemoveContainerOptions, WaitContainerOptions,
    };
    let docker = bollard::Docker::connect_with_local_defaults().expect("DOCKER_HOST");
    let name = format!("commons-t-probe-{}", std::process::id());
    let id = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(image.into()),
                entrypoint: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
                user: Some("65534:65534".into()),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("create")
        .id;
    docker.start_container(&id, None).await.expect("start");
    let _ = docker
        .wait_container(&id, None::<WaitContainerOptions>)
        .collect::<Vec<_>>()
        .await;
    let mut out = String::new();
    let mut logs = docker.logs(
        &id,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    );
    while let Some(Ok(l)) = logs.next().await {
        out.push_str(&l.to_string());
    }
    docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    out
}

/// The llm service's GPU form (services/llm-cuda) on this machine, which has no GPU: its CUDA backend needs nothing
/// but the driver's libcuda.so.1 (which the NVIDIA Container Toolkit mounts from the host), and without it the same
/// image serves on the CPU with every layer asked for the GPU.
#[tokio::test]
async fn the_gpu_image_lacks_only_the_host_driver_and_serves_without_one() {
    let image = built_image("llm-cuda");
    let said = run_in(
        &image,
        "l=/usr/lib/x86_64-linux-gnu; ld=/lib64/ld-linux-x86-64.so.2; \
         $ld --list $l/ggml/backends0/libggml-cuda.so; \
         for lib in libcublas.so.12 libcublasLt.so.12 libcudart.so.12; do \
           if $ld --list $l/$lib >/dev/null 2>&1; then echo LINKS $lib; else echo BROKEN $lib; fi; done",
    )
    .await;
    assert!(
        said.contains("libggml-cuda.so: error while loading shared libraries: libcuda.so.1"),
        "the CUDA backend is there and wants the driver: {said}"
    );
    for lib in ["libcublas.so.12", "libcublasLt.so.12", "libcudart.so.12"] {
        assert!(said.contains(&format!("LINKS {lib}")), "{lib}: {said}");
    }

    let client = reqwest::Client::new();
    let files = FileServer::start().await;
    let (path, sha, size) = tiny_model();
    let url = files.put("tiny.gguf", std::fs::read(path).unwrap());
    let entry = llm_service_on(
        "llm-cuda",
        ", COMMONS_LLM_GPU_LAYERS = \"999\"",
        &url,
        sha,
        *size,
        1,
    );
    let (edge, c) = pool(&client, |dir| operator_catalogue(dir, &entry)).await;
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("llm-g-{}", std::process::id());
    let a = start_service_agent(&edge.url(), &instance, dir.path()).await;
    assert!(
        eventually(90, || async {
            let list = c.admin(&client, "/api/admin/workers").await;
            list["workers"][0]["containers"][0]["state"] == "running"
        })
        .await,
        "the GPU image serves: {}",
        c.admin(&client, "/api/admin/workers").await
    );
    let r = client
        .post(format!("{}/v1/chat/completions", edge.url()))
        .json(
            &json!({"model": "tiny", "max_tokens": 8, "ignore_eos": true,
                      "messages": [{"role": "user", "content": "hello"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 8, "{v}");
    a.send(Command::Quit).await;
    a.join().await.unwrap();
}
