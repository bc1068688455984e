//! The topology: a force-directed SVG graph of edge → coordinators → workers (and DHT links), live.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::rc::Rc;

use commons_shared::api::WorkerStatus;
use commons_shared::dht::{LinkKind, NodeRole};
use gloo_render::{AnimationFrame, request_animation_frame};
use wasm_bindgen::JsCast;
use web_sys::{HtmlInputElement, HtmlSelectElement};
use yew::prelude::*;

use crate::app::Live;
use crate::components::Empty;
use crate::layout::Layout;
use crate::view::{Filter, Route, choices, colour, export_json, link_width, radius};

/// At most this many layout ticks per animation frame...
const MAX_TICKS_PER_FRAME: u32 = 4;
/// ...and no more after this many milliseconds of them (at least one tick a frame).
const TICK_BUDGET_MS: f64 = 6.0;

/// Timings the benchmark reads from `window.__commons`.
#[derive(Debug, Default)]
struct Timing {
    /// When the graph was first drawn with every node laid out (ms since the page's navigation).
    first_render_ms: Option<f64>,
    /// When the current settling began.
    settle_start_ms: Option<f64>,
    /// Frames drawn since then.
    frames: u32,
    /// Time in layout ticks since then, ms.
    tick_ms: f64,
    /// Time moving elements since then, ms.
    paint_ms: f64,
}

fn now_ms() -> f64 {
    gloo_utils::window().performance().map_or(0.0, |p| p.now())
}

fn publish(key: &str, value: f64) {
    let w = gloo_utils::window();
    let obj = js_sys::Reflect::get(&w, &"__commons".into())
        .ok()
        .filter(|v| v.is_object())
        .unwrap_or_else(|| {
            let o: wasm_bindgen::JsValue = js_sys::Object::new().into();
            let _ = js_sys::Reflect::set(&w, &"__commons".into(), &o);
            o
        });
    let _ = js_sys::Reflect::set(&obj, &key.into(), &value.into());
}

/// The drawn elements the animation moves directly, without a Yew render per frame: each node's circle by id, and
/// each link path with the pairs of node ids it draws.
#[derive(Debug, Default)]
struct Painted {
    svg: Option<web_sys::Element>,
    circles: Vec<(web_sys::Element, String)>,
    links: Vec<(web_sys::Element, Vec<(String, String)>)>,
}

/// The `d` of a path drawing these links.
fn links_path(layout: &Layout, pairs: &[(String, String)]) -> String {
    let mut d = String::with_capacity(pairs.len() * 28);
    for (a, b) in pairs {
        if let (Some(p), Some(q)) = (layout.position(a), layout.position(b)) {
            let _ = write!(d, "M{:.1},{:.1}L{:.1},{:.1}", p.0, p.1, q.0, q.1);
        }
    }
    d
}

/// The SVG's view box: the layout's bounds with a margin.
fn view_box(layout: &Layout) -> String {
    let (x, y, w, h) = layout.bounds();
    let pad = 30.0;
    format!(
        "{} {} {} {}",
        x - pad,
        y - pad,
        w + 2.0 * pad,
        h + 2.0 * pad
    )
}

/// Moves the drawn circles and links to the layout's positions, and fits the view to them.
fn paint(layout: &Layout, painted: &Painted) {
    if let Some(svg) = &painted.svg {
        let _ = svg.set_attribute("viewBox", &view_box(layout));
    }
    let mut buf = String::new();
    for (el, id) in &painted.circles {
        if let Some((x, y)) = layout.position(id) {
            buf.clear();
            let _ = write!(buf, "{x:.1}");
            let _ = el.set_attribute("cx", &buf);
            buf.clear();
            let _ = write!(buf, "{y:.1}");
            let _ = el.set_attribute("cy", &buf);
        }
    }
    for (el, pairs) in &painted.links {
        let _ = el.set_attribute("d", &links_path(layout, pairs));
    }
}

/// Runs the layout one animation frame at a time until it settles: as many ticks as fit in a few milliseconds, then
/// the drawn elements move.
fn animate(
    layout: Rc<RefCell<Layout>>,
    painted: Rc<RefCell<Painted>>,
    slot: Rc<RefCell<Option<AnimationFrame>>>,
    timing: Rc<RefCell<Timing>>,
) {
    let next = slot.clone();
    let handle = request_animation_frame(move |_| {
        let start = now_ms();
        let moving = {
            let mut l = layout.borrow_mut();
            let mut moving = l.tick();
            let mut ticks = 1;
            while moving && ticks < MAX_TICKS_PER_FRAME && now_ms() - start < TICK_BUDGET_MS {
                moving = l.tick();
                ticks += 1;
            }
            let t1 = now_ms();
            paint(&l, &painted.borrow());
            let t2 = now_ms();
            let mut t = timing.borrow_mut();
            t.tick_ms += t1 - start;
            t.paint_ms += t2 - t1;
            moving
        };
        let mut t = timing.borrow_mut();
        t.frames += 1;
        let n = layout.borrow().len();
        if n > 0 && t.first_render_ms.is_none() && painted.borrow().circles.len() == n {
            let ms = now_ms();
            t.first_render_ms = Some(ms);
            publish("topology_first_render_ms", ms);
            publish("topology_nodes", n as f64);
        }
        if moving {
            drop(t);
            animate(layout, painted, next, timing);
        } else if let Some(start) = t.settle_start_ms.take() {
            let secs = (now_ms() - start) / 1000.0;
            publish("settle_nodes", n as f64);
            publish("settle_ms", secs * 1000.0);
            publish("settle_frames", f64::from(t.frames));
            publish("settle_fps", f64::from(t.frames) / secs.max(1e-3));
            publish("settle_tick_ms", t.tick_ms);
            publish("settle_paint_ms", t.paint_ms);
            t.frames = 0;
            t.tick_ms = 0.0;
            t.paint_ms = 0.0;
        }
    });
    *slot.borrow_mut() = Some(handle);
}

fn download(name: &str, mime: &str, data: &str) {
    let parts = js_sys::Array::of1(&data.into());
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let Ok(blob) = web_sys::Blob::new_with_str_sequence_and_options(&parts, &opts) else {
        return;
    };
    if let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob) {
        click_link(name, &url);
        let _ = web_sys::Url::revoke_object_url(&url);
    }
}

fn click_link(name: &str, url: &str) {
    let doc = gloo_utils::document();
    if let Ok(a) = doc.create_element("a") {
        let a: web_sys::HtmlAnchorElement = a.unchecked_into();
        a.set_href(url);
        a.set_download(name);
        a.click();
    }
}

/// Draws the SVG onto a canvas and downloads it as PNG.
fn export_png(svg: &web_sys::Element) {
    let Ok(xml) = web_sys::XmlSerializer::new().and_then(|s| s.serialize_to_string(svg)) else {
        return;
    };
    let (w, h) = (
        svg.client_width().max(1) as u32,
        svg.client_height().max(1) as u32,
    );
    let src = format!(
        "data:image/svg+xml;charset=utf-8,{}",
        String::from(js_sys::encode_uri_component(&xml))
    );
    let Ok(img) = web_sys::HtmlImageElement::new() else {
        return;
    };
    let img2 = img.clone();
    let onload = wasm_bindgen::closure::Closure::once_into_js(move || {
        let doc = gloo_utils::document();
        let Some(canvas) = doc
            .create_element("canvas")
            .ok()
            .and_then(|c| c.dyn_into::<web_sys::HtmlCanvasElement>().ok())
        else {
            return;
        };
        canvas.set_width(w);
        canvas.set_height(h);
        let Some(ctx) = canvas
            .get_context("2d")
            .ok()
            .flatten()
            .and_then(|c| c.dyn_into::<web_sys::CanvasRenderingContext2d>().ok())
        else {
            return;
        };
        ctx.set_fill_style_str("#ffffff");
        ctx.fill_rect(0.0, 0.0, f64::from(w), f64::from(h));
        let _ = ctx.draw_image_with_html_image_element(&img2, 0.0, 0.0);
        if let Ok(url) = canvas.to_data_url_with_type("image/png") {
            click_link("commons-topology.png", &url);
        }
    });
    img.set_onload(Some(onload.unchecked_ref()));
    img.set_src(&src);
}

/// The graph with its filters, details, pan and zoom, and exports.
#[function_component]
pub fn Topology() -> Html {
    let live = use_context::<Live>().expect("inside the shell");
    let filter = use_state(Filter::default);
    let selected = use_state(|| None::<String>);
    // Pan (x, y) in px and zoom.
    let view = use_state(|| (0.0f64, 0.0f64, 1.0f64));
    let drag = use_mut_ref(|| None::<(i32, i32)>);
    let layout = use_mut_ref(Layout::new);
    let slot = use_mut_ref(|| None::<AnimationFrame>);
    let timing = use_mut_ref(Timing::default);
    let painted = use_mut_ref(Painted::default);
    let groups = use_mut_ref(Vec::<Vec<(String, String)>>::new);
    let svg_ref = use_node_ref();

    let visible = filter.apply(&live.topology);
    {
        let layout = layout.clone();
        let slot = slot.clone();
        let timing = timing.clone();
        let visible = visible.clone();
        let painted = painted.clone();
        use_effect_with((live.version, (*filter).clone()), move |_| {
            layout.borrow_mut().sync(&visible);
            {
                let mut t = timing.borrow_mut();
                if t.settle_start_ms.is_none() && !layout.borrow().is_empty() {
                    t.settle_start_ms = Some(now_ms());
                    t.frames = 0;
                }
            }
            animate(layout, painted, slot.clone(), timing);
            move || {
                slot.borrow_mut().take();
            }
        });
    }
    // After every render: the elements the animation moves.
    {
        let painted = painted.clone();
        let groups = groups.clone();
        let svg_ref = svg_ref.clone();
        use_effect(move || {
            let mut p = painted.borrow_mut();
            p.circles.clear();
            p.links.clear();
            let Some(svg) = svg_ref.cast::<web_sys::Element>() else {
                p.svg = None;
                return;
            };
            p.svg = Some(svg.clone());
            if let Ok(list) = svg.query_selector_all("circle.node") {
                for i in 0..list.length() {
                    if let Some(el) = list
                        .item(i)
                        .and_then(|n| n.dyn_into::<web_sys::Element>().ok())
                        && let Some(id) = el.get_attribute("data-id")
                    {
                        p.circles.push((el, id));
                    }
                }
            }
            if let Ok(list) = svg.query_selector_all("path.link") {
                let groups = groups.borrow();
                for i in 0..list.length() {
                    if let (Some(el), Some(pairs)) = (
                        list.item(i)
                            .and_then(|n| n.dyn_into::<web_sys::Element>().ok()),
                        groups.get(i as usize),
                    ) {
                        p.links.push((el, pairs.clone()));
                    }
                }
            }
        });
    }

    let (services, statuses) = choices(&live.topology);
    let on_tier = {
        let filter = filter.clone();
        Callback::from(move |e: Event| {
            let v = e.target_unchecked_into::<HtmlSelectElement>().value();
            filter.set(Filter {
                tier: v.parse().ok(),
                ..(*filter).clone()
            });
        })
    };
    let on_service = {
        let filter = filter.clone();
        Callback::from(move |e: Event| {
            let v = e.target_unchecked_into::<HtmlSelectElement>().value();
            filter.set(Filter {
                service: Some(v).filter(|v| !v.is_empty()),
                ..(*filter).clone()
            });
        })
    };
    let on_status = {
        let filter = filter.clone();
        Callback::from(move |e: Event| {
            let v = e.target_unchecked_into::<HtmlSelectElement>().value();
            filter.set(Filter {
                status: WorkerStatus::parse(&v),
                ..(*filter).clone()
            });
        })
    };
    let on_search = {
        let filter = filter.clone();
        Callback::from(move |e: InputEvent| {
            let v = e.target_unchecked_into::<HtmlInputElement>().value();
            filter.set(Filter {
                search: v,
                ..(*filter).clone()
            });
        })
    };
    let on_json = {
        let layout = layout.clone();
        let visible = visible.clone();
        Callback::from(move |_: MouseEvent| {
            let l = layout.borrow();
            let json = export_json(&visible, |id| l.position(id));
            // Kept for tests and scripts, as well as downloaded.
            let _ = js_sys::Reflect::set(
                &gloo_utils::window(),
                &"__commonsExport".into(),
                &json.as_str().into(),
            );
            download("commons-topology.json", "application/json", &json);
        })
    };
    let on_png = {
        let svg_ref = svg_ref.clone();
        Callback::from(move |_: MouseEvent| {
            if let Some(svg) = svg_ref.cast::<web_sys::Element>() {
                export_png(&svg);
            }
        })
    };
    let on_wheel = {
        let view = view.clone();
        Callback::from(move |e: WheelEvent| {
            e.prevent_default();
            let (x, y, k) = *view;
            let k2 = (k * (1.0 - e.delta_y() * 0.001)).clamp(0.1, 10.0);
            view.set((x, y, k2));
        })
    };
    let on_down = {
        let drag = drag.clone();
        Callback::from(move |e: MouseEvent| *drag.borrow_mut() = Some((e.client_x(), e.client_y())))
    };
    let on_move = {
        let drag = drag.clone();
        let view = view.clone();
        Callback::from(move |e: MouseEvent| {
            let mut d = drag.borrow_mut();
            if let Some((x0, y0)) = *d {
                let (x, y, k) = *view;
                view.set((
                    x + f64::from(e.client_x() - x0),
                    y + f64::from(e.client_y() - y0),
                    k,
                ));
                *d = Some((e.client_x(), e.client_y()));
            }
        })
    };
    let on_up = {
        let drag = drag.clone();
        Callback::from(move |_: MouseEvent| *drag.borrow_mut() = None)
    };
    let on_reset = {
        let view = view.clone();
        Callback::from(move |_: MouseEvent| view.set((0.0, 0.0, 1.0)))
    };

    if live.topology.nodes.is_empty() {
        return html! { <><h1>{ "Topology" }</h1><Empty>{ "Waiting for the live feed…" }</Empty></> };
    }

    let l = layout.borrow();
    let view_box = view_box(&l);
    // Links as a few paths (by kind and width), not one element each: cheap to move every frame.
    let requests: HashMap<&str, u64> = visible
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.requests.unwrap_or(0)))
        .collect();
    let mut by_style: BTreeMap<(LinkKind, u32), Vec<(String, String)>> = BTreeMap::new();
    for e in &visible.edges {
        let traffic = if e.kind == LinkKind::Registered {
            requests.get(e.from.as_str()).copied().unwrap_or(0)
        } else {
            0
        };
        let w = (link_width(traffic) * 2.0).round() as u32;
        by_style
            .entry((e.kind, w))
            .or_default()
            .push((e.from.clone(), e.to.clone()));
    }
    let links = by_style
        .iter()
        .map(|((kind, w), pairs)| {
            html! { <path class={classes!("link", kind.as_str())} d={links_path(&l, pairs)} stroke-width={format!("{}", f64::from(*w) / 2.0)} /> }
        })
        .collect::<Html>();
    *groups.borrow_mut() = by_style.into_values().collect();
    let sel = (*selected).clone();
    let nodes = visible.nodes.iter().map(|n| {
        let (x, y) = l.position(&n.id).unwrap_or_default();
        let id = n.id.clone();
        let selected = selected.clone();
        let onclick = Callback::from(move |e: MouseEvent| {
            e.stop_propagation();
            selected.set(Some(id.clone()));
        });
        let is_sel = sel.as_deref() == Some(n.id.as_str());
        html! {
            <circle key={n.id.clone()} class={classes!("node", n.role.as_str(), is_sel.then_some("selected"))}
                data-id={n.id.clone()} data-role={n.role.as_str()} data-status={n.status.map_or("", WorkerStatus::as_str)}
                cx={format!("{x:.1}")} cy={format!("{y:.1}")} r={format!("{:.1}", radius(n))} fill={colour(n)} {onclick}>
                <title>{ format!("{} {}", n.role.as_str(), n.worker_id.as_deref().unwrap_or(&n.id)) }</title>
            </circle>
        }
    });
    let details = sel.as_ref().and_then(|id| live.topology.nodes.iter().find(|n| &n.id == id)).map(|n| {
        let close = {
            let selected = selected.clone();
            Callback::from(move |_: MouseEvent| selected.set(None))
        };
        html! {
            <aside class="details" id="node-details">
                <button class="close" onclick={close}>{ "×" }</button>
                <h2>{ n.role.as_str() }</h2>
                <dl class="facts">
                    <dt>{ "Id" }</dt><dd><code>{ n.id.clone() }</code></dd>
                    if let Some(w) = &n.worker_id { <dt>{ "Worker" }</dt><dd><a href={Route::Worker(w.clone()).href()}>{ w.clone() }</a></dd> }
                    if let Some(t) = n.tier { <dt>{ "Tier" }</dt><dd>{ t }</dd> }
                    if let Some(s) = n.status { <dt>{ "Status" }</dt><dd>{ s.as_str() }</dd> }
                    if !n.services.is_empty() { <dt>{ "Services" }</dt><dd>{ n.services.join(", ") }</dd> }
                    if let Some(l) = n.load { <dt>{ "Load" }</dt><dd>{ format!("{:.0} %", 100.0 * l) }</dd> }
                    if let Some(r) = n.requests { <dt>{ "Requests" }</dt><dd>{ r }</dd> }
                    if let Some(loc) = &n.location { <dt>{ "Region" }</dt><dd>{ loc.clone() }</dd> }
                </dl>
            </aside>
        }
    });
    let (px, py, k) = *view;
    let workers = visible
        .nodes
        .iter()
        .filter(|n| n.role == NodeRole::Worker)
        .count();
    html! {
        <>
            <h1>{ "Topology" }<small id="topology-count">{ format!(" {} nodes, {} workers shown", visible.nodes.len(), workers) }</small></h1>
            <div class="filters">
                <select id="filter-tier" onchange={on_tier}>
                    { for [("", "Every tier"), ("1", "Tier 1 (GPU)"), ("2", "Tier 2 (service)"), ("3", "Tier 3 (data)")].iter().map(|(v, label)| {
                        let on = filter.tier.map(|t| t.to_string()).unwrap_or_default() == *v;
                        html! { <option value={*v} selected={on}>{ *label }</option> }
                    }) }
                </select>
                <select id="filter-service" onchange={on_service}>
                    <option value="" selected={filter.service.is_none()}>{ "Every service" }</option>
                    { for services.iter().map(|s| html! {
                        <option key={s.clone()} value={s.clone()} selected={filter.service.as_ref() == Some(s)}>{ s.clone() }</option>
                    }) }
                </select>
                <select id="filter-status" onchange={on_status}>
                    <option value="" selected={filter.status.is_none()}>{ "Every status" }</option>
                    { for statuses.iter().map(|&s| html! {
                        <option key={s.as_str()} value={s.as_str()} selected={filter.status == Some(s)}>{ s.as_str() }</option>
                    }) }
                </select>
                <input id="filter-search" placeholder="Search by id" oninput={on_search} />
                <button id="export-json" onclick={on_json}>{ "Export JSON" }</button>
                <button id="export-png" onclick={on_png}>{ "Export PNG" }</button>
                <button onclick={on_reset}>{ "Reset view" }</button>
            </div>
            <div class="graph-wrap">
                <svg id="topology" ref={svg_ref} viewBox={view_box} preserveAspectRatio="xMidYMid meet"
                    xmlns="http://www.w3.org/2000/svg"
                    onwheel={on_wheel} onmousedown={on_down} onmousemove={on_move} onmouseup={on_up.clone()} onmouseleave={on_up}>
                    <g transform={format!("translate({px} {py}) scale({k})")}>
                        { links }
                        { for nodes }
                    </g>
                </svg>
                { for details }
            </div>
            <p class="legend">
                <span><i style="background:#202124"></i>{ "edge" }</span>
                <span><i style="background:#7b1fa2"></i>{ "coordinator" }</span>
                <span><i style="background:#d93025"></i>{ "tier 1 (GPU)" }</span>
                <span><i style="background:#1a73e8"></i>{ "tier 2 (service)" }</span>
                <span><i style="background:#188038"></i>{ "tier 3 (data)" }</span>
                <span><i style="background:#9aa0a6"></i>{ "stale / offline" }</span>
                <span><i class="line" style="border-color:#bdc1c6"></i>{ "registered" }</span>
                <span><i class="line" style="border-color:#f9ab00;border-top-style:dashed"></i>{ "DHT link" }</span>
                <span><i class="line" style="border-color:#d93025;border-top-style:dotted"></i>{ "relayed (through this coordinator's relay)" }</span>
                { " Size: capacity. Link width: requests. Drag to pan, wheel to zoom, click a node for details." }
            </p>
        </>
    }
}
