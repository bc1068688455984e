//! The Commons desktop app's window: one page, in Yew like the portal, over the shell's commands.
//!
//! First run: the detected hardware and **Start donating** (the coordinator URL and an enrollment token under
//! Advanced). Then: the state, tier and services with image pull progress, the tunnel and DHT, uptime and donated
//! hours, and the caps and rules as controls that apply at once. [`ipc`] calls the shell; [`app`] is the page;
//! [`words`] turns figures and states into the words it shows.
#![deny(missing_docs)]

pub mod app;
pub mod ipc;
pub mod words;

/// Mounts the page.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    yew::Renderer::<app::App>::new().render();
}
