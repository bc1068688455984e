//! The overview: totals from the live feed, requests per service, charts from the history.

use commons_shared::api::{History, ServicesReport};
use yew::prelude::*;

use crate::app::Live;
use crate::components::{Card, Empty, Fetch, LineChart, Loading, Problem, use_fetch};
use crate::view::{Route, bytes, history_series, rates};

/// Cards and charts.
#[function_component]
pub fn Overview() -> Html {
    let live = use_context::<Live>().expect("inside the shell");
    let range = use_state(|| "1h".to_owned());
    let (history, reload) = use_fetch::<History>(format!("/api/admin/history?range={}", *range));
    let (services, _) = use_fetch::<ServicesReport>("/api/admin/services".into());
    // The history gains a point a minute: read it again now and then.
    {
        let reload = reload.clone();
        use_effect_with((), move |_| {
            let t = gloo_timers::callback::Interval::new(30_000, move || reload.emit(()));
            move || drop(t)
        });
    }
    let Some(s) = live.stats.clone() else {
        return html! { <Loading /> };
    };
    let st = &s.workers_by_status;
    let empty = s.total_workers == 0;
    let (rpm, err) = match &*history {
        Fetch::Ready(h) => rates(&h.points).map_or(("–".into(), "–".into()), |(r, e)| {
            (r.to_string(), format!("{e:.1} %"))
        }),
        _ => ("–".into(), "–".into()),
    };
    let range_button = |r: &'static str| {
        let range = range.clone();
        let active = *range == r;
        html! {
            <button class={classes!("range", active.then_some("active"))} onclick={Callback::from(move |_| range.set(r.into()))}>{ r }</button>
        }
    };
    let charts = match &*history {
        Fetch::Loading => html! { <Loading /> },
        Fetch::Failed(e) => html! { <Problem message={e.to_string()} retry={reload.clone()} /> },
        Fetch::Ready(h) => {
            let [online, load, requests] = history_series(&h.points);
            html! {
                <div class="charts">
                    <LineChart id="chart-online" title="Workers online by tier" series={online} />
                    <LineChart id="chart-load" title="Average load by tier" series={load} fraction=true />
                    <LineChart id="chart-requests" title="Requests per minute" series={requests} />
                </div>
            }
        }
    };
    html! {
        <>
            <h1>{ "Overview" }</h1>
            if empty {
                <Empty>
                    { "No workers yet: install the desktop app from " }
                    <a href={Route::Downloads.href()}>{ "Downloads" }</a>
                    { " (or the headless agent on a server), and it appears here within seconds." }
                </Empty>
            }
            <section class="cards">
                <Card id="card-total" label="Workers" value={s.total_workers.to_string()} />
                <Card id="card-healthy" label="Healthy" value={st.healthy.to_string()} />
                <Card id="card-degraded" label="Degraded" value={st.degraded.to_string()} />
                <Card id="card-paused" label="Paused" value={st.paused.to_string()} />
                <Card id="card-busy" label="Busy" value={st.busy.to_string()} />
                <Card id="card-stale" label="Stale" value={st.stale.to_string()} />
                <Card id="card-offline" label="Offline" value={st.offline.to_string()} />
            </section>
            <section class="cards">
                <Card id="card-tier1" label="Tier 1 (GPU)" value={s.workers_by_tier.gpu_workers.to_string()}
                    note={format!("load {:.0} %", 100.0 * s.average_load_by_tier.gpu_workers)} />
                <Card id="card-tier2" label="Tier 2 (service)" value={s.workers_by_tier.service_workers.to_string()}
                    note={format!("load {:.0} %", 100.0 * s.average_load_by_tier.service_workers)} />
                <Card id="card-tier3" label="Tier 3 (data)" value={s.workers_by_tier.data_workers.to_string()}
                    note={format!("load {:.0} %", 100.0 * s.average_load_by_tier.data_workers)} />
                <Card id="card-gpus" label="GPUs" value={s.gpus.to_string()} note={format!("{} VRAM", bytes(s.total_vram_bytes))} />
                <Card id="card-cores" label="CPU cores" value={s.cpu_cores.to_string()} />
                <Card id="card-storage" label="Storage" value={bytes(s.storage_bytes)} />
                <Card id="card-rpm" label="Requests/min" value={rpm} note={format!("{} since start", s.requests_total)} />
                <Card id="card-errors" label="Error rate" value={err} note={format!("{} failed since start", s.errors_total)} />
            </section>
            if !s.agent_versions.is_empty() {
                <section id="versions" class="cards">
                    { for s.agent_versions.iter().map(|(v, n)| html! {
                        <Card id={format!("card-version-{}", v.replace(|c: char| !c.is_ascii_alphanumeric(), "-"))} label={format!("Version {v}")} value={n.to_string()}
                            note={if *n == 1 { "worker".to_owned() } else { "workers".to_owned() }} />
                    }) }
                </section>
            }
            { per_service(&services) }
            <div class="ranges">{ range_button("1h") }{ range_button("24h") }{ range_button("7d") }</div>
            { charts }
        </>
    }
}

/// Requests per service since the coordinator started, and what waits in each queue now.
fn per_service(services: &Fetch<ServicesReport>) -> Html {
    let Fetch::Ready(report) = services else {
        return Html::default();
    };
    html! {
        <section id="service-requests" class="cards">
            { for report.services.iter().map(|s| html! {
                <Card id={format!("card-service-{}", s.name)} label={format!("{} requests", s.name)} value={s.requests.to_string()}
                    note={format!("{} waiting", s.queued)} />
            }) }
        </section>
    }
}
