//! Consumers: the API keys that let people use the pool, what each may do and how much of today's quota it used;
//! creating, rotating and revoking them. A key is shown once, when it is made.

use commons_shared::consumers::{ConsumerKeyList, KeyPolicy, NewConsumerKey};
use web_sys::HtmlInputElement;
use yew::prelude::*;

use crate::api;
use crate::components::{Empty, Fetch, Loading, Problem, use_fetch};
use crate::view::{key_services, quota_use};

fn value(r: &NodeRef) -> String {
    r.cast::<HtmlInputElement>()
        .map(|i| i.value())
        .unwrap_or_default()
}

/// The keys, and the form that makes one.
#[function_component]
pub fn Consumers() -> Html {
    let (list, reload) = use_fetch::<ConsumerKeyList>("/api/admin/keys".into());
    // The secret just made (by a create or a rotate), shown once, and what the last action said.
    let secret = use_state(|| None::<NewConsumerKey>);
    let error = use_state(|| None::<String>);
    let (name, services, rate, daily) = (
        use_node_ref(),
        use_node_ref(),
        use_node_ref(),
        use_node_ref(),
    );
    let done = {
        let (secret, error, reload) = (secret.clone(), error.clone(), reload.clone());
        move |r: Result<Option<NewConsumerKey>, api::ApiError>| {
            match r {
                Ok(made) => {
                    error.set(None);
                    secret.set(made);
                }
                Err(e) => error.set(Some(e.to_string())),
            }
            reload.emit(());
        }
    };
    let onsubmit = {
        let (name, services, rate, daily, error, done) = (
            name.clone(),
            services.clone(),
            rate.clone(),
            daily.clone(),
            error.clone(),
            done.clone(),
        );
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let rate_text = value(&rate);
            let daily_text = value(&daily);
            let (Ok(rate_per_minute), Ok(daily_requests)) = (
                rate_text.trim().parse::<u32>(),
                match daily_text.trim() {
                    "" => Ok(None),
                    t => t.parse::<u64>().map(Some),
                },
            ) else {
                error.set(Some(
                    "The rate and the daily quota are whole numbers (leave the quota empty for none)."
                        .into(),
                ));
                return;
            };
            let policy = KeyPolicy {
                name: value(&name).trim().to_owned(),
                services: key_services(&value(&services)),
                rate_per_minute,
                daily_requests,
                expires_at_ms: None,
                priority: commons_shared::consumers::DEFAULT_PRIORITY,
            };
            let done = done.clone();
            wasm_bindgen_futures::spawn_local(async move {
                done(
                    api::post::<_, NewConsumerKey>("/api/admin/keys", &policy)
                        .await
                        .map(Some),
                );
            });
        })
    };
    let act = {
        let done = done.clone();
        move |id: String, rotate: bool| {
            let done = done.clone();
            Callback::from(move |_: MouseEvent| {
                let (id, done) = (id.clone(), done.clone());
                wasm_bindgen_futures::spawn_local(async move {
                    let r = if rotate {
                        api::post::<_, NewConsumerKey>(
                            &format!("/api/admin/keys/{id}/rotate"),
                            &serde_json::json!({}),
                        )
                        .await
                        .map(Some)
                    } else {
                        api::delete::<serde_json::Value>(&format!("/api/admin/keys/{id}"))
                            .await
                            .map(|_| None)
                    };
                    done(r);
                });
            })
        }
    };
    let keys = match &*list {
        Fetch::Loading => return html! { <Loading /> },
        Fetch::Failed(e) => return html! { <Problem message={e.to_string()} retry={reload} /> },
        Fetch::Ready(l) => l,
    };
    html! {
        <>
            <h1>{ "Consumers" }</h1>
            <p>{ "People and programs use the pool with an API key: Authorization: Bearer <key>, which OpenAI clients send as their api_key. A key names the services it may use, a rate per minute and a daily quota." }</p>
            <form class="new-key" id="new-key" {onsubmit}>
                <label for="key-name">{ "Name" }</label>
                <input id="key-name" ref={name} maxlength="256" placeholder="who it is for" />
                <label for="key-services">{ "Services" }</label>
                <input id="key-services" ref={services} placeholder="all (or: llm, ocr)" />
                <label for="key-rate">{ "Requests a minute" }</label>
                <input id="key-rate" ref={rate} type="number" min="1" value="60" />
                <label for="key-daily">{ "Requests a day" }</label>
                <input id="key-daily" ref={daily} type="number" min="1" placeholder="no quota" />
                <button id="create-key" type="submit">{ "Create key" }</button>
            </form>
            if let Some(e) = &*error { <p class="error" id="key-error" role="alert">{ e.clone() }</p> }
            if let Some(made) = &*secret {
                <p class="notice" id="new-key-secret">
                    { format!("The key for {}; copy it now, it is not shown again: ", made.info.policy.name) }
                    <code>{ made.key.clone() }</code>
                </p>
            }
            if keys.keys.is_empty() {
                <Empty>{ "No keys yet: nobody can use the pool's services until you create one (or turn on anonymous_access in the coordinator's configuration)." }</Empty>
            } else {
                <table id="keys">
                    <thead><tr><th>{ "Name" }</th><th>{ "Id" }</th><th>{ "Services" }</th><th>{ "Rate" }</th><th>{ "Used today" }</th><th>{ "State" }</th><th></th></tr></thead>
                    <tbody>{ for keys.keys.iter().map(|k| {
                        let revoked = k.revoked_at_ms.is_some();
                        html! {
                            <tr id={format!("key-{}", k.id)} class={classes!(revoked.then_some("revoked"))}>
                                <td>{ k.policy.name.clone() }</td><td><code>{ k.id.clone() }</code></td>
                                <td>{ if k.policy.services.is_empty() { "all".to_owned() } else { k.policy.services.join(", ") } }</td>
                                <td>{ format!("{}/min", k.policy.rate_per_minute) }</td>
                                <td class="used">{ quota_use(k.requests_today, k.policy.daily_requests) }</td>
                                <td>{ if revoked { "revoked" } else { "active" } }</td>
                                <td>
                                    if !revoked {
                                        <button class="rotate" onclick={act(k.id.clone(), true)}>{ "Rotate" }</button>
                                        <button class="revoke" onclick={act(k.id.clone(), false)}>{ "Revoke" }</button>
                                    }
                                </td>
                            </tr>
                        }
                    }) }</tbody>
                </table>
            }
        </>
    }
}
