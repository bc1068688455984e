//! A hook that loads JSON from the API and reloads on demand.

use serde::de::DeserializeOwned;
use yew::prelude::*;

use crate::api::{self, ApiError};

/// A load in progress, done, or failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetch<T> {
    /// Waiting.
    Loading,
    /// The answer.
    Ready(T),
    /// The failure.
    Failed(ApiError),
}

/// Loads `path` now, whenever `path` changes, and when the returned callback is called.
#[hook]
pub fn use_fetch<T>(path: String) -> (UseStateHandle<Fetch<T>>, Callback<()>)
where
    T: DeserializeOwned + Clone + PartialEq + 'static,
{
    let data = use_state(|| Fetch::Loading);
    let nonce = use_state(|| 0u32);
    {
        let data = data.clone();
        use_effect_with((path, *nonce), move |(path, _)| {
            let path = path.clone();
            wasm_bindgen_futures::spawn_local(async move {
                data.set(match api::get::<T>(&path).await {
                    Ok(v) => Fetch::Ready(v),
                    Err(e) => Fetch::Failed(e),
                });
            });
        });
    }
    let reload = Callback::from(move |()| nonce.set(*nonce + 1));
    (data, reload)
}
