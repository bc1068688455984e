//! Commons, the volunteer's desktop app: a thin Tauri shell over the window-free agent core (`commons-agent`).
//!
//! [`Donor`](donor::Donor) holds the agent; the window's [`commands`] and the [`tray`] only adapt it. `run_app`
//! wires a Tauri builder, so tests drive the same wiring with `tauri::test::mock_builder()`.
#![deny(missing_docs)]

pub mod commands;
pub mod donor;
pub mod tray;

use std::sync::Arc;

use tauri::{AppHandle, Manager, Runtime};

use crate::donor::Donor;

/// Wires the app: the donor as state, the commands, the tray (when `with_tray`), and the window on first run.
pub fn run_app<R: Runtime>(
    builder: tauri::Builder<R>,
    donor: Arc<Donor>,
    with_tray: bool,
) -> tauri::Builder<R> {
    builder
        .manage(donor)
        .invoke_handler(tauri::generate_handler![
            commands::status,
            commands::detect,
            commands::start_donating,
            commands::pause,
            commands::resume,
            commands::limits,
            commands::set_limits,
            commands::retry
        ])
        .setup(move |app| {
            if with_tray {
                tray::create(app.handle())?;
            }
            // First run (nothing saved yet): show the window with its Start donating button.
            let first_run = app
                .state::<Arc<Donor>>()
                .settings()
                .map(|s| s.coordinator_url.is_none())
                .unwrap_or(true);
            if first_run {
                show_window(app.handle());
            }
            Ok(())
        })
}

/// Shows the window, creating it from the configuration when it is not open. The window exists only while it is
/// open: closing it destroys the webview (and WebKit's processes with it), so an app that sits in the tray holds
/// no browser engine.
pub fn show_window<R: Runtime>(app: &AppHandle<R>) {
    if let Some(w) = app.get_webview_window(WINDOW) {
        let _ = w.unminimize();
        let _ = w.show();
        let _ = w.set_focus();
        return;
    }
    let Some(config) = app.config().app.windows.iter().find(|w| w.label == WINDOW) else {
        tracing::error!("the window is missing from tauri.conf.json");
        return;
    };
    match tauri::WebviewWindowBuilder::from_config(app, config).and_then(|b| b.build()) {
        Ok(w) => {
            let _ = w.set_focus();
        }
        Err(e) => tracing::error!(error = %e, "cannot open the window"),
    }
}

/// The window's label.
pub const WINDOW: &str = "main";

/// Runs the app until Quit.
pub fn run() -> anyhow::Result<()> {
    let settings_path = commons_agent::settings::Settings::default_path();
    let creds: Arc<dyn commons_agent::credentials::CredentialStore> =
        Arc::new(commons_agent::credentials::KeyringStore::new());
    let probe = Arc::from(commons_agent::hardware::default_probe());
    let donor = Arc::new(Donor::new(settings_path, creds, probe));
    let app = run_app(tauri::Builder::default(), donor.clone(), true)
        .build(tauri::tauri_build_context!())
        .map_err(|e| anyhow::anyhow!("cannot start the app: {e}"))?;
    app.run(move |_, event| match event {
        // Closing the window keeps the app in the tray; only Quit (an explicit exit code) ends it.
        tauri::RunEvent::ExitRequested {
            code: None, api, ..
        } => api.prevent_exit(),
        tauri::RunEvent::Exit => tracing::info!("exiting"),
        _ => {}
    });
    Ok(())
}
