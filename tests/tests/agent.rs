//! The headless agent against real coordinators and a real edge on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use commons_agent::agent::{self, Command, State};
use commons_agent::credentials::{CredentialStore, FileStore};
use commons_agent::hardware::{GpuReading, RecordedProbe};
use commons_agent::settings::Settings;
use commons_coordinator::server::test_utils::ADMIN_TOKEN;
use commons_tests::{Coordinator, Edge, eventually};
use serde_json::Value;

fn no_gpu() -> Arc<RecordedProbe> {
    Arc::new(RecordedProbe(Err(commons_agent::hardware::NoGpu(
        "no driver in tests".into(),
    ))))
}

async fn worker(client: &reqwest::Client, coordinator: &str, id: &str) -> (u16, Value) {
    let r = client
        .get(format!("{coordinator}/api/admin/workers/{id}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

fn settings_for(coordinator: Option<&str>, edge: Option<&str>) -> Settings {
    Settings {
        coordinator_url: coordinator.map(Into::into),
        edge_url: edge.unwrap_or("http://127.0.0.1:9").into(),
        containers: false,
        dht: false,
        ..Settings::default()
    }
}

#[tokio::test]
async fn joins_heartbeats_pauses_resumes_and_quits() {
    let c = Coordinator::start(|cfg, _| cfg.heartbeat_interval_secs = 1).await;
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let creds = Arc::new(FileStore::new(dir.path().join("creds.json")));
    let mut a = agent::start(settings_for(Some(&c.url()), None), creds.clone(), no_gpu());
    assert_eq!(
        a.wait_for(Duration::from_secs(10), |s| *s == State::Active)
            .await,
        Some(State::Active)
    );
    let id = a.session.borrow().worker_id.clone();
    assert_eq!(
        creds.load().unwrap().unwrap().worker_id,
        id,
        "credentials kept"
    );
    // Its heartbeats carry real figures.
    assert!(
        eventually(5, || async {
            worker(&client, &c.url(), &id).await.1["last_heartbeat"].is_string()
        })
        .await
    );
    let (_, w) = worker(&client, &c.url(), &id).await;
    assert!(w["free_memory_bytes"].as_u64().unwrap() > 0);
    assert!(w["capabilities"]["memory_bytes"].as_u64().unwrap() > 0);
    // It measures how far away its coordinator is (its heartbeat's round trip), reports it and says it.
    assert!(
        eventually(5, || async {
            worker(&client, &c.url(), &id).await.1["rtt_ms"].is_u64()
        })
        .await,
        "{:?}",
        worker(&client, &c.url(), &id).await
    );
    // And lists its paths: its own connection to the coordinator, with that round trip.
    let reverse = |w: &Value| {
        w["paths"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["kind"] == "reverse" && p["connections"] == 1 && p["rtt_ms"].is_u64())
        })
    };
    assert!(
        eventually(5, || async {
            reverse(&worker(&client, &c.url(), &id).await.1)
        })
        .await,
        "{:?}",
        worker(&client, &c.url(), &id).await
    );
    assert!(
        eventually(5, || async {
            a.session
                .borrow()
                .reached
                .as_deref()
                .is_some_and(|r| r.contains(" ms away and back): no port to open"))
        })
        .await,
        "{:?}",
        a.session.borrow().reached
    );

    a.send(Command::Pause).await;
    assert_eq!(
        a.wait_for(Duration::from_secs(5), |s| *s == State::Paused)
            .await,
        Some(State::Paused)
    );
    assert!(
        eventually(5, || async {
            worker(&client, &c.url(), &id).await.1["status"] == "paused"
        })
        .await
    );
    a.send(Command::Resume).await;
    // Back in routing: healthy, or busy when the machine's CPU is above 90 % (the agent reports its host's real
    // load, and a CI machine running other tests beside this one is often that busy).
    assert!(
        eventually(5, || async {
            let status = worker(&client, &c.url(), &id).await.1["status"].clone();
            status == "healthy" || status == "busy"
        })
        .await
    );

    a.send(Command::Quit).await;
    assert_eq!(
        a.wait_for(Duration::from_secs(5), |s| *s == State::Stopped)
            .await,
        Some(State::Stopped)
    );
    a.join().await.unwrap();
    assert_eq!(
        worker(&client, &c.url(), &id).await.0,
        404,
        "unregistered on quit"
    );
    assert_eq!(creds.load().unwrap(), None, "credentials forgotten on quit");
}

#[tokio::test]
async fn a_restarted_agent_keeps_its_id_and_re_registers_when_forgotten() {
    let c = Coordinator::start(|cfg, _| cfg.heartbeat_interval_secs = 1).await;
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let creds = Arc::new(FileStore::new(dir.path().join("creds.json")));
    let mut a = agent::start(settings_for(Some(&c.url()), None), creds.clone(), no_gpu());
    a.wait_for(Duration::from_secs(10), |s| *s == State::Active)
        .await
        .unwrap();
    let first = a.session.borrow().worker_id.clone();
    // Crash the agent (no quit): the credentials stay.
    a.abort().await;
    let mut b = agent::start(settings_for(Some(&c.url()), None), creds.clone(), no_gpu());
    b.wait_for(Duration::from_secs(10), |s| *s == State::Active)
        .await
        .unwrap();
    assert_eq!(
        b.session.borrow().worker_id,
        first,
        "the same worker, no new registration"
    );
    assert_eq!(b.session.borrow().registrations, 0);
    // The coordinator forgets it: the next heartbeat gets 401 and the agent registers again.
    let r = client
        .delete(format!("{}/api/worker/unregister/{first}", c.url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut s = b.session.clone();
    // (The borrow `wait_for` returns is dropped at once: held, it would block the agent's next update.)
    let again = tokio::time::timeout(Duration::from_secs(5), s.wait_for(|s| s.registrations == 1))
        .await
        .is_ok();
    assert!(again, "re-registered");
    assert_ne!(b.session.borrow().worker_id, first);
    b.send(Command::Quit).await;
    b.join().await.unwrap();
}

#[tokio::test]
async fn failover_to_another_coordinator_through_the_edge_within_ten_seconds() {
    let client = reqwest::Client::new();
    let edge = Edge::start(|_| {}).await;
    let key = edge.federation_key(&client, "pool").await;
    let mut coords = Vec::new();
    for _ in 0..2 {
        coords.push(Coordinator::federated(&edge, &key, 200, |_, _| {}).await);
    }
    assert!(eventually(5, || async { edge.coordinator_count(&client).await == 2 }).await);
    let dir = tempfile::tempdir().unwrap();
    // Default settings (probe every 3 s, the coordinator's 30 s heartbeat interval), joining through the edge.
    let mut a = agent::start(
        settings_for(None, Some(&edge.url())),
        Arc::new(FileStore::new(dir.path().join("c.json"))),
        no_gpu(),
    );
    a.wait_for(Duration::from_secs(10), |s| *s == State::Active)
        .await
        .unwrap();
    let first = a.session.borrow().coordinator_url.clone();
    let id = a.session.borrow().worker_id.clone();
    let i = coords
        .iter()
        .position(|c| c.url() == first)
        .expect("joined one of ours");
    // The coordinator reaches it over its channel.
    assert!(
        eventually(5, || async {
            worker(&client, &first, &id).await.1["path"] == "reverse"
        })
        .await,
        "{:?}",
        worker(&client, &first, &id).await
    );
    let dead = coords.remove(i);
    let killed = Instant::now();
    dead.server.abort().await;
    let mut s = a.session.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        s.wait_for(|s| s.coordinator_url != first && s.registrations == 2),
    )
    .await
    .expect("failed over within 10 s")
    .unwrap();
    a.wait_for(Duration::from_secs(10), |s| *s == State::Active)
        .await
        .unwrap();
    let took = killed.elapsed();
    println!("failover took {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(a.session.borrow().coordinator_url, coords[0].url());
    let id = a.session.borrow().worker_id.clone();
    // The channel moved with it: the new coordinator reaches it over its own connection.
    assert!(
        eventually(5, || async {
            let (status, w) = worker(&client, &coords[0].url(), &id).await;
            status == 200 && w["path"] == "reverse"
        })
        .await,
        "{:?}",
        worker(&client, &coords[0].url(), &id).await
    );
    a.send(Command::Quit).await;
    a.join().await.unwrap();
}

#[tokio::test]
async fn a_hot_gpu_pauses_donating() {
    let c = Coordinator::start(|cfg, _| cfg.heartbeat_interval_secs = 1).await;
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let hot = GpuReading {
        name: "NVIDIA RTX 4090".into(),
        memory_total: 24 << 30,
        temperature_c: 95,
        vendor: commons_shared::caps::GpuVendor::Nvidia,
        ..Default::default()
    };
    let mut a = agent::start(
        settings_for(Some(&c.url()), None),
        Arc::new(FileStore::new(dir.path().join("c.json"))),
        Arc::new(RecordedProbe(Ok(vec![hot]))),
    );
    assert_eq!(
        a.wait_for(Duration::from_secs(10), |s| *s == State::Paused)
            .await,
        Some(State::Paused)
    );
    let id = a.session.borrow().worker_id.clone();
    let (_, w) = worker(&client, &c.url(), &id).await;
    assert_eq!(w["tier"], 1, "registered as a GPU worker");
    assert_eq!(w["status"], "paused");
    assert_eq!(w["gpu_samples"][0]["temperature_c"], 95.0);
    a.send(Command::Quit).await;
    a.join().await.unwrap();
}

#[tokio::test]
async fn the_control_socket_drives_a_running_agent() {
    let c = Coordinator::start(|cfg, _| cfg.heartbeat_interval_secs = 1).await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut a = agent::start(
        settings_for(Some(&c.url()), None),
        Arc::new(FileStore::new(dir.path().join("c.json"))),
        no_gpu(),
    );
    let _ctl =
        commons_agent::control::serve(&sock, a.state.clone(), a.session.clone(), a.commands())
            .await
            .unwrap();
    a.wait_for(Duration::from_secs(10), |s| *s == State::Active)
        .await
        .unwrap();
    let st = commons_agent::control::call(&sock, "GET", "/status")
        .await
        .unwrap();
    assert_eq!(st["state"]["state"], "active");
    assert_eq!(
        st["session"]["worker_id"],
        a.session.borrow().worker_id.as_str()
    );
    commons_agent::control::call(&sock, "POST", "/pause")
        .await
        .unwrap();
    a.wait_for(Duration::from_secs(5), |s| *s == State::Paused)
        .await
        .unwrap();
    commons_agent::control::call(&sock, "POST", "/resume")
        .await
        .unwrap();
    a.wait_for(Duration::from_secs(5), |s| *s == State::Active)
        .await
        .unwrap();
    // A second agent cannot take the same socket.
    let second =
        commons_agent::control::serve(&sock, a.state.clone(), a.session.clone(), a.commands())
            .await;
    assert!(second.unwrap_err().to_string().contains("already running"));
    commons_agent::control::call(&sock, "POST", "/quit")
        .await
        .unwrap();
    a.wait_for(Duration::from_secs(5), |s| *s == State::Stopped)
        .await
        .unwrap();
}

/// A coordinator whose only service is the tiny busybox image from the loopback registry.
async fn tiny_coordinator() -> Coordinator {
    Coordinator::start(|cfg, dir| {
        cfg.catalogue = Some(commons_tests::tiny_catalogue(
            dir,
            "tiny",
            "127.0.0.1:5000/tiny:1",
            r#"["sleep", "600"]"#,
        ));
        cfg.heartbeat_interval_secs = 1;
    })
    .await
}

fn container_settings(c: &Coordinator, instance: &str) -> Settings {
    Settings {
        coordinator_url: Some(c.url()),
        containers: true,
        allowed_images: Some(vec!["127.0.0.1:5000/".into()]),
        memory_mb: 64,
        instance: instance.into(),
        dht: false,
        catalogue_keys: vec![commons_tests::test_catalogue_key().1.clone()],
        ..Settings::default()
    }
}

/// Starts an agent with `settings` and waits for the error state it must end in; the agent and why.
async fn until_error(
    settings: Settings,
    dir: &std::path::Path,
) -> (commons_agent::agent::AgentHandle, String) {
    let mut a = agent::start(
        settings,
        Arc::new(FileStore::new(dir.join("c.json"))),
        no_gpu(),
    );
    let state = a
        .wait_for(Duration::from_secs(30), |s| matches!(s, State::Error(_)))
        .await;
    let Some(State::Error(why)) = state else {
        panic!("an error state, not {state:?}")
    };
    (a, why)
}

#[tokio::test]
async fn after_a_crash_the_restarted_agent_adopts_its_containers() {
    let c = tiny_coordinator().await;
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("agent-crash-{}", std::process::id());
    let creds = Arc::new(FileStore::new(dir.path().join("c.json")));
    let mut a = agent::start(container_settings(&c, &instance), creds.clone(), no_gpu());
    a.wait_for(Duration::from_secs(30), |s| *s == State::Active)
        .await
        .expect("active");
    let engine =
        commons_agent::containers::Engine::connect(container_settings(&c, &instance).policy())
            .await
            .unwrap();
    let before = engine.ours().await.unwrap();
    assert_eq!(before.len(), 1);
    a.abort().await; // as kill -9 would: nothing stopped, nothing unregistered
    let mut b = agent::start(container_settings(&c, &instance), creds, no_gpu());
    b.wait_for(Duration::from_secs(30), |s| *s == State::Active)
        .await
        .expect("active again");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = engine.ours().await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, before[0].id, "adopted, not recreated");
    assert!(after[0].running);
    b.send(Command::Quit).await;
    b.join().await.unwrap();
    assert!(engine.ours().await.unwrap().is_empty());
}

#[tokio::test]
async fn assigned_services_run_as_containers_through_pause_resume_and_quit() {
    let c = tiny_coordinator().await;
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("agent-e2e-{}", std::process::id());
    let settings = container_settings(&c, &instance);
    let policy = settings.policy();
    let started = Instant::now();
    let mut a = agent::start(
        settings,
        Arc::new(FileStore::new(dir.path().join("c.json"))),
        no_gpu(),
    );
    a.wait_for(Duration::from_secs(30), |s| *s == State::Active)
        .await
        .expect("active");
    println!("registration to Active: {:?}", started.elapsed());
    let engine = commons_agent::containers::Engine::connect(policy)
        .await
        .expect("DOCKER_HOST: run .ci/engine.sh");
    let ours = engine.ours().await.unwrap();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].service, "tiny");
    assert!(ours[0].running);
    let id = a.session.borrow().worker_id.clone();
    assert!(
        eventually(5, || async {
            let w = worker(&client, &c.url(), &id).await.1;
            w["containers"][0]["state"] == "running" && w["containers"][0]["name"] == "commons-tiny"
        })
        .await
    );
    a.send(Command::Pause).await;
    a.wait_for(Duration::from_secs(10), |s| *s == State::Paused)
        .await
        .unwrap();
    assert!(
        engine.ours().await.unwrap().iter().all(|c| !c.running),
        "paused: containers stopped"
    );
    assert!(
        eventually(5, || async {
            worker(&client, &c.url(), &id).await.1["containers"][0]["state"] == "stopped"
        })
        .await
    );
    a.send(Command::Resume).await;
    a.wait_for(Duration::from_secs(10), |s| *s == State::Active)
        .await
        .unwrap();
    assert!(
        eventually(10, || async {
            engine.ours().await.unwrap().iter().all(|c| c.running)
        })
        .await,
        "resumed: running again"
    );
    a.send(Command::Quit).await;
    a.join().await.unwrap();
    assert!(
        engine.ours().await.unwrap().is_empty(),
        "quit leaves nothing behind"
    );
    assert_eq!(worker(&client, &c.url(), &id).await.0, 404);
}

#[tokio::test]
async fn outside_the_schedule_the_agent_holds_back() {
    let c = Coordinator::start(|cfg, _| cfg.heartbeat_interval_secs = 1).await;
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    // A one-hour window starting two hours from now: now is outside it.
    let now = commons_agent::schedule::local_minute();
    let (start, end) = ((now + 120) % 1440, (now + 180) % 1440);
    let window = format!(
        "{:02}:{:02}-{:02}:{:02}",
        start / 60,
        start % 60,
        end / 60,
        end % 60
    );
    let settings = Settings {
        schedule: vec![window],
        ..settings_for(Some(&c.url()), None)
    };
    settings.validate().unwrap();
    let mut a = agent::start(
        settings,
        Arc::new(FileStore::new(dir.path().join("c.json"))),
        no_gpu(),
    );
    assert_eq!(
        a.wait_for(Duration::from_secs(10), |s| *s == State::Paused)
            .await,
        Some(State::Paused)
    );
    let id = a.session.borrow().worker_id.clone();
    assert!(
        eventually(5, || async {
            worker(&client, &c.url(), &id).await.1["status"] == "paused"
        })
        .await
    );
    // Resuming by hand does not override the schedule.
    a.send(Command::Resume).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(*a.state.borrow(), State::Paused);
    a.send(Command::Quit).await;
    a.join().await.unwrap();
}

#[tokio::test]
async fn without_a_container_engine_the_agent_still_joins() {
    let c = Coordinator::start(|cfg, _| cfg.heartbeat_interval_secs = 1).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        containers: true,
        docker_host: Some("unix:///nonexistent/docker.sock".into()),
        ..settings_for(Some(&c.url()), None)
    };
    let mut a = agent::start(
        settings,
        Arc::new(FileStore::new(dir.path().join("c.json"))),
        no_gpu(),
    );
    assert_eq!(
        a.wait_for(Duration::from_secs(10), |s| *s == State::Active)
            .await,
        Some(State::Active)
    );
    a.send(Command::Quit).await;
    a.join().await.unwrap();
}

/// An assigned service whose image cannot be pulled: the agent says so (the session's problem and an Error state,
/// never "active" while nothing runs), and the coordinator sees the container failed.
#[tokio::test]
async fn a_service_that_cannot_run_is_said_not_hidden() {
    let c = Coordinator::start(|cfg, dir| {
        cfg.catalogue = Some(commons_tests::tiny_catalogue(
            dir,
            "gone",
            "127.0.0.1:5000/no-such-image:1",
            "[]",
        ));
        cfg.heartbeat_interval_secs = 1;
    })
    .await;
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("agent-gone-{}", std::process::id());
    let (a, why) = until_error(container_settings(&c, &instance), dir.path()).await;
    assert!(why.contains("could not start the gone service"), "{why}");
    let problem = a.session.borrow().problem.clone().unwrap_or_default();
    assert!(problem.contains("gone"), "{problem}");
    let id = a.session.borrow().worker_id.clone();
    assert!(
        eventually(10, || async {
            worker(&client, &c.url(), &id).await.1["containers"][0]["state"] == "failed"
        })
        .await
    );
    a.send(Command::Quit).await;
    a.join().await.unwrap();
}

/// The agent runs an operator's catalogue only when the volunteer trusts its key, and never one changed after it
/// was signed: the coordinator names services, the signed catalogue says what they run.
#[tokio::test]
async fn an_operators_catalogue_runs_only_with_its_key_and_never_when_tampered() {
    let client = reqwest::Client::new();
    // Signed with the test operator key, but the agent does not list that key.
    let c = tiny_coordinator().await;
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("agent-untrusted-{}", std::process::id());
    let untrusting = Settings {
        catalogue_keys: Vec::new(),
        ..container_settings(&c, &instance)
    };
    let (a, why) = until_error(untrusting.clone(), dir.path()).await;
    assert!(
        why.contains("not signed by a key this machine trusts"),
        "{why}"
    );
    let signer = a.session.borrow().catalogue.clone().unwrap_or_default();
    assert!(
        signer.starts_with("the catalogue shipped with Commons only"),
        "{signer}"
    );
    let engine = commons_agent::containers::Engine::connect(untrusting.policy())
        .await
        .unwrap();
    assert!(
        engine.ours().await.unwrap().is_empty(),
        "nothing was created"
    );
    let id = a.session.borrow().worker_id.clone();
    assert!(
        eventually(10, || async {
            worker(&client, &c.url(), &id).await.1["containers"][0]["state"] == "failed"
        })
        .await
    );
    a.send(Command::Quit).await;
    a.join().await.unwrap();

    // Signed, then changed (other arguments): refused even with the key.
    let tampered = Coordinator::start(|cfg, d| {
        let path = commons_tests::tiny_catalogue(
            d,
            "tiny",
            "127.0.0.1:5000/tiny:1",
            r#"["sleep", "600"]"#,
        );
        let signed = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            signed.replace(r#"["sleep", "600"]"#, r#"["sh", "-c", "echo mine"]"#),
        )
        .unwrap();
        cfg.catalogue = Some(path);
        cfg.heartbeat_interval_secs = 1;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("agent-tampered-{}", std::process::id());
    let settings = container_settings(&tampered, &instance);
    let (b, why) = until_error(settings.clone(), dir.path()).await;
    assert!(why.contains("tampered"), "{why}");
    let engine = commons_agent::containers::Engine::connect(settings.policy())
        .await
        .unwrap();
    assert!(
        engine.ours().await.unwrap().is_empty(),
        "nothing was created"
    );
    b.send(Command::Quit).await;
    b.join().await.unwrap();
}
