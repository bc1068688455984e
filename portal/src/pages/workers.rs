//! The workers table and one worker's page.

use commons_shared::api::{PathReport, ReachPath, WorkerList, WorkerSummary};
use commons_shared::dht::NatStatus;
use web_sys::{HtmlInputElement, HtmlSelectElement};
use yew::prelude::*;

use crate::app::Live;
use crate::components::{Empty, Fetch, LineChart, Loading, Problem, use_fetch};
use crate::view::{Column, Route, Series, bytes, sort_workers, worker_matches};

/// Sortable, filterable table of every worker (read 1,000 at a time).
#[function_component]
pub fn Workers() -> Html {
    let live = use_context::<Live>().expect("inside the shell");
    let (list, reload) = use_fetch::<WorkerList>("/api/admin/workers?limit=1000".into());
    // New or removed workers on the feed: read the table again.
    {
        let reload = reload.clone();
        use_effect_with(live.version, move |_| reload.emit(()));
    }
    let sort = use_state(|| (Column::Id, false));
    let text = use_state(String::new);
    let tier = use_state(|| None::<u8>);
    let status = use_state(String::new);
    let oninput = {
        let text = text.clone();
        Callback::from(move |e: InputEvent| {
            text.set(e.target_unchecked_into::<HtmlInputElement>().value())
        })
    };
    let ontier = {
        let tier = tier.clone();
        Callback::from(move |e: Event| {
            tier.set(
                e.target_unchecked_into::<HtmlSelectElement>()
                    .value()
                    .parse()
                    .ok(),
            )
        })
    };
    let onstatus = {
        let status = status.clone();
        Callback::from(move |e: Event| {
            status.set(e.target_unchecked_into::<HtmlSelectElement>().value())
        })
    };
    let list = match &*list {
        Fetch::Loading => return html! { <><h1>{ "Workers" }</h1><Loading /></> },
        Fetch::Failed(e) => {
            return html! { <><h1>{ "Workers" }</h1><Problem message={e.to_string()} retry={reload} /></> };
        }
        Fetch::Ready(l) => l,
    };
    let mut rows: Vec<WorkerSummary> = list
        .workers
        .iter()
        .filter(|w| worker_matches(w, &text))
        .filter(|w| tier.is_none_or(|t| w.tier.number() == t))
        .filter(|w| status.is_empty() || w.status.as_str() == *status)
        .cloned()
        .collect();
    sort_workers(&mut rows, sort.0, sort.1);
    let header = |c: Column, name: &'static str| {
        let sort = sort.clone();
        let mark = if sort.0 == c {
            if sort.1 { " ▼" } else { " ▲" }
        } else {
            ""
        };
        html! {
            <th class="sortable" onclick={Callback::from(move |_| sort.set((c, if sort.0 == c { !sort.1 } else { false })))}>
                { name }{ mark }
            </th>
        }
    };
    html! {
        <>
            <h1>{ "Workers" }<small>{ format!(" {} of {}", rows.len(), list.total) }</small></h1>
            <div class="filters">
                <input id="worker-filter" placeholder="Filter: id, service, GPU, status" {oninput} />
                <select id="worker-tier" onchange={ontier}>
                    <option value="">{ "Every tier" }</option>
                    <option value="1">{ "Tier 1 (GPU)" }</option>
                    <option value="2">{ "Tier 2 (service)" }</option>
                    <option value="3">{ "Tier 3 (data)" }</option>
                </select>
                <select id="worker-status" onchange={onstatus}>
                    <option value="">{ "Every status" }</option>
                    { for ["healthy", "degraded", "paused", "busy", "stale", "offline"].iter().map(|s| html! { <option value={*s}>{ *s }</option> }) }
                </select>
            </div>
            if list.total == 0 {
                <Empty>{ "No workers yet: install the desktop app from " }<a href={Route::Downloads.href()}>{ "Downloads" }</a>{ "." }</Empty>
            } else {
                <table id="workers">
                    <thead><tr>
                        { header(Column::Id, "Worker") }{ header(Column::Tier, "Tier") }{ header(Column::Status, "Status") }
                        { header(Column::Load, "Load") }{ header(Column::Gpus, "GPUs") }<th>{ "Services" }</th>
                        { header(Column::Heartbeat, "Last heartbeat") }{ header(Column::Requests, "Requests") }{ header(Column::Errors, "Errors") }<th>{ "Trust" }</th><th>{ "Path" }</th>
                    </tr></thead>
                    <tbody>
                        { for rows.iter().map(|w| html! {
                            <tr key={w.worker_id.to_string()} class={w.status.as_str()}>
                                <td><a href={Route::Worker(w.worker_id.to_string()).href()}>{ w.worker_id.to_string() }</a></td>
                                <td>{ w.tier.number() }</td>
                                <td><span class={classes!("status", w.status.as_str())}>{ w.status.as_str() }</span></td>
                                <td>{ format!("{:.0} %", 100.0 * w.current_load) }</td>
                                <td>{ w.capabilities.gpus.len() }</td>
                                <td>{ w.services.join(", ") }</td>
                                <td>{ w.last_heartbeat.clone().unwrap_or_else(|| "never".into()) }</td>
                                <td>{ w.requests }</td>
                                <td>{ w.errors }</td>
                                <td class={classes!("trust", w.drained.then_some("drained"))}>{ trust(w) }</td>
                                <td class={classes!("path", w.path.as_str())}>{ path(w) }</td>
                            </tr>
                        }) }
                    </tbody>
                </table>
            }
        </>
    }
}

/// Props of [`WorkerDetail`].
#[derive(Debug, Properties, PartialEq)]
pub struct WorkerDetailProps {
    /// Worker id.
    pub id: String,
}

/// One worker: capabilities, containers, GPUs, load since the page opened.
#[function_component]
pub fn WorkerDetail(p: &WorkerDetailProps) -> Html {
    let live = use_context::<Live>().expect("inside the shell");
    let (w, reload) = use_fetch::<WorkerSummary>(format!("/api/admin/workers/{}", p.id));
    {
        let reload = reload.clone();
        use_effect_with((), move |_| {
            let t = gloo_timers::callback::Interval::new(10_000, move || reload.emit(()));
            move || drop(t)
        });
    }
    let w = match &*w {
        Fetch::Loading => return html! { <Loading /> },
        Fetch::Failed(e) => return html! { <Problem message={e.to_string()} retry={reload} /> },
        Fetch::Ready(w) => w,
    };
    let loads = live
        .loads
        .get(&p.id)
        .map(|q| q.iter().map(|(t, l)| (*t, *l)).collect())
        .unwrap_or_default();
    let c = &w.capabilities;
    html! {
        <>
            <p><a href={Route::Workers.href()}>{ "← Workers" }</a></p>
            <h1 id="worker-title">{ format!("Worker {}", w.worker_id) }</h1>
            <dl class="facts">
                <dt>{ "Status" }</dt><dd><span class={classes!("status", w.status.as_str())}>{ w.status.as_str() }</span></dd>
                <dt>{ "Tier" }</dt><dd>{ w.tier.number() }</dd>
                <dt>{ "Load" }</dt><dd>{ format!("{:.0} %", 100.0 * w.current_load) }</dd>
                <dt>{ "Last heartbeat" }</dt><dd>{ w.last_heartbeat.clone().unwrap_or_else(|| "never".into()) }</dd>
                <dt>{ "Registered" }</dt><dd>{ w.registered_at.clone() }</dd>
                <dt>{ "Agent" }</dt><dd>{ format!("{}{}", w.agent_version, if w.legacy { " (legacy RMA worker)" } else { "" }) }</dd>
                <dt>{ "Endpoint" }</dt><dd>{ w.endpoint.clone().unwrap_or_else(|| "none (behind NAT or not serving)".into()) }</dd>
                <dt>{ "Requests" }</dt><dd>{ format!("{} ({} errors, {:.0} ms average)", w.requests, w.errors, w.latency_ms) }</dd>
                <dt>{ "Reached" }</dt><dd id="worker-path" class={classes!("path", w.path.as_str())}>{ reached(w) }</dd>
                <dt>{ "Paths" }</dt><dd id="worker-paths">{ paths(&w.paths) }</dd>
                <dt>{ "Trust" }</dt><dd id="worker-trust" class={classes!("trust", w.drained.then_some("drained"))}>{ trust(w) }</dd>
            </dl>
            <h2>{ "Capabilities" }</h2>
            <dl class="facts">
                <dt>{ "Host" }</dt><dd>{ format!("{} ({} {})", c.hostname, c.os, c.arch) }</dd>
                <dt>{ "CPU" }</dt><dd>{ format!("{} cores, {}", c.cpu.cores, c.cpu.brand) }</dd>
                <dt>{ "Memory" }</dt><dd>{ format!("{} ({} free)", bytes(c.memory_bytes), bytes(w.free_memory_bytes)) }</dd>
                <dt>{ "Disks" }</dt><dd>{ c.disks.iter().map(|d| format!("{} free of {}", bytes(d.free_bytes), bytes(d.total_bytes))).collect::<Vec<_>>().join("; ") }</dd>
                <dt>{ "GPUs" }</dt><dd>{ if c.gpus.is_empty() { "none".to_owned() } else { c.gpus.iter().map(|g| format!("{} ({})", g.name, bytes(g.vram_bytes))).collect::<Vec<_>>().join("; ") } }</dd>
            </dl>
            if !w.gpu_samples.is_empty() {
                <h2>{ "GPUs now" }</h2>
                <table><thead><tr><th>{ "GPU" }</th><th>{ "Utilisation" }</th><th>{ "Temperature" }</th><th>{ "Memory used" }</th></tr></thead>
                <tbody>{ for w.gpu_samples.iter().map(|g| html! {
                    <tr><td>{ g.index }</td><td>{ format!("{:.0} %", g.utilization) }</td><td>{ format!("{:.0} °C", g.temperature_c) }</td><td>{ bytes(g.memory_used_bytes) }</td></tr>
                }) }</tbody></table>
            }
            <h2>{ "Containers" }</h2>
            if w.assigned_containers.is_empty() {
                <Empty>{ "Nothing assigned: the coordinator assigns services when they need replicas this worker can run." }</Empty>
            } else {
                <table id="containers"><thead><tr><th>{ "Service" }</th><th>{ "Image" }</th><th>{ "State" }</th><th>{ "Restarts" }</th></tr></thead>
                <tbody>{ for w.assigned_containers.iter().map(|a| {
                    let st = w.containers.iter().find(|c| c.name == a.name);
                    html! { <tr>
                        <td>{ a.service.clone() }</td><td><code>{ a.image.clone() }</code></td>
                        <td>{ st.map_or("not reported".to_owned(), |s| format!("{:?}", s.state).to_lowercase()) }</td>
                        <td>{ st.map_or(0, |s| s.restarts) }</td>
                    </tr> }
                }) }</tbody></table>
            }
            <LineChart id="chart-worker-load" title="Load (since this page opened, from the live feed)" fraction=true
                series={vec![Series { label: "load".into(), colour: "#1a73e8", points: loads }]} />
        </>
    }
}

/// How the coordinator reaches a worker, in words.
fn reached(w: &WorkerSummary) -> String {
    let how = match w.path {
        ReachPath::Reverse => {
            "over the worker's own connection (reverse path: no port open on its side)"
        }
        ReachPath::Direct => "directly, at its endpoint or address",
        ReachPath::Tunnel => "through its tunnel (HTTPS, its certificate checked)",
        ReachPath::None => "not reachable now",
    };
    let how = match w.rtt_ms {
        Some(ms) if w.path != ReachPath::None => {
            format!("{how}; {ms} ms away (its heartbeat's round trip)")
        }
        _ => how.to_owned(),
    };
    match w.nat {
        Some(NatStatus::Private) => format!(
            "{how}; behind a NAT: other DHT nodes reach it through a relay, or directly after a hole punch"
        ),
        Some(NatStatus::Public) => format!("{how}; reachable directly by other DHT nodes"),
        _ => how,
    }
}

/// Every way the worker says it can be reached, each with its round trip ("direct after a hole punch: 2 connections,
/// 6 ms · through a relay: 1 connection, 31 ms").
fn paths(paths: &[PathReport]) -> String {
    if paths.is_empty() {
        return "not reported".to_owned();
    }
    paths
        .iter()
        .map(|p| {
            let n = match p.connections {
                1 => "1 connection".to_owned(),
                n => format!("{n} connections"),
            };
            let rtt = p
                .rtt_ms
                .map_or_else(|| "not measured yet".to_owned(), |ms| format!("{ms} ms"));
            format!("{}: {n}, {rtt}", p.kind.words())
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The path column: how it is reached, and how far away it is when known.
fn path(w: &WorkerSummary) -> String {
    let path = match w.rtt_ms {
        Some(ms) if w.path != ReachPath::None => format!("{} · {ms} ms", w.path.as_str()),
        _ => w.path.as_str().to_owned(),
    };
    if w.nat == Some(NatStatus::Private) {
        path + " · NAT"
    } else {
        path
    }
}

/// A worker's trust in words: a percentage, and why it gets no requests when drained.
fn trust(w: &WorkerSummary) -> String {
    let pct = format!("{:.0} %", 100.0 * w.trust);
    if w.drained {
        format!("{pct}: drained, its answers disagreed with other workers'")
    } else {
        pct
    }
}
