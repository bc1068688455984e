//! Calls into the shell: Tauri's `invoke`, with serde on both sides. The shell's errors arrive as
//! `{error, message}`; what reaches the page is the message.

use commons_shared::desktop::WindowCommand;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = ["window", "__TAURI__", "core"], js_name = invoke, catch)]
    async fn tauri_invoke(cmd: &str, args: JsValue) -> Result<JsValue, JsValue>;
}

/// What a failed call says, from the shell's `{error, message}` or anything else it threw.
pub fn message_of(thrown: &serde_json::Value) -> String {
    match thrown {
        serde_json::Value::String(s) => s.clone(),
        v => v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the app answered {v}")),
    }
}

fn to_json(v: &JsValue) -> serde_json::Value {
    if v.is_undefined() {
        return serde_json::Value::Null;
    }
    if let Some(e) = v.dyn_ref::<js_sys::Error>() {
        return serde_json::Value::String(String::from(e.message()));
    }
    js_sys::JSON::stringify(v)
        .ok()
        .and_then(|s| s.as_string())
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Asks the shell to do `cmd`.
pub async fn call<T: DeserializeOwned>(cmd: WindowCommand) -> Result<T, String> {
    invoke(cmd.name(), cmd.args()).await
}

/// Calls command `cmd` with `args` (an object of named arguments).
async fn invoke<T: DeserializeOwned>(cmd: &str, args: impl Serialize) -> Result<T, String> {
    let text = serde_json::to_string(&args).map_err(|e| e.to_string())?;
    let args = js_sys::JSON::parse(&text).map_err(|_| "cannot encode the request".to_owned())?;
    match tauri_invoke(cmd, args).await {
        Ok(v) => serde_json::from_value(to_json(&v))
            .map_err(|e| format!("the app's answer to {cmd} is not understood: {e}")),
        Err(thrown) => Err(message_of(&to_json(&thrown))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_their_sentence() {
        let e =
            serde_json::json!({"error": "not_started", "message": "press Start donating first"});
        assert_eq!(message_of(&e), "press Start donating first");
        assert_eq!(message_of(&serde_json::json!("plain")), "plain");
        assert!(message_of(&serde_json::json!({"x": 1})).contains("answered"));
    }
}
