//! Commons, the volunteer's desktop app: a thin Tauri shell over the window-free agent core (`commons-agent`).
//!
//! [`Donor`](donor::Donor) holds the agent; the window's [`commands`] and the [`tray`] only adapt it. `run_app`
//! wires a Tauri builder, so tests drive the same wiring with `tauri::test::mock_builder()`.
#![deny(missing_docs)]

pub mod commands;
pub mod donor;
pub mod notices;
pub mod tray;

use std::sync::Arc;
use std::time::Duration;

use tauri::{AppHandle, Manager, Runtime};

use commons_agent::agent::State;
use commons_agent::update::Updater;

use crate::donor::Donor;

/// Wires the app: the donor as state, the commands, and the window on first run; on a real `desktop` also the tray,
/// one instance only (a second launch opens the first one's window), starting at login when chosen (autostart)
/// and desktop notifications.
pub fn run_app<R: Runtime>(
    builder: tauri::Builder<R>,
    donor: Arc<Donor>,
    desktop: bool,
) -> tauri::Builder<R> {
    let builder = if desktop {
        // The single-instance plugin goes first: a second launch must not get as far as starting anything.
        builder
            .plugin(tauri_plugin_single_instance::init(|app, argv, _| {
                if argv.iter().any(|a| a == QUIT_ARG) {
                    tracing::info!(
                        "asked to quit by another launch (an uninstaller or an upgrade)"
                    );
                    tray::quit(app);
                } else {
                    tracing::info!("launched again: opening the window");
                    show_window(app);
                }
            }))
            .plugin(
                tauri_plugin_autostart::Builder::new()
                    .app_name("commons")
                    .build(),
            )
            .plugin(tauri_plugin_notification::init())
    } else {
        builder
    };
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
            commands::retry,
            commands::autostart,
            commands::set_autostart,
            commands::restart_to_update
        ])
        .setup(move |app| {
            // `commons --quit` with no Commons running (the running one got it through the single-instance plugin,
            // and this launch ended there): nothing to quit, so nothing is started.
            if desktop && std::env::args().any(|a| a == QUIT_ARG) {
                app.handle().exit(0);
                return Ok(());
            }
            if desktop {
                tray::create(app.handle())?;
                follow_notices(app.handle());
            }
            let donor = app.state::<Arc<Donor>>().inner().clone();
            // Restarted by an update while donating: donate again at once, as the volunteer left it.
            if commons_agent::update::resume_donating() {
                let donor = donor.clone();
                tauri::async_runtime::spawn(async move {
                    if let Err(e) = donor.start(None, None).await {
                        tracing::warn!(error = %e, "cannot donate again after the update");
                    }
                });
            }
            check_for_updates(donor);
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

/// Checks for an update once donating has started, then every `update_interval_secs` (when `update_check` is on).
fn check_for_updates(donor: Arc<Donor>) {
    tauri::async_runtime::spawn(async move {
        let mut state = donor.watch();
        loop {
            let Ok(s) = donor.settings() else { return };
            if !s.update_check {
                return;
            }
            if state
                .wait_for(|s| matches!(s, State::Active | State::Paused))
                .await
                .is_err()
            {
                return;
            }
            donor.check_update().await;
            tokio::time::sleep(Duration::from_secs(s.update_interval_secs)).await;
        }
    });
}

/// Tells the volunteer about the important changes (see [`notices`]) as desktop notifications.
fn follow_notices<R: Runtime>(app: &AppHandle<R>) {
    use tauri_plugin_notification::NotificationExt;
    let (app, donor) = (app.clone(), app.state::<Arc<Donor>>().inner().clone());
    tauri::async_runtime::spawn(async move {
        let mut rx = donor.watch();
        let mut seen = notices::Seen::default();
        loop {
            // A state change, or a look every few seconds for what changes within a state (held back, a problem).
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
            let now = donor.status().await;
            if let Some((title, body)) = notices::notice(&seen, &now) {
                tracing::info!(%title, %body, "notification");
                if let Err(e) = app.notification().builder().title(title).body(body).show() {
                    tracing::warn!(error = %e, "cannot show a notification");
                }
            }
            seen = notices::Seen::of(&now);
        }
    });
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

/// `commons --quit`: the running app stops its work (containers stopped, the worker unregistered) and exits, as
/// its tray's Quit does; the uninstaller and the installer ask this before they touch its files.
pub const QUIT_ARG: &str = "--quit";

/// This build's version (a release build may set it: [`commons_agent::build_version!`]).
pub const VERSION: &str = commons_agent::build_version!();

/// An update's trial run of this binary (see [`commons_agent::update::trial`]): the agent core only, no window.
pub fn trial(report: std::path::PathBuf) -> anyhow::Result<()> {
    commons_agent::load_trust()?;
    let settings = commons_agent::settings::Settings::load(
        &commons_agent::settings::Settings::default_path(),
    )?;
    let creds: Arc<dyn commons_agent::credentials::CredentialStore> = Arc::new(
        commons_agent::credentials::KeyringStore::new().with_timeout(settings.keyring_timeout()),
    );
    let probe = Arc::from(commons_agent::hardware::default_probe());
    Ok(
        tokio::runtime::Runtime::new()?.block_on(commons_agent::update::trial(
            settings, creds, probe, VERSION, &report,
        ))?,
    )
}

/// Runs the app until Quit.
pub fn run() -> anyhow::Result<()> {
    commons_agent::load_trust()?;
    let settings_path = commons_agent::settings::Settings::default_path();
    // A locked keyring waits for its password; the settings say how long (a broken file is the donor's to report).
    let keyring_timeout = commons_agent::settings::Settings::load(&settings_path)
        .map(|s| s.keyring_timeout())
        .unwrap_or(commons_agent::credentials::DEFAULT_KEYRING_TIMEOUT);
    let creds: Arc<dyn commons_agent::credentials::CredentialStore> =
        Arc::new(commons_agent::credentials::KeyringStore::new().with_timeout(keyring_timeout));
    let probe = Arc::from(commons_agent::hardware::default_probe());
    let mut donor = Donor::new(settings_path, creds, probe);
    match donor.settings().map_err(anyhow::Error::from).and_then(|s| {
        Ok(Updater::from_settings(
            commons_agent::this_build!("desktop"),
            &s,
        )?)
    }) {
        Ok(Some(u)) => donor = donor.with_updater(u),
        Ok(None) => {}
        Err(e) => tracing::warn!("no self-updates: {e}"),
    }
    let donor = Arc::new(donor);
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
