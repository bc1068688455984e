//! The login page: the admin token in, a session cookie out.

use commons_shared::portal::{LoginRequest, Session};
use web_sys::HtmlInputElement;
use yew::prelude::*;

use crate::api::{self, ApiError};

/// Props of [`Login`].
#[derive(Debug, Properties, PartialEq)]
pub struct LoginProps {
    /// Called with the new session.
    pub on_login: Callback<Session>,
    /// Why the user is here (a session that ended, an unreachable coordinator).
    #[prop_or_default]
    pub notice: Option<String>,
}

/// The admin-token form.
#[function_component]
pub fn Login(p: &LoginProps) -> Html {
    let input = use_node_ref();
    let error = use_state(|| None::<String>);
    let busy = use_state(|| false);
    let onsubmit = {
        let input = input.clone();
        let error = error.clone();
        let busy = busy.clone();
        let on_login = p.on_login.clone();
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let token = input
                .cast::<HtmlInputElement>()
                .map(|i| i.value())
                .unwrap_or_default();
            if token.trim().is_empty() {
                error.set(Some(
                    "Enter the admin token (the coordinator printed it at its first start).".into(),
                ));
                return;
            }
            let error = error.clone();
            let busy = busy.clone();
            let on_login = on_login.clone();
            busy.set(true);
            wasm_bindgen_futures::spawn_local(async move {
                let res = api::post::<_, Session>(
                    "/api/admin/login",
                    &LoginRequest {
                        token: token.trim().into(),
                    },
                )
                .await;
                busy.set(false);
                match res {
                    Ok(s) => on_login.emit(s),
                    Err(ApiError::LoggedOut(m)) => error.set(Some(format!("Not logged in: {m}."))),
                    Err(ApiError::Status(429, m)) => {
                        error.set(Some(format!("Too many attempts: {m}.")))
                    }
                    Err(e) => error.set(Some(e.to_string())),
                }
            });
        })
    };
    html! {
        <main class="center">
            <form class="login" {onsubmit}>
                <h1>{ "Commons" }</h1>
                <p>{ "Operators' portal. Log in with this coordinator's admin token." }</p>
                if let Some(n) = &p.notice { <p class="notice">{ n.clone() }</p> }
                <label for="token">{ "Admin token" }</label>
                <input id="token" type="password" ref={input} autocomplete="current-password" maxlength="256" />
                <button id="login" type="submit" disabled={*busy}>{ if *busy { "Logging in…" } else { "Log in" } }</button>
                if let Some(e) = &*error { <p class="error" id="login-error" role="alert">{ e.clone() }</p> }
            </form>
        </main>
    }
}
