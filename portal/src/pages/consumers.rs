//! Consumers: the API keys that let people use the pool, what each may do and how much of today's quota it used,
//! each key's requests over the last day and the top services; creating, rotating and revoking keys. A key is shown
//! once, when it is made.

use commons_shared::consumers::{ConsumerKeyList, KeyPolicy, NewConsumerKey};
use commons_shared::usage::{UsageReport, thousands};
use web_sys::HtmlInputElement;
use yew::prelude::*;

use crate::api;
use crate::components::{Empty, Fetch, LineChart, Loading, Problem, use_fetch};
use crate::view::{key_services, quota_use, usage_series};

fn value(r: &NodeRef) -> String {
    r.cast::<HtmlInputElement>()
        .map(|i| i.value())
        .unwrap_or_default()
}

/// The keys, and the form that makes one.
#[function_component]
pub fn Consumers() -> Html {
    let (list, reload) = use_fetch::<ConsumerKeyList>("/api/admin/keys".into());
    let (usage, _) = use_fetch::<UsageReport>("/api/admin/usage?hours=24&bucket_minutes=60".into());
    // The secret just made (by a create or a rotate), shown once, and what the last action said.
    let secret = use_state(|| None::<NewConsumerKey>);
    let error = use_state(|| None::<String>);
    let (name, services, rate, daily, tokens) = (
        use_node_ref(),
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
        let (name, services, rate, daily, tokens, error, done) = (
            name.clone(),
            services.clone(),
            rate.clone(),
            daily.clone(),
            tokens.clone(),
            error.clone(),
            done.clone(),
        );
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let optional = |r: &NodeRef| match value(r).trim() {
                "" => Ok(None),
                t => t.parse::<u64>().map(Some),
            };
            let (Ok(rate_per_minute), Ok(daily_requests), Ok(daily_tokens)) = (
                value(&rate).trim().parse::<u32>(),
                optional(&daily),
                optional(&tokens),
            ) else {
                error.set(Some(
                    "The rate and the daily quotas are whole numbers (leave a quota empty for none)."
                        .into(),
                ));
                return;
            };
            let policy = KeyPolicy {
                name: value(&name).trim().to_owned(),
                services: key_services(&value(&services)),
                rate_per_minute,
                daily_requests,
                daily_tokens,
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
                <label for="key-tokens">{ "llm tokens a day" }</label>
                <input id="key-tokens" ref={tokens} type="number" min="1" placeholder="no quota" />
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
                    <thead><tr><th>{ "Name" }</th><th>{ "Id" }</th><th>{ "Services" }</th><th>{ "Rate" }</th><th>{ "Used today" }</th><th>{ "Tokens today" }</th><th>{ "State" }</th><th></th></tr></thead>
                    <tbody>{ for keys.keys.iter().map(|k| {
                        let revoked = k.revoked_at_ms.is_some();
                        html! {
                            <tr id={format!("key-{}", k.id)} class={classes!(revoked.then_some("revoked"))}>
                                <td>{ k.policy.name.clone() }</td><td><code>{ k.id.clone() }</code></td>
                                <td>{ if k.policy.services.is_empty() { "all".to_owned() } else { k.policy.services.join(", ") } }</td>
                                <td>{ format!("{}/min", k.policy.rate_per_minute) }</td>
                                <td class="used">{ quota_use(k.requests_today, k.policy.daily_requests) }</td>
                                <td class="tokens">{ quota_use(k.tokens_today, k.policy.daily_tokens) }</td>
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
            { usage_view(&usage, keys) }
        </>
    }
}

/// Each key's requests per hour over the last day, and the top services.
fn usage_view(usage: &Fetch<UsageReport>, keys: &ConsumerKeyList) -> Html {
    let report = match usage {
        Fetch::Loading => return html! { <Loading /> },
        Fetch::Failed(e) => return html! { <p class="error">{ format!("Usage: {e}") }</p> },
        Fetch::Ready(r) => r,
    };
    let name = |id: &str| {
        keys.keys
            .iter()
            .find(|k| k.id == id)
            .map(|k| k.policy.name.clone())
    };
    html! {
        <>
            <h2>{ "Use over the last 24 hours" }</h2>
            <LineChart id="chart-key-usage" title="Requests per hour, by key" series={usage_series(report, name)} />
            if report.services.is_empty() {
                <Empty>{ "No requests in the last 24 hours." }</Empty>
            } else {
                <table id="top-services">
                    <thead><tr><th>{ "Service" }</th><th>{ "Requests" }</th><th>{ "Completed" }</th><th>{ "Tokens" }</th><th>{ "Sent" }</th></tr></thead>
                    <tbody>{ for report.services.iter().map(|s| html! {
                        <tr id={format!("service-usage-{}", s.service)}>
                            <td>{ s.service.clone() }</td>
                            <td class="requests">{ thousands(s.totals.requests) }</td>
                            <td class="completed">{ thousands(s.totals.completed) }</td>
                            <td>{ thousands(s.totals.prompt_tokens + s.totals.completion_tokens) }</td>
                            <td>{ crate::view::bytes(s.totals.bytes_out) }</td>
                        </tr>
                    }) }</tbody>
                </table>
            }
        </>
    }
}
