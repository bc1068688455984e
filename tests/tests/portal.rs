//! The admin portal end to end: the built portal (`cargo xtask portal`) served by a real coordinator on loopback,
//! seeded with real registrations and heartbeats, driven in headless Chromium. Screenshots of each page go to
//! `artifacts/` (or `$COMMONS_ARTIFACTS`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use commons_coordinator::server::test_utils::ADMIN_TOKEN;
use commons_tests::browser::{Driver, click, portal_dist, screenshot, text_of, until, wait_for};
use commons_tests::{Coordinator, Registered, eventually, heartbeat, register};
use fantoccini::Locator;
use serde_json::Value;

const SEEDED: usize = 12;

async fn count(b: &fantoccini::Client, css: &str) -> usize {
    b.execute(
        &format!("return document.querySelectorAll({css:?}).length"),
        vec![],
    )
    .await
    .unwrap()
    .as_u64()
    .unwrap() as usize
}

async fn card(b: &fantoccini::Client, id: &str) -> String {
    text_of(b, &format!("#{id} .card-value"), 5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_in_headless_chromium() {
    let dist = portal_dist();
    let releases = tempfile::tempdir().unwrap();
    std::fs::write(
        releases.path().join("commons_0.1.0_amd64.deb"),
        b"not really a deb",
    )
    .unwrap();
    let rel = releases.path().to_owned();
    let c = Coordinator::start(move |c, _| {
        c.portal_dir = Some(dist);
        c.releases_dir = Some(rel);
        c.live_interval_ms = 200;
        c.heartbeat_interval_secs = 1;
        c.stale_after_secs = 3;
        c.offline_after_secs = 600;
        c.history_interval_secs = 1;
    })
    .await;
    let url = c.url();
    let http = reqwest::Client::new();
    let driver = Driver::start().await;
    let b = driver.browser().await;

    // Login: a wrong token is refused with a message; the right one opens the overview.
    b.goto(&url).await.unwrap();
    wait_for(&b, "#token", 20)
        .await
        .send_keys("not-the-admin-token-000")
        .await
        .unwrap();
    click(&b, "#login").await;
    let error = text_of(&b, "#login-error", 10).await;
    assert!(error.contains("wrong"), "{error}");
    screenshot(&b, "portal-login").await;
    let token = b.find(Locator::Css("#token")).await.unwrap();
    token.clear().await.unwrap();
    token.send_keys(ADMIN_TOKEN).await.unwrap();
    click(&b, "#login").await;
    wait_for(&b, "#feed-live", 10).await;
    wait_for(&b, "#card-total", 10).await;

    // No workers yet: the overview says what to do, with a link to the downloads.
    let empty = text_of(&b, ".empty", 10).await;
    assert!(
        empty.contains("No workers yet") && empty.contains("Downloads"),
        "{empty}"
    );
    assert_eq!(card(&b, "card-total").await, "0");
    screenshot(&b, "portal-overview-empty").await;

    // Workers register while the page is open; the cards follow the live feed.
    let mut workers: Vec<Registered> = Vec::new();
    for i in 0..SEEDED {
        workers.push(register(&http, &url, &format!("http://127.0.0.1:{}", 20_000 + i)).await);
    }
    // Every worker but the last heartbeats; the last one goes stale while the test watches.
    let beating = Arc::new(AtomicBool::new(true));
    let beat = {
        let (http, url, ws, beating) = (
            http.clone(),
            url.clone(),
            workers[..SEEDED - 1].to_vec(),
            beating.clone(),
        );
        tokio::spawn(async move {
            while beating.load(Ordering::Relaxed) {
                for w in &ws {
                    heartbeat(&http, &url, w, "healthy", 0.25).await;
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };

    // The overview's counts are the API's.
    assert!(
        until(
            &b,
            10,
            &format!(
                "return document.querySelector('#card-total .card-value').textContent == '{SEEDED}'"
            )
        )
        .await,
        "the overview shows {SEEDED} workers"
    );
    let stats = c.admin(&http, "/api/admin/stats").await;
    assert_eq!(
        card(&b, "card-total").await,
        stats["total_workers"].to_string()
    );
    assert_eq!(card(&b, "card-cores").await, stats["cpu_cores"].to_string());
    // Which versions the fleet runs, from the workers' registrations and heartbeats.
    let versions = stats["agent_versions"].as_object().unwrap();
    assert!(!versions.is_empty(), "{stats}");
    for (v, n) in versions {
        let id = format!(
            "card-version-{}",
            v.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        );
        let shown =
            format!("return document.querySelector('#{id} .card-value')?.textContent == '{n}'");
        assert!(
            until(&b, 10, &shown).await,
            "the overview shows {n} workers on {v}"
        );
    }
    assert_eq!(
        card(&b, "card-tier2").await,
        stats["workers_by_tier"]["service_workers"].to_string()
    );
    wait_for(&b, "#chart-online", 10).await;
    screenshot(&b, "portal-overview").await;

    // The topology: the coordinator and every worker.
    b.goto(&format!("{url}/#/topology")).await.unwrap();
    wait_for(&b, "svg#topology", 10).await;
    assert!(
        until(
            &b,
            10,
            &format!(
                "return document.querySelectorAll('circle.node').length == {}",
                SEEDED + 1
            )
        )
        .await,
        "the graph shows the coordinator and {SEEDED} workers, not {}",
        count(&b, "circle.node").await
    );
    assert_eq!(count(&b, "circle.node.coordinator").await, 1);

    // Live: a worker registered now appears without a reload (the marker would vanish with one).
    b.execute("window.__noReload = true", vec![]).await.unwrap();
    let newcomer = register(&http, &url, "http://127.0.0.1:21000").await;
    assert!(
        until(
            &b,
            10,
            &format!(
                "return document.querySelector('circle.node[data-id=\"{}\"]') != null",
                newcomer.id
            )
        )
        .await,
        "the new worker appears live"
    );
    assert_eq!(
        b.execute("return window.__noReload === true", vec![])
            .await
            .unwrap(),
        Value::Bool(true)
    );

    // The silent worker greys out when it goes stale.
    let silent = &workers[SEEDED - 1].id;
    assert!(
        until(&b, 15, &format!(
            "const n = document.querySelector('circle.node[data-id=\"{silent}\"]'); return n != null && n.dataset.status == 'stale' && n.getAttribute('fill') == '#9aa0a6'"
        )).await,
        "the silent worker is drawn stale"
    );

    // A filter hides what it should: status "stale" leaves the coordinator and the two silent workers.
    let stale_now = c.admin(&http, "/api/admin/workers?status=stale").await["total"]
        .as_u64()
        .unwrap() as usize;
    b.find(Locator::Css("#filter-status"))
        .await
        .unwrap()
        .select_by_value("stale")
        .await
        .unwrap();
    assert!(
        until(
            &b,
            5,
            &format!(
                "return document.querySelectorAll('circle.node.worker').length == {stale_now}"
            )
        )
        .await,
        "the stale filter shows {stale_now} workers, not {}",
        count(&b, "circle.node.worker").await
    );
    assert_eq!(
        count(&b, "circle.node.coordinator").await,
        1,
        "the skeleton stays"
    );
    b.find(Locator::Css("#filter-status"))
        .await
        .unwrap()
        .select_by_value("")
        .await
        .unwrap();
    // Search by id.
    b.find(Locator::Css("#filter-search"))
        .await
        .unwrap()
        .send_keys(&workers[0].id)
        .await
        .unwrap();
    assert!(
        until(
            &b,
            5,
            "return document.querySelectorAll('circle.node.worker').length == 1"
        )
        .await
    );
    b.find(Locator::Css("#filter-search"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    b.execute("const i = document.querySelector('#filter-search'); i.dispatchEvent(new InputEvent('input'))", vec![]).await.unwrap();
    assert!(
        until(
            &b,
            5,
            &format!(
                "return document.querySelectorAll('circle.node.worker').length == {}",
                SEEDED + 1
            )
        )
        .await
    );

    // Clicking a node shows its details.
    click(&b, &format!("circle.node[data-id=\"{}\"]", workers[0].id)).await;
    let details = text_of(&b, "#node-details", 5).await;
    assert!(details.contains(&workers[0].id), "{details}");

    // Export PNG: the SVG drawn onto a canvas, offered as a PNG download (downloads are caught, not saved).
    b.execute(
        "window.__downloads = []; HTMLAnchorElement.prototype.click = function () { window.__downloads.push({name: this.download, href: this.href}); }",
        vec![],
    )
    .await
    .unwrap();
    click(&b, "#export-png").await;
    assert!(
        until(&b, 10, "return window.__downloads.some(d => d.name == 'commons-topology.png' && d.href.startsWith('data:image/png;base64,') && d.href.length > 2000)").await,
        "a PNG download"
    );

    // Export JSON: valid, every node with a position.
    click(&b, "#export-json").await;
    let exported = b
        .execute("return window.__commonsExport", vec![])
        .await
        .unwrap();
    let graph: Value =
        serde_json::from_str(exported.as_str().expect("an export")).expect("the export is JSON");
    assert_eq!(graph["node_count"], SEEDED + 2);
    assert!(
        graph["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["x"].is_number() && n["y"].is_number())
    );
    assert_eq!(graph["edges"].as_array().unwrap().len(), SEEDED + 1);
    screenshot(&b, "portal-topology").await;

    // Workers: the table, then one worker's page. One worker's answers were outvoted twice: it is drained.
    let outvoted: commons_shared::WorkerId = workers[1].id.parse().unwrap();
    let others: [commons_shared::WorkerId; 2] = [
        workers[2].id.parse().unwrap(),
        workers[3].id.parse().unwrap(),
    ];
    for _ in 0..2 {
        c.server
            .state()
            .judged(&commons_coordinator::verify::Verdict::Outvoted {
                wrong: outvoted,
                right: others,
            });
    }
    b.goto(&format!("{url}/#/workers")).await.unwrap();
    assert!(
        until(
            &b,
            10,
            &format!(
                "return document.querySelectorAll('table#workers tbody tr').length == {}",
                SEEDED + 1
            )
        )
        .await,
        "the table lists every worker"
    );
    assert_eq!(
        count(&b, "table#workers td.trust.drained").await,
        1,
        "one worker is shown drained"
    );
    screenshot(&b, "portal-workers").await;
    b.goto(&format!("{url}/#/workers/{}", workers[1].id))
        .await
        .unwrap();
    assert!(
        text_of(&b, "#worker-title", 10)
            .await
            .starts_with("Worker ")
    );
    let trust = text_of(&b, "#worker-trust", 10).await;
    assert!(
        trust.ends_with("%: drained, its answers disagreed with other workers'"),
        "{trust}"
    );
    // Registered with an endpoint and no channel open: reached directly.
    let path = text_of(&b, "#worker-path", 10).await;
    assert_eq!(path, "directly, at its endpoint or address");
    // The ways it says it is reached, each with its round trip.
    let r = http
        .post(format!("{url}/api/worker/heartbeat"))
        .bearer_auth(&workers[1].token)
        .json(&serde_json::json!({"worker_id": workers[1].id, "status": "healthy", "load": 0.1, "paths": [
            {"kind": "hole_punched", "rtt_ms": 6, "connections": 2},
            {"kind": "relayed", "connections": 1},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        until(
            &b,
            10,
            "return (document.querySelector('#worker-paths') || {}).textContent == \
             'direct after a hole punch: 2 connections, 6 ms · through a relay: 1 connection, not measured yet'"
        )
        .await,
        "the worker's page lists its paths: {}",
        text_of(&b, "#worker-paths", 1).await
    );
    screenshot(&b, "portal-worker").await;

    // Services, coordinators, downloads.
    b.goto(&format!("{url}/#/services")).await.unwrap();
    wait_for(&b, "table#services", 10).await;
    let services = c.admin(&http, "/api/admin/services").await;
    assert_eq!(
        count(&b, "table#services tbody tr").await,
        services["services"].as_array().unwrap().len()
    );
    screenshot(&b, "portal-services").await;
    b.goto(&format!("{url}/#/coordinators")).await.unwrap();
    assert!(
        text_of(&b, "#coordinators-source", 10)
            .await
            .contains("This coordinator only")
    );
    screenshot(&b, "portal-coordinators").await;
    b.goto(&format!("{url}/#/downloads")).await.unwrap();
    let row = text_of(&b, "table#releases tbody tr", 10).await;
    assert!(
        row.contains("commons_0.1.0_amd64.deb") && row.contains("0.1.0"),
        "{row}"
    );
    screenshot(&b, "portal-downloads").await;

    // Consumers: a key made through the API, used twice, shows the API's count; one made with the form is shown
    // once; revoking with the button revokes it.
    let made = c
        .api_key(
            &http,
            serde_json::json!({"name": "lab", "services": ["ocr"], "daily_requests": 10}),
        )
        .await;
    for _ in 0..2 {
        let r = http
            .post(format!("{url}/api/service/ocr/ocr"))
            .bearer_auth(made["key"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "the key passes; no worker serves ocr here");
    }
    let keys = c.admin(&http, "/api/admin/keys").await;
    assert_eq!(keys["keys"][0]["requests_today"], 2, "{keys}");
    b.goto(&format!("{url}/#/consumers")).await.unwrap();
    let id = made["id"].as_str().unwrap();
    let used = text_of(&b, &format!("#key-{id} .used"), 10).await;
    assert_eq!(used, "2 of 10 (20 %)");
    wait_for(&b, "#key-name", 10)
        .await
        .send_keys("browser")
        .await
        .unwrap();
    click(&b, "#create-key").await;
    let shown = text_of(&b, "#new-key-secret", 10).await;
    assert!(
        shown.contains("browser") && shown.contains("ck_"),
        "{shown}"
    );
    let keys = c.admin(&http, "/api/admin/keys").await;
    let list = keys["keys"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["name"], "browser");
    assert!(
        until(
            &b,
            10,
            "return document.querySelectorAll('table#keys tbody tr').length == 2"
        )
        .await
    );
    screenshot(&b, "portal-consumers").await;
    click(&b, &format!("#key-{id} button.revoke")).await;
    assert!(
        eventually(10, || async {
            c.admin(&http, "/api/admin/keys").await["keys"][0]["revoked_at_ms"].is_i64()
        })
        .await,
        "the button revokes the key"
    );
    assert!(
        until(
            &b,
            10,
            &format!("return document.querySelector('#key-{id}').classList.contains('revoked')")
        )
        .await
    );

    // Back on the overview, the history has points: the charts draw a line per tier.
    b.goto(&format!("{url}/#/")).await.unwrap();
    wait_for(&b, "#chart-online", 10).await;
    assert!(
        until(
            &b,
            10,
            "return document.querySelectorAll('#chart-online path.series').length == 3"
        )
        .await,
        "the workers-online chart draws three tiers"
    );
    screenshot(&b, "portal-overview-history").await;

    // The Consumers page's usage: the two requests of the lab key (no worker took them) in the top services, as the
    // usage report counts them.
    let usage = c
        .admin(&http, "/api/admin/usage?hours=24&bucket_minutes=60")
        .await;
    assert_eq!(usage["services"][0]["service"], "ocr", "{usage}");
    assert_eq!(usage["services"][0]["requests"], 2, "{usage}");
    b.goto(&format!("{url}/#/consumers")).await.unwrap();
    assert_eq!(text_of(&b, "#service-usage-ocr .requests", 10).await, "2");
    assert_eq!(text_of(&b, "#service-usage-ocr .completed", 10).await, "0");
    wait_for(&b, "#chart-key-usage", 10).await;

    // Volunteers: the leaderboard shows what the API says, the name a volunteer chose, and anonymous otherwise.
    beating.store(false, Ordering::Relaxed);
    beat.await.unwrap();
    let named = &workers[0];
    let r = http
        .post(format!("{url}/api/worker/heartbeat"))
        .bearer_auth(&named.token)
        .json(&serde_json::json!({"worker_id": named.id, "status": "healthy", "load": 0.1, "display_name": "  Ada  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let board = || c.admin(&http, "/api/volunteers");
    assert!(
        eventually(10, || async {
            board().await["volunteers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["display_name"] == "Ada")
        })
        .await,
        "the chosen name reaches the leaderboard"
    );
    let board = board().await;
    let volunteers = board["volunteers"].as_array().unwrap();
    assert!(volunteers.len() >= 2, "{board}");
    b.goto(&format!("{url}/#/volunteers")).await.unwrap();
    wait_for(&b, "table#volunteers", 10).await;
    assert_eq!(
        count(&b, "table#volunteers tbody tr").await,
        volunteers.len()
    );
    for v in volunteers {
        let row = format!("#volunteer-{}", v["worker_id"].as_str().unwrap());
        let name = text_of(&b, &format!("{row} .name"), 10).await;
        match v["display_name"].as_str() {
            Some(n) => assert_eq!(name, n),
            None => assert!(name.starts_with("Anonymous volunteer"), "{name}"),
        }
        assert_eq!(
            text_of(&b, &format!("{row} .requests"), 10).await,
            v["credit"]["requests"].to_string()
        );
        let points = v["points"].as_f64().unwrap().round() as u64;
        assert_eq!(
            text_of(&b, &format!("{row} .points"), 10).await,
            commons_shared::usage::thousands(points)
        );
    }
    screenshot(&b, "portal-volunteers").await;

    // Logging out ends the session: the login form is back and the API refuses the browser.
    click(&b, "#logout").await;
    wait_for(&b, "#token", 10).await;
    let status = b
        .execute_async(
            "const done = arguments[0]; fetch('/api/admin/stats').then(r => done(r.status))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, 401);

    b.close().await.unwrap();
}

/// The Coordinators page's source: the edge's list with the edge's admin token; without a working one, this
/// coordinator alone, saying why.
#[tokio::test]
async fn coordinators_come_from_the_edge_when_the_coordinator_may_ask_it() {
    use commons_tests::Edge;
    let http = reqwest::Client::new();
    let edge = Edge::start(|_| {}).await;
    let key = edge.federation_key(&http, "portal").await;
    let with = Coordinator::federated(&edge, &key, 100, |c, _| {
        c.edge_admin_token = Some(commons_coordinator::config::Secret(
            commons_edge::server::test_utils::ADMIN_TOKEN.into(),
        ));
    })
    .await;
    let key2 = edge.federation_key(&http, "portal-2").await;
    let without = Coordinator::federated(&edge, &key2, 100, |c, _| {
        c.edge_admin_token = Some(commons_coordinator::config::Secret(
            "not-the-edge-token-0000".into(),
        ));
    })
    .await;
    assert!(eventually(10, || async { edge.coordinator_count(&http).await == 2 }).await);
    let view = with.admin(&http, "/api/admin/coordinators").await;
    assert_eq!(view["source"], "edge", "{view}");
    let urls: Vec<&str> = view["coordinators"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["url"].as_str())
        .collect();
    assert!(
        urls.contains(&with.url().as_str()) && urls.contains(&without.url().as_str()),
        "{view}"
    );
    let view = without.admin(&http, "/api/admin/coordinators").await;
    assert_eq!(view["source"], "local", "{view}");
    assert!(
        view["message"]
            .as_str()
            .unwrap()
            .contains("the edge did not answer"),
        "{view}"
    );
    assert_eq!(view["coordinators"][0]["url"], without.url());
    // The topology shows the edge above this coordinator.
    let topo = with.admin(&http, "/api/dht/topology").await;
    assert!(
        topo["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "edge"),
        "{topo}"
    );
    assert!(
        topo["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "federated")
    );
}
