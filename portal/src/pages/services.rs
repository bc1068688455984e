//! Services (coverage and gaps), coordinators, downloads.

use commons_shared::api::ServicesReport;
use commons_shared::portal::{CoordinatorsView, ReleaseList};
use yew::prelude::*;

use crate::components::{Empty, Fetch, Loading, Problem, use_fetch};
use crate::view::bytes;

/// Wanted vs healthy replicas per service, gaps first.
#[function_component]
pub fn Services() -> Html {
    let (report, reload) = use_fetch::<ServicesReport>("/api/admin/services".into());
    let r = match &*report {
        Fetch::Loading => return html! { <Loading /> },
        Fetch::Failed(e) => return html! { <Problem message={e.to_string()} retry={reload} /> },
        Fetch::Ready(r) => r,
    };
    let mut rows = r.services.clone();
    rows.sort_by(|a, b| b.gap.cmp(&a.gap).then_with(|| a.name.cmp(&b.name)));
    html! {
        <>
            <h1>{ "Services" }</h1>
            if r.gaps.is_empty() {
                <p class="ok" id="no-gaps">{ "Every service has the replicas it wants." }</p>
            } else {
                <p class="warn" id="gaps">{ format!("Below their wanted replicas: {}.", r.gaps.join(", ")) }</p>
            }
            <table id="services">
                <thead><tr><th>{ "Service" }</th><th>{ "Wanted" }</th><th>{ "Assigned" }</th><th>{ "Healthy" }</th><th>{ "Gap" }</th><th>{ "Needs a GPU" }</th></tr></thead>
                <tbody>{ for rows.iter().map(|s| html! {
                    <tr class={classes!((s.gap > 0).then_some("gap"))}>
                        <td>{ s.name.clone() }</td><td>{ s.wanted }</td><td>{ s.assigned }</td><td>{ s.healthy }</td>
                        <td>{ s.gap }</td><td>{ if s.requires_gpu { "yes" } else { "no" } }</td>
                    </tr>
                }) }</tbody>
            </table>
        </>
    }
}

/// The coordinators, from the edge or the DHT.
#[function_component]
pub fn Coordinators() -> Html {
    let (view, reload) = use_fetch::<CoordinatorsView>("/api/admin/coordinators".into());
    let v = match &*view {
        Fetch::Loading => return html! { <Loading /> },
        Fetch::Failed(e) => return html! { <Problem message={e.to_string()} retry={reload} /> },
        Fetch::Ready(v) => v,
    };
    let source = match v.source.as_str() {
        "edge" => "From the edge.",
        "dht" => {
            "From the DHT's coordinator records (give the coordinator --edge-admin-token for the edge's view)."
        }
        _ => {
            "This coordinator only: it has no edge admin token and finds no other coordinator in the DHT."
        }
    };
    html! {
        <>
            <h1>{ "Coordinators" }</h1>
            <p id="coordinators-source">{ source }</p>
            if let Some(m) = &v.message { <p class="warn">{ m.clone() }</p> }
            <table id="coordinators">
                <thead><tr><th>{ "Id" }</th><th>{ "URL" }</th><th>{ "Region" }</th><th>{ "Workers" }</th><th>{ "Load" }</th><th>{ "Healthy" }</th><th>{ "Last seen" }</th></tr></thead>
                <tbody>{ for v.coordinators.iter().map(|c| html! {
                    <tr>
                        <td>{ c.id.clone() }</td><td><a href={c.url.clone()}>{ c.url.clone() }</a></td>
                        <td>{ c.region.clone().unwrap_or_default() }</td><td>{ c.figures.workers }</td>
                        <td>{ format!("{:.0} %", 100.0 * c.figures.load) }</td><td>{ if c.healthy { "yes" } else { "no" } }</td>
                        <td>{ c.last_seen.clone() }</td>
                    </tr>
                }) }</tbody>
            </table>
        </>
    }
}

/// The installers this coordinator hosts.
#[function_component]
pub fn Downloads() -> Html {
    let (list, reload) = use_fetch::<ReleaseList>("/api/releases".into());
    let l = match &*list {
        Fetch::Loading => return html! { <Loading /> },
        Fetch::Failed(e) => return html! { <Problem message={e.to_string()} retry={reload} /> },
        Fetch::Ready(l) => l,
    };
    html! {
        <>
            <h1>{ "Downloads" }</h1>
            if l.releases.is_empty() {
                <Empty>{ "No installers are hosted here yet: put the desktop app's .deb and the headless agent in the coordinator's releases directory (--releases-dir) and they are listed here with their SHA-256." }</Empty>
            } else {
                <table id="releases">
                    <thead><tr><th>{ "Installer" }</th><th>{ "Version" }</th><th>{ "For" }</th><th>{ "Size" }</th><th>{ "SHA-256" }</th></tr></thead>
                    <tbody>{ for l.releases.iter().map(|r| html! {
                        <tr>
                            <td><a href={r.url.clone()} download="">{ r.file.clone() }</a></td><td>{ r.version.clone() }</td>
                            <td>{ r.kind.clone() }</td><td>{ bytes(r.size_bytes) }</td><td><code class="hash">{ r.sha256.clone() }</code></td>
                        </tr>
                    }) }</tbody>
                </table>
            }
            if let Some(cmd) = &l.headless_install {
                <h2>{ "Servers: the headless agent in one line" }</h2>
                <pre id="headless-install">{ cmd.clone() }</pre>
            }
        </>
    }
}
