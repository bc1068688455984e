//! The app: the login gate, the shell with its navigation, the live feed, and the page for the route.

use std::cell::Cell;
use std::rc::Rc;

use commons_shared::portal::{LiveMessage, Session};
use futures::StreamExt;
use gloo_net::websocket::Message;
use gloo_net::websocket::futures::WebSocket;
use yew::prelude::*;

use crate::api::{self, ApiError};
use crate::pages;
use crate::state::{Action, Feed, LiveState};
use crate::view::Route;

/// The live state, for every page.
pub type Live = UseReducerHandle<LiveState>;

/// Whether the browser holds a session.
#[derive(Debug, Clone, PartialEq)]
enum Gate {
    Checking,
    Out(Option<String>),
    In(Session),
}

/// The root component.
#[function_component]
pub fn App() -> Html {
    let gate = use_state(|| Gate::Checking);
    {
        let gate = gate.clone();
        use_effect_with((), move |_| {
            wasm_bindgen_futures::spawn_local(async move {
                gate.set(match api::get::<Session>("/api/admin/session").await {
                    Ok(s) => Gate::In(s),
                    Err(ApiError::LoggedOut(_)) => Gate::Out(None),
                    Err(e) => Gate::Out(Some(e.to_string())),
                });
            });
        });
    }
    let on_login = {
        let gate = gate.clone();
        Callback::from(move |s: Session| gate.set(Gate::In(s)))
    };
    let on_logout = {
        let gate = gate.clone();
        Callback::from(move |why: Option<String>| gate.set(Gate::Out(why)))
    };
    match &*gate {
        Gate::Checking => html! { <main class="center"><crate::components::Loading /></main> },
        Gate::Out(why) => {
            html! { <pages::login::Login on_login={on_login} notice={why.clone()} /> }
        }
        Gate::In(s) => html! { <Shell session={s.clone()} on_logout={on_logout} /> },
    }
}

fn current_route() -> Route {
    Route::parse(&gloo_utils::window().location().hash().unwrap_or_default())
}

/// Props of [`Shell`].
#[derive(Debug, Properties, PartialEq)]
pub struct ShellProps {
    /// The session.
    pub session: Session,
    /// Called after logging out (with a reason when the session ended by itself).
    pub on_logout: Callback<Option<String>>,
}

/// Navigation, the live feed and the current page.
#[function_component]
pub fn Shell(p: &ShellProps) -> Html {
    let live = use_reducer(LiveState::default);
    let route = use_state(current_route);
    {
        let route = route.clone();
        use_effect_with((), move |_| {
            let listener =
                gloo_events::EventListener::new(&gloo_utils::window(), "hashchange", move |_| {
                    route.set(current_route());
                });
            move || drop(listener)
        });
    }
    {
        let live = live.clone();
        let on_logout = p.on_logout.clone();
        use_effect_with((), move |_| {
            let running = Rc::new(Cell::new(true));
            wasm_bindgen_futures::spawn_local(run_feed(live, running.clone(), on_logout));
            move || running.set(false)
        });
    }
    let logout = {
        let on_logout = p.on_logout.clone();
        let live = live.clone();
        Callback::from(move |_: MouseEvent| {
            let on_logout = on_logout.clone();
            let live = live.clone();
            wasm_bindgen_futures::spawn_local(async move {
                let _ =
                    api::post::<_, serde_json::Value>("/api/admin/logout", &serde_json::json!({}))
                        .await;
                live.dispatch(Action::Reset);
                on_logout.emit(None);
            });
        })
    };
    let tabs = [
        (Route::Overview, "Overview"),
        (Route::Topology, "Topology"),
        (Route::Workers, "Workers"),
        (Route::Services, "Services"),
        (Route::Coordinators, "Coordinators"),
        (Route::Consumers, "Consumers"),
        (Route::Volunteers, "Volunteers"),
        (Route::Downloads, "Downloads"),
    ];
    let active = match &*route {
        Route::Worker(_) => Route::Workers,
        r => r.clone(),
    };
    let feed = match &live.feed {
        Feed::Connecting => html! { <span class="feed connecting">{ "connecting…" }</span> },
        Feed::Live => html! { <span class="feed live" id="feed-live">{ "live" }</span> },
        Feed::Lost(why) => {
            html! { <span class="feed lost" title={why.clone()}>{ "reconnecting…" }</span> }
        }
    };
    let page = match &*route {
        Route::Overview => html! { <pages::overview::Overview /> },
        Route::Topology => html! { <pages::topology::Topology /> },
        Route::Workers => html! { <pages::workers::Workers /> },
        Route::Worker(id) => html! { <pages::workers::WorkerDetail id={id.clone()} /> },
        Route::Services => html! { <pages::services::Services /> },
        Route::Coordinators => html! { <pages::services::Coordinators /> },
        Route::Downloads => html! { <pages::services::Downloads /> },
        Route::Consumers => html! { <pages::consumers::Consumers /> },
        Route::Volunteers => html! { <pages::volunteers::Volunteers /> },
    };
    html! {
        <ContextProvider<Live> context={live}>
            <header>
                <span class="brand">{ "Commons" }</span>
                <nav>
                    { for tabs.iter().map(|(r, name)| html! {
                        <a href={r.href()} class={classes!((*r == active).then_some("active"))}>{ *name }</a>
                    }) }
                </nav>
                <span class="who">{ p.session.coordinator.clone() }</span>
                { feed }
                <button id="logout" onclick={logout}>{ "Log out" }</button>
            </header>
            <main>{ page }</main>
        </ContextProvider<Live>>
    }
}

fn feed_url() -> String {
    let loc = gloo_utils::window().location();
    let scheme = if loc.protocol().unwrap_or_default() == "https:" {
        "wss"
    } else {
        "ws"
    };
    format!(
        "{scheme}://{}/api/admin/live",
        loc.host().unwrap_or_default()
    )
}

/// Keeps the live feed open while the shell is shown: reconnects after 2 s when it drops.
async fn run_feed(live: Live, running: Rc<Cell<bool>>, on_logout: Callback<Option<String>>) {
    while running.get() {
        match WebSocket::open(&feed_url()) {
            Ok(mut ws) => {
                while let Some(msg) = ws.next().await {
                    if !running.get() {
                        return;
                    }
                    let text = match msg {
                        Ok(Message::Text(t)) => t,
                        Ok(Message::Bytes(_)) => continue,
                        Err(e) => {
                            live.dispatch(Action::Feed(Feed::Lost(e.to_string())));
                            break;
                        }
                    };
                    match serde_json::from_str::<LiveMessage>(&text) {
                        Ok(m) => live.dispatch(Action::Message(Box::new(m), js_sys::Date::now())),
                        Err(e) => gloo_console::warn!(format!("unreadable live message: {e}")),
                    }
                }
                live.dispatch(Action::Feed(Feed::Lost("the live feed closed".into())));
            }
            Err(e) => live.dispatch(Action::Feed(Feed::Lost(e.to_string()))),
        }
        if !running.get() {
            return;
        }
        // A closed feed may mean the session ended: ask, and go back to the login if so.
        if let Err(ApiError::LoggedOut(m)) = api::get::<Session>("/api/admin/session").await {
            on_logout.emit(Some(format!("Your session ended ({m}). Log in again.")));
            return;
        }
        gloo_timers::future::TimeoutFuture::new(2_000).await;
    }
}
