//! The page: first run (hardware, Start donating, Advanced), then the state, services, network and the caps.

use commons_shared::api::ContainerState;
use commons_shared::desktop::{
    ContainerRow, DonorState, Hardware, Limits, Status, UpdatePhase, UpdateView, WindowCommand,
};
use commons_shared::units::binary;
use web_sys::HtmlInputElement;
use yew::prelude::*;

use crate::ipc::call;
use crate::words;

/// How often the page asks for the status while it is open.
const POLL_MS: u32 = 1000;

/// The page.
#[function_component(App)]
pub fn app() -> Html {
    let hardware = use_state(|| None::<Hardware>);
    let status = use_state(|| None::<Status>);
    let limits = use_state(|| None::<Limits>);
    let error = use_state(|| None::<String>);
    let saved = use_state(|| false);
    let autostart = use_state(|| None::<bool>);
    let busy = use_state(|| false);

    // Load once, then follow the status.
    {
        let (hardware, status, limits, error, autostart) = (
            hardware.clone(),
            status.clone(),
            limits.clone(),
            error.clone(),
            autostart.clone(),
        );
        use_effect_with((), move |_| {
            let s = status.clone();
            wasm_bindgen_futures::spawn_local(async move {
                match call::<Hardware>(WindowCommand::Detect).await {
                    Ok(h) => hardware.set(Some(h)),
                    Err(e) => error.set(Some(e)),
                }
                if let Ok(l) = call::<Limits>(WindowCommand::Limits).await {
                    limits.set(Some(l));
                }
                if let Ok(on) = call::<bool>(WindowCommand::Autostart).await {
                    autostart.set(Some(on));
                }
                if let Ok(st) = call::<Status>(WindowCommand::Status).await {
                    s.set(Some(st));
                }
            });
            let poll = gloo_timers::callback::Interval::new(POLL_MS, move || {
                let status = status.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    if let Ok(st) = call::<Status>(WindowCommand::Status).await {
                        status.set(Some(st));
                    }
                });
            });
            move || drop(poll)
        });
    }

    // A command that answers with the status.
    let act = {
        let (status, error, busy) = (status.clone(), error.clone(), busy.clone());
        Callback::from(move |cmd: WindowCommand| {
            let (status, error, busy) = (status.clone(), error.clone(), busy.clone());
            busy.set(true);
            wasm_bindgen_futures::spawn_local(async move {
                match call::<Status>(cmd).await {
                    Ok(s) => {
                        status.set(Some(s));
                        error.set(None);
                    }
                    Err(e) => error.set(Some(e)),
                }
                busy.set(false);
            });
        })
    };

    // New caps or rules: saved and applied by the shell; on refusal the page shows why and what is stored.
    let set_limits = {
        let (limits, error, saved) = (limits.clone(), error.clone(), saved.clone());
        Callback::from(move |l: Limits| {
            let (limits, error, saved) = (limits.clone(), error.clone(), saved.clone());
            limits.set(Some(l.clone()));
            wasm_bindgen_futures::spawn_local(async move {
                match call::<Limits>(WindowCommand::SetLimits(l)).await {
                    Ok(stored) => {
                        limits.set(Some(stored));
                        error.set(None);
                        saved.set(true);
                    }
                    Err(e) => {
                        error.set(Some(e));
                        saved.set(false);
                        if let Ok(stored) = call::<Limits>(WindowCommand::Limits).await {
                            limits.set(Some(stored));
                        }
                    }
                }
            });
        })
    };

    let set_autostart = {
        let (autostart, error) = (autostart.clone(), error.clone());
        Callback::from(move |e: Event| {
            let on = e.target_unchecked_into::<HtmlInputElement>().checked();
            let (autostart, error) = (autostart.clone(), error.clone());
            wasm_bindgen_futures::spawn_local(async move {
                match call::<bool>(WindowCommand::SetAutostart(on)).await {
                    Ok(now) => autostart.set(Some(now)),
                    Err(e) => error.set(Some(e)),
                }
            });
        })
    };

    let state = status.as_ref().map_or(DonorState::Stopped, |s| s.state);
    let body = if state == DonorState::Stopped {
        first_run(hardware.as_ref(), act.clone(), *busy)
    } else {
        status
            .as_ref()
            .map(|s| dashboard(s, act.clone(), *busy))
            .unwrap_or_default()
    };
    html! {
        <main>
            <header>
                <h1>{ "Commons" }</h1>
                <span id="state" class={classes!("state", format!("state-{}", state.as_str()))}>
                    { words::state_label(state) }
                </span>
                if let Some(s) = status.as_ref() {
                    <p id="summary" class="summary">{ &s.summary }</p>
                }
            </header>
            { problem(status.as_ref(), act.clone()) }
            if let Some(s) = status.as_ref() {
                { update(&s.update, act.clone()) }
            }
            if let Some(e) = error.as_ref() {
                <p id="error" class="error" role="alert">{ e }</p>
            }
            { body }
            if let Some(l) = limits.as_ref() {
                { caps(l, hardware.as_ref(), set_limits, *saved) }
            }
            if let Some(on) = *autostart {
                <label class="check"><input id="autostart" type="checkbox" checked={on} onchange={set_autostart} />
                    { "Start Commons when I log in" }</label>
            }
        </main>
    }
}

/// What to fix, with Retry: the container engine missing, the coordinator refusing.
fn problem(status: Option<&Status>, act: Callback<WindowCommand>) -> Html {
    let Some(s) = status else {
        return Html::default();
    };
    let text = match (&s.problem, s.state, &s.reason) {
        (_, DonorState::Error, Some(why)) => {
            format!("{why}. Check the address under Advanced, then press Retry.")
        }
        (Some(p), _, _) => p.clone(),
        _ => return Html::default(),
    };
    let retry = act.reform(|_: MouseEvent| WindowCommand::Retry);
    html! {
        <div id="problem" class="problem" role="alert">
            <p>{ text }</p>
            <button id="retry" onclick={retry}>{ "Retry" }</button>
        </div>
    }
}

/// The app's update: available (being fetched and checked), Restart to finish, the package to install, or why it
/// failed; otherwise the running version.
fn update(u: &UpdateView, act: Callback<WindowCommand>) -> Html {
    let v = u.version.clone().unwrap_or_default();
    match u.phase {
        UpdatePhase::UpToDate => html! {
            <p id="update" class="muted">{ format!("Commons {}", u.running) }</p>
        },
        UpdatePhase::Updating => html! {
            <p id="update" class="notice">{ format!("Update available: {v}. Updating…") }</p>
        },
        UpdatePhase::Restart => {
            let restart = act.reform(|_: MouseEvent| WindowCommand::RestartToUpdate);
            html! {
                <div id="update" class="notice">
                    <p>{ format!("Commons {v} is ready. ") }{ u.detail.clone().unwrap_or_default() }</p>
                    <button id="restart-update" class="primary" onclick={restart}>{ "Restart to finish" }</button>
                </div>
            }
        }
        UpdatePhase::Package => html! {
            <div id="update" class="notice">
                <p>{ format!("Commons {v} is out. This copy was installed by the system's package manager: install the new package.") }</p>
                if let Some(url) = u.detail.clone().filter(|d| d.starts_with("http")) {
                    <a id="update-package" href={url.clone()} target="_blank">{ url }</a>
                }
            </div>
        },
        UpdatePhase::Failed => html! {
            <p id="update" class="problem">{ format!("The update to {v} did not install ({}); Commons {} keeps running.", u.detail.clone().unwrap_or_default(), u.running) }</p>
        },
    }
}

/// First run: what this computer has, and one button.
fn first_run(hardware: Option<&Hardware>, act: Callback<WindowCommand>, busy: bool) -> Html {
    let coordinator = NodeRef::default();
    let token = NodeRef::default();
    let start = {
        let (coordinator, token) = (coordinator.clone(), token.clone());
        act.reform(move |_: MouseEvent| {
            let value = |r: &NodeRef| {
                r.cast::<HtmlInputElement>()
                    .map(|i| i.value().trim().to_owned())
                    .filter(|v| !v.is_empty())
            };
            WindowCommand::StartDonating {
                coordinator: value(&coordinator),
                enrollment_token: value(&token),
            }
        })
    };
    html! {
        <section class="first-run">
            <h2>{ "This computer" }</h2>
            { hardware.map(hardware_list).unwrap_or_else(|| html! { <p>{ "Detecting…" }</p> }) }
            <button id="start" class="primary" onclick={start} disabled={busy}>{ "Start donating" }</button>
            <details id="advanced">
                <summary>{ "Advanced" }</summary>
                <label>{ "Coordinator or edge URL" }
                    <input id="coordinator" type="url" maxlength="256"
                        placeholder="https://… (empty: the project's edge)" ref={coordinator} />
                </label>
                <label>{ "Enrollment token (if your group gave you one)" }
                    <input id="token" type="text" maxlength="256" ref={token} />
                </label>
            </details>
        </section>
    }
}

fn hardware_list(h: &Hardware) -> Html {
    let c = &h.capabilities;
    html! {
        <ul id="hardware" class="hardware">
            <li>{ format!("CPU: {} — {} cores, {} threads", c.cpu.brand, c.cpu.cores, c.cpu.threads) }</li>
            <li>{ format!("Memory: {}", binary(c.memory_bytes)) }</li>
            { for c.disks.iter().map(|d| html! {
                <li>{ format!("Disk {}: {} free of {}", d.mount, binary(d.free_bytes), binary(d.total_bytes)) }</li>
            }) }
            { for c.gpus.iter().map(|g| html! {
                <li>{ format!("GPU {}: {} ({})", g.index, g.name, binary(g.vram_bytes)) }</li>
            }) }
            if c.gpus.is_empty() {
                <li class="muted">{ format!("GPU: none found{}", h.no_gpu.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()) }</li>
            }
        </ul>
    }
}

/// Donating (or paused): what runs, where, for how long, and the pause controls.
fn dashboard(s: &Status, act: Callback<WindowCommand>, busy: bool) -> Html {
    let paused = s.state == DonorState::Paused;
    let toggle = if paused {
        act.reform(|_: MouseEvent| WindowCommand::Resume)
    } else {
        act.reform(|_: MouseEvent| WindowCommand::Pause { minutes: None })
    };
    let hour = act.reform(|_: MouseEvent| WindowCommand::Pause { minutes: Some(60) });
    html! {
        <section class="dashboard">
            <div class="actions">
                <button id="toggle" class="primary" onclick={toggle} disabled={busy || s.state == DonorState::Error}>
                    { if paused { "Resume" } else { "Pause" } }
                </button>
                if !paused {
                    <button id="pause-hour" onclick={hour} disabled={busy}>{ "Pause for 1 hour" }</button>
                }
            </div>
            if let Some(why) = &s.held {
                <p id="held" class="muted">{ format!("Held back: {why}.") }</p>
            }
            if let Some(until) = &s.paused_until {
                <p class="muted">{ format!("Paused until {}.", until.get(11..16).unwrap_or(until)) }</p>
            }
            if let Some(c) = &s.contribution {
                <p id="contribution" class="contribution">{ c }</p>
            }
            <dl class="figures">
                <dt>{ "Tier" }</dt><dd id="tier">{ s.tier.map_or("—".into(), |t| t.to_string()) }</dd>
                <dt>{ "Uptime" }</dt><dd id="uptime">{ s.uptime_secs.map_or("—".into(), words::duration) }</dd>
                <dt>{ "Donated" }</dt><dd id="donated">{ words::hours(s.donated_secs) }</dd>
                <dt>{ "Coordinator" }</dt><dd>{ s.coordinator_url.clone().unwrap_or_else(|| "—".into()) }</dd>
                if let Some(r) = &s.reached {
                    <dt>{ "Reached" }</dt><dd id="reached">{ r }</dd>
                } else if let Some(e) = &s.endpoint {
                    <dt>{ "Reached at" }</dt><dd id="endpoint">{ e }</dd>
                }
                if let Some(n) = s.dht_peers {
                    <dt>{ "DHT peers" }</dt><dd id="dht-peers">{ n }</dd>
                }
            </dl>
            <h2>{ "Services" }</h2>
            if s.containers.is_empty() {
                <p class="muted">{ "No service assigned yet: the coordinator assigns them when they are needed." }</p>
            } else {
                <ul id="services" class="services">{ for s.containers.iter().map(container) }</ul>
            }
            if let Some(who) = &s.catalogue {
                <p id="catalogue" class="muted">{ format!("What runs here is decided by {who}.") }</p>
            }
        </section>
    }
}

/// A number field's value (0 when not a number: the shell refuses it in words).
fn number(i: &HtmlInputElement) -> u64 {
    i.value().trim().parse().unwrap_or(0)
}

fn container(c: &ContainerRow) -> Html {
    let pulling = c.state == ContainerState::Pulling;
    html! {
        <li class={classes!("service", format!("c-{}", c.state.as_str()))}>
            <span class="name">{ &c.service }</span>
            <span class="cstate">{ c.state.as_str() }</span>
            if pulling {
                <progress max="100" value={words::percent(c.pulled_bytes, c.pull_total_bytes).to_string()}
                    title={format!("{} of {}", binary(c.pulled_bytes), binary(c.pull_total_bytes))} />
            }
            <span class="image muted">{ &c.image }</span>
        </li>
    }
}

/// The caps and rules, applied as they change.
fn caps(l: &Limits, hardware: Option<&Hardware>, set: Callback<Limits>, saved: bool) -> Html {
    // One control: read the input, change a copy of the limits, send it.
    let on = |f: fn(&mut Limits, &HtmlInputElement)| {
        let (l, set) = (l.clone(), set.clone());
        Callback::from(move |e: Event| {
            let input: HtmlInputElement = e.target_unchecked_into();
            let mut next = l.clone();
            f(&mut next, &input);
            set.emit(next);
        })
    };
    let gpus = hardware
        .map(|h| h.capabilities.gpus.clone())
        .unwrap_or_default();
    let gpu_boxes = gpus.iter().map(|g| {
        let index = g.index;
        let chosen = l.gpus.as_ref().is_none_or(|v| v.contains(&index));
        let (l, set) = (l.clone(), set.clone());
        let all: Vec<u32> = gpus.iter().map(|g| g.index).collect();
        let toggle = Callback::from(move |e: Event| {
            let on = e.target_unchecked_into::<HtmlInputElement>().checked();
            let mut next = l.clone();
            let mut list = next.gpus.clone().unwrap_or_else(|| all.clone());
            list.retain(|&i| i != index);
            if on {
                list.push(index);
                list.sort_unstable();
            }
            next.gpus = if list.len() == all.len() { None } else { Some(list) };
            set.emit(next);
        });
        html! {
            <label class="check"><input type="checkbox" class="gpu" checked={chosen} onchange={toggle} />
                { format!("GPU {}: {}", g.index, g.name) }</label>
        }
    });
    html! {
        <section id="caps" class="caps">
            <h2>{ "What Commons may use" }
                if saved { <span id="saved" class="muted">{ " — saved, applied now" }</span> }
            </h2>
            <label>{ format!("CPU: {} % of all cores", l.cpu_percent) }
                <input id="cpu_percent" type="range" min="5" max="100" step="5" value={l.cpu_percent.to_string()}
                    onchange={on(|l, i| l.cpu_percent = i.value().parse().unwrap_or(l.cpu_percent))} />
            </label>
            <label>{ "Memory per service (MiB)" }
                <input id="memory_mb" type="number" min="64" step="256" value={l.memory_mb.to_string()}
                    onchange={on(|l, i| l.memory_mb = number(i))} />
            </label>
            <label>{ "Disk per service (MiB)" }
                <input id="scratch_mb" type="number" min="16" step="256" value={l.scratch_mb.to_string()}
                    onchange={on(|l, i| l.scratch_mb = number(i))} />
            </label>
            <label>{ "Disk for AI models (MiB)" }
                <input id="models_disk_mb" type="number" min="256" step="1024" value={l.models_disk_mb.to_string()}
                    onchange={on(|l, i| l.models_disk_mb = number(i))} />
            </label>
            <label class="check"><input id="allow_gpu" type="checkbox" checked={l.allow_gpu}
                onchange={on(|l, i| l.allow_gpu = i.checked())} />{ "Let services use the GPU" }</label>
            <label>{ format!("GPU: at most {} % of its time", l.gpu_percent) }
                <input id="gpu_percent" type="range" min="10" max="100" step="10" value={l.gpu_percent.to_string()}
                    onchange={on(|l, i| l.gpu_percent = i.value().parse().unwrap_or(l.gpu_percent))} />
            </label>
            { for gpu_boxes }
            <label>{ "Pause when a GPU is hotter than (°C)" }
                <input id="max_gpu_temp_c" type="number" min="40" max="100" value={l.max_gpu_temp_c.to_string()}
                    onchange={on(|l, i| l.max_gpu_temp_c = number(i) as u32)} />
            </label>
            <label class="check"><input id="idle_only" type="checkbox" checked={l.idle_only}
                onchange={on(|l, i| l.idle_only = i.checked())} />{ "Only while I am away (no keyboard or mouse)" }</label>
            <label class="check"><input id="on_ac_power_only" type="checkbox" checked={l.on_ac_power_only}
                onchange={on(|l, i| l.on_ac_power_only = i.checked())} />{ "Only on mains power" }</label>
            <label>{ "Your name on the volunteers' leaderboard (empty: anonymous)" }
                <input id="display_name" type="text" maxlength="40" value={l.display_name.clone().unwrap_or_default()}
                    onchange={on(|l, i| l.display_name = Some(i.value()).filter(|v| !v.trim().is_empty()))} />
            </label>
            <label>{ "Only at these times (e.g. 22:00-07:00, 12:00-13:00; empty: always)" }
                <input id="schedule" type="text" maxlength="200" value={words::show_windows(&l.schedule)}
                    onchange={on(|l, i| l.schedule = words::parse_windows(&i.value()))} />
            </label>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commons_shared::caps::{Capabilities, Cpu};

    fn render(f: impl FnOnce() -> Html + 'static) -> String {
        #[derive(Properties)]
        struct P {
            f: std::cell::RefCell<Option<Box<dyn FnOnce() -> Html>>>,
        }
        impl PartialEq for P {
            fn eq(&self, _: &Self) -> bool {
                false
            }
        }
        #[function_component]
        fn Host(p: &P) -> Html {
            p.f.borrow_mut().take().map(|f| f()).unwrap_or_default()
        }
        let props = P {
            f: std::cell::RefCell::new(Some(Box::new(f))),
        };
        futures::executor::block_on(
            yew::LocalServerRenderer::<Host>::with_props(props)
                .hydratable(false)
                .render(),
        )
    }

    fn status(state: DonorState) -> Status {
        Status {
            state,
            reason: None,
            worker_id: Some("ab".into()),
            coordinator_url: Some("http://127.0.0.1:8080".into()),
            summary: "Donating: 8 cores".into(),
            paused_until: None,
            tier: Some(2),
            containers: vec![ContainerRow {
                name: "commons-ocr".into(),
                service: "ocr".into(),
                image: "commons/ocr:1".into(),
                state: ContainerState::Pulling,
                pulled_bytes: 30,
                pull_total_bytes: 120,
            }],
            endpoint: Some("https://x.trycloudflare.com".into()),
            reached: None,
            dht_peers: Some(4),
            held: None,
            problem: None,
            uptime_secs: Some(3700),
            donated_secs: 5400,
            update: Default::default(),
            catalogue: Some(
                "the coordinator's catalogue, signed by the Commons release key".into(),
            ),
            contribution: Some(
                "Today you served 12 OCR pages; 1.5 hours donated this week.".into(),
            ),
        }
    }

    #[test]
    fn the_first_run_lists_the_hardware_and_one_button() {
        let h = Hardware {
            capabilities: Capabilities {
                cpu: Cpu {
                    brand: "Ryzen 7".into(),
                    cores: 8,
                    threads: 16,
                    ..Default::default()
                },
                memory_bytes: 16 << 30,
                ..Default::default()
            },
            no_gpu: Some("no NVIDIA driver".into()),
        };
        let html = render(move || first_run(Some(&h), Callback::noop(), false));
        assert!(
            html.contains("CPU: Ryzen 7 — 8 cores, 16 threads"),
            "{html}"
        );
        assert!(html.contains("Memory: 16.0 GiB"), "{html}");
        assert!(
            html.contains("GPU: none found (no NVIDIA driver)"),
            "{html}"
        );
        assert!(html.contains(r#"id="start""#) && html.contains("Start donating"));
        assert!(html.contains(r#"id="coordinator""#) && html.contains(r#"id="token""#));
    }

    #[test]
    fn the_dashboard_shows_pull_progress_and_the_figures() {
        let html = render(|| dashboard(&status(DonorState::Active), Callback::noop(), false));
        assert!(
            html.contains(r#"title="30 B of 120 B" value="25""#),
            "{html}"
        );
        assert!(html.contains(">Pause<"), "{html}");
        assert!(
            html.contains("Today you served 12 OCR pages; 1.5 hours donated this week."),
            "{html}"
        );
        assert!(
            html.contains("1 h 1 min") && html.contains("1.5 h"),
            "{html}"
        );
        assert!(html.contains("x.trycloudflare.com") && html.contains(r#"id="dht-peers""#));
        // Once the agent says how it is reached, the window says that instead of an address.
        let reached = Status {
            reached: Some("over this computer's own connection to the coordinator".into()),
            ..status(DonorState::Active)
        };
        let words = render(move || dashboard(&reached, Callback::noop(), false));
        assert!(
            words.contains(r#"id="reached""#) && !words.contains("x.trycloudflare.com"),
            "{words}"
        );
        assert!(
            html.contains(
                "decided by the coordinator&#x27;s catalogue, signed by the Commons release key"
            ) || html.contains(
                "decided by the coordinator's catalogue, signed by the Commons release key"
            ),
            "who signed what runs: {html}"
        );
        let html = render(|| dashboard(&status(DonorState::Paused), Callback::noop(), false));
        assert!(
            html.contains(">Resume<") && !html.contains("pause-hour"),
            "{html}"
        );
    }

    #[test]
    fn problems_say_the_next_step_with_retry() {
        let mut s = status(DonorState::Active);
        s.problem = Some(
            "Docker is not running — start Docker Desktop or install docker.io, then press Retry."
                .into(),
        );
        let html = render(move || problem(Some(&s), Callback::noop()));
        assert!(
            html.contains("install docker.io") && html.contains(r#"id="retry""#),
            "{html}"
        );
        let html = render(|| problem(Some(&status(DonorState::Active)), Callback::noop()));
        assert!(html.is_empty(), "{html}");
    }

    #[test]
    fn an_update_ready_offers_restart_and_a_package_install_links_the_package() {
        let mut u = UpdateView {
            running: "0.1.0".into(),
            phase: UpdatePhase::Restart,
            version: Some("0.1.1".into()),
            detail: Some("Faster OCR.".into()),
        };
        let v = u.clone();
        let html = render(move || update(&v, Callback::noop()));
        assert!(
            html.contains("Commons 0.1.1 is ready") && html.contains(r#"id="restart-update""#),
            "{html}"
        );
        u.phase = UpdatePhase::Package;
        u.detail = Some("http://c.example/releases/commons-desktop-0.1.1-linux-x86_64.deb".into());
        let html = render(move || update(&u, Callback::noop()));
        assert!(
            html.contains(
                r#"href="http://c.example/releases/commons-desktop-0.1.1-linux-x86_64.deb""#
            ) && !html.contains("restart-update"),
            "{html}"
        );
    }
}
