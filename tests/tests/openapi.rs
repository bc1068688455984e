//! The servers against the OpenAPI documents they publish. schemathesis (a property-based API tester, from the
//! tests' venv: tests/models/requirements.txt) generates requests from each document (its examples, boundary values
//! of every field, random valid and invalid inputs, and sequences of calls) and fails the run on a 5xx, an answer
//! that breaks its documented schema or content type, or a status the document does not list. Each run is bounded
//! by `--max-time`, with a fixed seed so that a failure can be replayed (`st replay <id>` in its output).

use commons_tests::{Coordinator, Edge, eventually, python, register};

/// Seconds each run may take.
const MAX_TIME: &str = "40";

/// Runs schemathesis against the document at `schema` with `headers` on every request; `extra` narrows the run.
/// A run that only hit an error inside schemathesis's own generator (a "Runtime Error", which Hypothesis raises when
/// a draw behaves differently on a busy machine) runs once more with the next seed; a check that fails, a network
/// error or a second such run fails the test.
async fn schemathesis(schema: &str, headers: &[(&str, &str)], extra: &[&str]) {
    for seed in ["1", "2"] {
        let (ok, out) = run(schema, headers, extra, seed).await;
        if ok {
            return;
        }
        let summary = out.rsplit("= SUMMARY =").next().unwrap_or_default();
        let errors = summary
            .split("Errors:\n")
            .nth(1)
            .map(|e| e.split("\n\n").next().unwrap_or_default());
        let only_the_tools_own = !summary.contains("Failures:")
            && errors.is_some_and(|e| e.lines().all(|l| l.contains("Runtime Error")));
        assert!(
            only_the_tools_own && seed == "1",
            "schemathesis found problems with {schema}:\n{out}"
        );
        eprintln!("schemathesis stopped on an error of its own; once more:\n{summary}");
    }
}

/// One run: whether it passed, and what it printed.
async fn run(schema: &str, headers: &[(&str, &str)], extra: &[&str], seed: &str) -> (bool, String) {
    let exe = python().with_file_name("schemathesis");
    let work = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("run")
        .arg(schema)
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-time",
            MAX_TIME,
            "--seed",
            seed,
            // One worker: with two, both threads build Python ASTs at once (Hypothesis describes its filters from
            // their source), and Python 3.11 (Debian 12's) can then fail with "AST constructor recursion depth
            // mismatch" (CPython gh-106905; seen in CI twice in a row, a Runtime Error on GET /api/admin/usage):
            // the tool's failure, not the server's.
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            "--generation-database",
            "none",
            "--no-color",
        ])
        .arg("--report-dir")
        .arg(work.path())
        .args(extra)
        .current_dir(work.path());
    for (name, value) in headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): run .ci/setup", exe.display()));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_answers_as_its_document_says() {
    let c = Coordinator::start(|c, _| c.anonymous_access = false).await;
    let client = reqwest::Client::new();
    // Something to read, and a worker whose token the worker routes are tried with.
    let _key = c
        .api_key(
            &client,
            serde_json::json!({"name": "fuzzed", "rate_per_minute": 60}),
        )
        .await;
    let w = register(&client, &c.url(), "http://127.0.0.1:9").await;
    let schema = format!("{}/api/openapi.json", c.url());
    let admin = format!(
        "Bearer {}",
        commons_coordinator::server::test_utils::ADMIN_TOKEN
    );
    schemathesis(&schema, &[("Authorization", &admin)], &[]).await;
    let worker = format!("Bearer {}", w.token);
    schemathesis(
        &schema,
        &[("Authorization", &worker)],
        &["--include-path-regex", "^/api/worker/"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_answers_as_its_document_says() {
    let edge = Edge::start(|_| {}).await;
    // A coordinator behind it, which answers what the edge forwards (a service request, a registration).
    let client = reqwest::Client::new();
    let key = edge.federation_key(&client, "c").await;
    let _c = Coordinator::federated(&edge, &key, 200, |c, _| c.anonymous_access = false).await;
    assert!(eventually(10, || async { edge.coordinator_count(&client).await == 1 }).await);
    let schema = format!("{}/api/openapi.json", edge.url());
    let admin = format!("Bearer {}", commons_edge::server::test_utils::ADMIN_TOKEN);
    schemathesis(&schema, &[("Authorization", &admin)], &[]).await;
}

/// Where `doc` (an OpenAPI document) leaves a field a client sends unbounded: a string without `maxLength` (or a
/// fixed set of values), a list without `maxItems`. What the document leaves open, the server would take.
fn unbounded(doc: &serde_json::Value) -> Vec<String> {
    let schemas = &doc["components"]["schemas"];
    let (mut seen, mut open) = (Vec::new(), Vec::new());
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let body = &op["requestBody"]["content"]["application/json"]["schema"];
            if !body.is_null() {
                walk(
                    body,
                    &format!("{method} {path}"),
                    schemas,
                    &mut seen,
                    &mut open,
                );
            }
        }
    }
    assert!(seen.len() >= 3, "request bodies found: {seen:?}");
    open
}

fn walk(
    s: &serde_json::Value,
    at: &str,
    schemas: &serde_json::Value,
    seen: &mut Vec<String>,
    open: &mut Vec<String>,
) {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/").to_owned();
        if !seen.contains(&name) {
            seen.push(name.clone());
            walk(&schemas[&name], &name, schemas, seen, open);
        }
        return;
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        for (i, sub) in s[key].as_array().into_iter().flatten().enumerate() {
            walk(sub, &format!("{at}.{key}[{i}]"), schemas, seen, open);
        }
    }
    let types: Vec<&str> = match &s["type"] {
        serde_json::Value::String(t) => vec![t.as_str()],
        serde_json::Value::Array(ts) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ => vec![],
    };
    if types.contains(&"string") && s.get("maxLength").is_none() && s.get("enum").is_none() {
        open.push(format!("{at} (a string without maxLength)"));
    }
    if types.contains(&"array") {
        if s.get("maxItems").is_none() {
            open.push(format!("{at} (a list without maxItems)"));
        }
        walk(&s["items"], &format!("{at}[]"), schemas, seen, open);
    }
    if let Some(props) = s["properties"].as_object() {
        for (name, p) in props {
            walk(p, &format!("{at}.{name}"), schemas, seen, open);
        }
    }
}

/// Every field a client sends is bounded in both published documents as the servers bound it.
#[tokio::test]
async fn every_request_field_of_both_documents_is_bounded() {
    let client = reqwest::Client::new();
    let c = Coordinator::start(|_, _| {}).await;
    let edge = Edge::start(|_| {}).await;
    for url in [c.url(), edge.url()] {
        let doc: serde_json::Value = client
            .get(format!("{url}/api/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let open = unbounded(&doc);
        assert!(
            open.is_empty(),
            "unbounded in {url}'s document:\n{}",
            open.join("\n")
        );
    }
}
