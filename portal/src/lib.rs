//! The Commons admin portal: a Yew app the coordinator serves at `/`.
//!
//! Pure parts ([`state`], [`layout`], [`view`]) are tested natively with `cargo test -p commons-portal`; the pages
//! are tested in headless Chromium by `commons-tests`' portal test against a real coordinator.
#![deny(missing_docs)]

pub mod api;
pub mod app;
pub mod components;
pub mod layout;
pub mod pages;
pub mod state;
pub mod view;

/// Starts the app in the browser (the wasm module's entry point).
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    yew::Renderer::<app::App>::new().render();
}
