//! The agent's containers on a real engine (dockerd with a loopback registry holding 127.0.0.1:5000/tiny:1;
//! `.ci/engine.sh` starts both and `.ci/test` exports DOCKER_HOST).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use commons_agent::containers::{
    DutyCycle, Engine, EngineError, LABEL_OWNER, Policy, Reach, Upstream,
};
use commons_agent::gateway::Gateway;
use commons_shared::api::{ContainerAssignment, ContainerState};

const IMAGE: &str = "127.0.0.1:5000/tiny:1";

fn policy(instance: &str) -> Policy {
    Policy {
        allowed_images: vec!["127.0.0.1:5000/".into()],
        cpu_percent: 50,
        memory_bytes: 64 << 20,
        allow_gpu: false,
        instance: instance.into(),
        gpus: None,
        scratch_mb: 32,
        gpu_percent: 100,
        allow_network: false,
        models_dir: std::env::temp_dir().join("commons-test-models"),
        models_cap_bytes: 1 << 30,
        docker_host: None,
        reach: Reach::Ports,
    }
}

fn service(name: &str, args: &[&str]) -> ContainerAssignment {
    ContainerAssignment {
        name: format!("commons-{name}"),
        service: name.into(),
        image: IMAGE.into(),
        port: 8080,
        env: BTreeMap::from([("MODE".into(), "test".into())]),
        args: args.iter().map(|s| s.to_string()).collect(),
        requires_gpu: false,
        health: None,
        models: Vec::new(),
        network: false,
    }
}

async fn engine(instance: &str) -> Engine {
    Engine::connect(policy(instance))
        .await
        .expect("a container engine: run .ci/engine.sh and export DOCKER_HOST")
}

#[tokio::test]
async fn pull_with_progress_then_run_capped_labelled_and_unprivileged() {
    let mut e = engine("t-run").await;
    e.remove_all().await.unwrap();
    // A real pull from the loopback registry, with per-layer progress (an image no other test uses).
    let pulled = "127.0.0.1:5000/tiny-pull:1";
    let _ = e
        .docker()
        .remove_image(
            pulled,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    e.pull(pulled, Some(&tx)).await.unwrap();
    drop(tx);
    let mut events = Vec::new();
    while let Some(p) = rx.recv().await {
        events.push(p);
    }
    assert!(!events.is_empty(), "progress events");
    assert!(
        events.iter().any(|p| p.total > 0 && p.current > 0),
        "bytes per layer: {events:?}"
    );

    let statuses = e
        .reconcile(&[service("sleeper", &["sleep", "600"])], None)
        .await
        .unwrap();
    assert_eq!(statuses[0].state, ContainerState::Running);
    let ours = e.ours().await.unwrap();
    assert_eq!(ours.len(), 1);
    let c = e
        .docker()
        .inspect_container(&ours[0].id, None)
        .await
        .unwrap();
    let h = c.host_config.unwrap();
    assert_eq!(h.memory, Some(64 << 20));
    assert!(h.nano_cpus.unwrap() > 0);
    assert_eq!(h.privileged, Some(false));
    assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(
        h.security_opt,
        Some(vec!["no-new-privileges:true".to_owned()])
    );
    assert_eq!(h.readonly_rootfs, Some(true));
    assert_eq!(h.init, Some(true));
    assert_eq!(h.pids_limit, Some(256));
    assert_eq!(
        h.tmpfs.unwrap()["/tmp"],
        "rw,noexec,nosuid,size=32m",
        "the disk cap"
    );
    let binding = &h.port_bindings.unwrap()["8080/tcp"].clone().unwrap()[0];
    assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(
        h.device_requests.unwrap_or_default().is_empty(),
        "no GPU unless needed and allowed"
    );
    let labels = c.config.unwrap().labels.unwrap();
    assert_eq!(labels[LABEL_OWNER], "commons-agent");
    // The limits are the kernel's, not just the engine's bookkeeping.
    assert_eq!(c.state.unwrap().running, Some(true));
    e.remove_all().await.unwrap();
    assert!(
        e.ours().await.unwrap().is_empty(),
        "quit leaves nothing behind"
    );
}

#[tokio::test]
async fn images_outside_the_allow_list_are_refused() {
    let mut e = engine("t-allow").await;
    let mut evil = service("evil", &["sleep", "600"]);
    evil.image = "evil.example/miner:1".into();
    assert!(matches!(
        e.pull(&evil.image, None).await,
        Err(EngineError::NotAllowed(_))
    ));
    assert!(matches!(
        e.create(&evil, &[]).await,
        Err(EngineError::NotAllowed(_))
    ));
    let s = e.reconcile(&[evil], None).await.unwrap();
    assert_eq!(s[0].state, ContainerState::Failed);
    assert!(e.ours().await.unwrap().is_empty());
}

#[tokio::test]
async fn adopts_after_restart_restarts_crashes_pauses_and_never_touches_others() {
    let mut e = engine("t-adopt").await;
    e.remove_all().await.unwrap();
    // A container that is not ours: no labels.
    e.pull(IMAGE, None).await.unwrap();
    let stranger = "stranger-commons-test";
    let _ = e
        .docker()
        .remove_container(
            stranger,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(vec!["sleep".into(), "600".into()]),
        ..Default::default()
    };
    e.docker()
        .create_container(
            Some(CreateContainerOptions {
                name: Some(stranger.into()),
                ..Default::default()
            }),
            body,
        )
        .await
        .unwrap();
    e.docker().start_container(stranger, None).await.unwrap();

    let desired = [
        service("keeper", &["sleep", "600"]),
        service("crasher", &["sh", "-c", "sleep 1; exit 3"]),
    ];
    e.reconcile(&desired, None).await.unwrap();
    let before: HashMap<String, String> = e
        .ours()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.service, c.id))
        .collect();
    assert_eq!(before.len(), 2);

    // A new engine handle (the agent restarted): it adopts what runs instead of recreating it.
    let mut e2 = engine("t-adopt").await;
    e2.reconcile(&desired, None).await.unwrap();
    let after: HashMap<String, String> = e2
        .ours()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.service, c.id))
        .collect();
    assert_eq!(before, after, "adopted, not recreated");

    // The crasher exits after 1 s; reconcile restarts it.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let s = e2.reconcile(&desired, None).await.unwrap();
    let crasher = s.iter().find(|c| c.name == "commons-crasher").unwrap();
    assert_eq!(crasher.state, ContainerState::Restarting);
    assert!(crasher.restarts >= 1);

    // Pause stops ours only.
    e2.stop_all().await.unwrap();
    assert!(e2.ours().await.unwrap().iter().all(|c| !c.running));
    let s = e2.reconcile(&desired[..1], None).await.unwrap();
    assert_eq!(
        s[0].state,
        ContainerState::Restarting,
        "resumed by a restart"
    );

    // A changed assignment replaces the container; a dropped one is removed.
    let mut changed = desired[0].clone();
    changed.env.insert("MODE".into(), "other".into());
    e2.reconcile(std::slice::from_ref(&changed), None)
        .await
        .unwrap();
    let now = e2.ours().await.unwrap();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].id, before["keeper"]);

    e2.remove_all().await.unwrap();
    assert!(e2.ours().await.unwrap().is_empty());
    let s = e2.docker().inspect_container(stranger, None).await.unwrap();
    assert_eq!(
        s.state.unwrap().running,
        Some(true),
        "never touched a container that is not ours"
    );
    e2.docker()
        .remove_container(
            stranger,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn gpu_services_get_only_the_allowed_gpus() {
    // Create only (no start): this machine has no GPU, and the engine accepts the request at create time.
    let mut p = policy("t-gpu");
    p.allow_gpu = true;
    p.gpus = Some(vec![1]);
    let e = Engine::connect(p).await.unwrap();
    e.pull(IMAGE, None).await.unwrap();
    let mut gpu = service("gpu", &["sleep", "600"]);
    gpu.requires_gpu = true;
    // Starting fails without a GPU ("could not select device driver"); the request itself is what we check.
    let _ = e.create(&gpu, &[]).await;
    let ours = e.ours().await.unwrap();
    assert_eq!(ours.len(), 1);
    let c = e
        .docker()
        .inspect_container(&ours[0].id, None)
        .await
        .unwrap();
    let req = &c.host_config.unwrap().device_requests.unwrap()[0];
    assert_eq!(req.device_ids, Some(vec!["1".to_owned()]));
    assert_eq!(req.capabilities, Some(vec![vec!["gpu".to_owned()]]));
    let mut e = e;
    e.remove_all().await.unwrap();
}

#[tokio::test]
async fn an_absent_engine_is_a_clear_message() {
    let e = bollard::Docker::connect_with_unix(
        "/nonexistent/docker.sock",
        5,
        bollard::API_DEFAULT_VERSION,
    );
    assert!(e.is_err());
    let msg = EngineError::NotRunning(e.unwrap_err().to_string()).to_string();
    assert!(msg.starts_with("Docker is not running: "), "{msg}");
}

/// The ocr service's image (built by `cargo xtask images`), its service without network, reached by the gateway over
/// the unix socket in its folder: a PNG with known text is read back through the gateway.
#[tokio::test]
async fn a_service_without_network_answers_through_its_socket() {
    let sockets = tempfile::tempdir().unwrap();
    let mut p = policy("t-sock");
    p.reach = Reach::Socket(sockets.path().to_owned());
    let mut e = Engine::connect(p).await.expect("a container engine");
    e.remove_all().await.unwrap();
    let ocr = ContainerAssignment {
        name: "commons-ocr".into(),
        service: "ocr".into(),
        image: commons_tests::built_image("ocr"),
        port: 8884,
        env: BTreeMap::from([("COMMONS_OCR_LANGUAGES".into(), "eng".into())]),
        args: Vec::new(),
        requires_gpu: false,
        health: Some("/health".into()),
        models: Vec::new(),
        network: false,
    };
    let states = e.reconcile(std::slice::from_ref(&ocr), None).await.unwrap();
    assert_eq!(
        states[0].state,
        ContainerState::Starting,
        "created, not yet serving: {states:?}"
    );
    let ours = e.ours().await.unwrap();
    let Upstream::Socket(socket) = ours[0].upstream.clone() else {
        panic!("socket mode gives a socket: {:?}", ours[0].upstream)
    };
    assert!(socket.starts_with(sockets.path()));
    let c = e
        .docker()
        .inspect_container(&ours[0].id, None)
        .await
        .unwrap();
    let h = c.host_config.unwrap();
    assert_eq!(h.network_mode.as_deref(), Some("none"), "no network at all");
    assert!(
        h.port_bindings.unwrap_or_default().is_empty(),
        "nothing published"
    );
    let uid = std::fs::metadata(sockets.path())
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    assert!(
        c.config
            .unwrap()
            .user
            .unwrap()
            .starts_with(&format!("{uid}:")),
        "it runs as the agent's user"
    );

    let gw = Gateway::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // As a coordinator with this key would send them (the gateway serves no one else).
    gw.routes.set_key(Some("k".repeat(64)));
    let key = || (commons_server::auth::GATEWAY_KEY_HEADER, "k".repeat(64));
    gw.routes.set(
        ours.into_iter()
            .map(|o| (o.service, o.upstream))
            .collect::<HashMap<_, _>>(),
    );
    let client = reqwest::Client::new();
    let mut healthy = false;
    for _ in 0..100 {
        if let Ok(r) = client
            .get(format!("{}/ocr/health", gw.url()))
            .header(key().0, key().1)
            .send()
            .await
            && r.status() == 200
        {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "the service answers /health through its socket");
    let states = e.reconcile(std::slice::from_ref(&ocr), None).await.unwrap();
    assert_eq!(
        states[0].state,
        ContainerState::Running,
        "serving once /health answers"
    );
    // A running container whose image does not answer its health path is not serving.
    let silent = ContainerAssignment {
        health: Some("/health".into()),
        ..service("silent", &["sleep", "600"])
    };
    let mut sleeper = Engine::connect(policy("t-silent")).await.unwrap();
    sleeper.remove_all().await.unwrap();
    sleeper
        .reconcile(std::slice::from_ref(&silent), None)
        .await
        .unwrap();
    let again = sleeper
        .reconcile(std::slice::from_ref(&silent), None)
        .await
        .unwrap();
    assert_eq!(again[0].state, ContainerState::Starting, "{again:?}");
    sleeper.remove_all().await.unwrap();
    let png = commons_ocr::sample::png_of(&commons_ocr::sample::pdf_with_text(&[
        "Donated machines",
        "read this text",
    ]))
    .expect("pdftoppm");
    let r = client
        .post(format!("{}/api/service/ocr/ocr", gw.url()))
        .header(key().0, key().1)
        .body(png)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains("Donated machines") && text.contains("read this text"),
        "read {text:?}"
    );
    e.remove_all().await.unwrap();
    assert!(
        !socket.parent().unwrap().exists(),
        "the socket folder goes with its container"
    );
}

/// A container without network reaches neither a service on the host's loopback nor the host's LAN address, while
/// the same probe does reach a listener inside itself (so the probe can tell).
#[tokio::test]
async fn a_container_without_network_reaches_neither_the_host_nor_the_lan() {
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let port = host.local_addr().unwrap().port();
    let lan = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find(|a| {
                    a.parse::<std::net::Ipv4Addr>()
                        .is_ok_and(|ip| !ip.is_loopback())
                })
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "10.0.0.1".into());
    let sockets = tempfile::tempdir().unwrap();
    let mut p = policy("t-isolated");
    p.reach = Reach::Socket(sockets.path().to_owned());
    let mut e = Engine::connect(p).await.expect("a container engine");
    e.remove_all().await.unwrap();
    let script = format!(
        "nc -l -p 8081 </dev/null & sleep 0.3; \
         for t in 'self 127.0.0.1 8081' 'host 127.0.0.1 {port}' 'lan {lan} {port}'; do set -- $t; \
           if nc -w 2 $2 $3 </dev/null; then echo REACHED $1; else echo BLOCKED $1; fi; done; sleep 600"
    );
    let probe = ContainerAssignment {
        image: "127.0.0.1:5000/probe:1".into(),
        ..service("probe", &["sh", "-c", &script])
    };
    let states = e.reconcile(&[probe], None).await.unwrap();
    assert_eq!(states[0].state, ContainerState::Running, "{states:?}");
    let id = e.ours().await.unwrap()[0].id.clone();
    let mut said = String::new();
    for _ in 0..100 {
        use futures::StreamExt;
        let mut logs = e.docker().logs(
            &id,
            Some(bollard::query_parameters::LogsOptions {
                stdout: true,
                ..Default::default()
            }),
        );
        said.clear();
        while let Some(Ok(l)) = logs.next().await {
            said.push_str(&l.to_string());
        }
        if said
            .lines()
            .filter(|l| l.contains("REACHED") || l.contains("BLOCKED"))
            .count()
            == 3
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    e.remove_all().await.unwrap();
    assert!(said.contains("REACHED self"), "the probe works: {said:?}");
    assert!(
        said.contains("BLOCKED host"),
        "the host's loopback: {said:?}"
    );
    assert!(
        said.contains(&"BLOCKED lan".to_string()),
        "the LAN ({lan}): {said:?}"
    );
    assert!(
        host.accept().is_err(),
        "nothing connected to the host's listener"
    );
}

/// CPU time container `id` has used, in nanoseconds, from its cgroup (the engine's stats are sampled once a second,
/// too coarse for windows of two duty-cycle periods): cgroup v2's `cpu.stat`, or v1's `cpuacct.usage`.
async fn cpu_ns(id: &str) -> u64 {
    let v2 = format!("/sys/fs/cgroup/docker/{id}/cpu.stat");
    if let Ok(stat) = std::fs::read_to_string(&v2) {
        let usec: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .expect("usage_usec in cpu.stat");
        return usec * 1000;
    }
    let v1 = format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage");
    std::fs::read_to_string(&v1)
        .unwrap_or_else(|e| panic!("the container's CPU time: neither {v2} nor {v1}: {e}"))
        .trim()
        .parse()
        .expect("cpuacct.usage")
}

/// CPU time container `id` uses over `window`, and the wall time measured.
async fn cpu_over(id: &str, window: Duration) -> (f64, f64) {
    let t0 = std::time::Instant::now();
    let u0 = cpu_ns(id).await;
    tokio::time::sleep(window).await;
    let u1 = cpu_ns(id).await;
    ((u1 - u0) as f64, t0.elapsed().as_nanos() as f64)
}

/// The GPU-use cap's mechanism, measured where no GPU exists: a CPU-bound container duty-cycled to 60 % uses 60 % of
/// what it uses free, within 5 points (the figures are printed). Free and cycled windows alternate (two periods
/// each, four rounds), so that other work on the machine (a build, other tests) weighs on both alike. A GPU
/// container is cycled the same way, so its GPU work is held to the same share.
#[tokio::test]
async fn duty_cycling_holds_a_busy_container_to_its_share() {
    let mut e = engine("t-duty").await;
    e.remove_all().await.unwrap();
    let busy = service("busy", &["sh", "-c", "while :; do :; done"]);
    let states = e.reconcile(&[busy], None).await.unwrap();
    assert_eq!(states[0].state, ContainerState::Running, "{states:?}");
    let id = e.ours().await.unwrap()[0].id.clone();
    let docker = e.docker().clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut free, mut cycled) = ((0.0, 0.0), (0.0, 0.0));
    for _ in 0..4 {
        let (cpu, wall) = cpu_over(&id, DutyCycle::PERIOD * 2).await;
        free = (free.0 + cpu, free.1 + wall);
        let cycle = DutyCycle::start(docker.clone(), id.clone(), 60);
        let (cpu, wall) = cpu_over(&id, DutyCycle::PERIOD * 2).await;
        cycled = (cycled.0 + cpu, cycled.1 + wall);
        drop(cycle);
        // The last unpause lands.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (free, cycled) = (free.0 / free.1, cycled.0 / cycled.1);
    let share = 100.0 * cycled / free;
    println!(
        "duty cycle at 60 %: {:.1} % of a core cycled, {:.1} % free: {share:.1} % of its free use",
        100.0 * cycled,
        100.0 * free
    );
    assert!(free > 0.3, "the busy loop runs: {free}");
    assert!((share - 60.0).abs() <= 5.0, "held to {share:.1} %");
    // Cycling stopped: the container is left running, not paused.
    let state = docker
        .inspect_container(&id, None)
        .await
        .unwrap()
        .state
        .unwrap();
    assert_eq!(state.paused, Some(false));
    assert_eq!(state.running, Some(true));
    e.remove_all().await.unwrap();
}
