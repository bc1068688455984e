//! The tray: an icon that shows the state (active, paused, error) with its tooltip, and the menu.

use std::sync::Arc;
use std::time::Duration;

use commons_agent::agent::State;
use tauri::image::Image;
use tauri::menu::{Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager, Runtime};

use crate::donor::{Donor, UpdatePhase, donor_state, offer, summary};

/// The menu entries' ids (a desktop shell sends these back as clicks).
pub mod ids {
    /// The status line (disabled).
    pub const STATUS: &str = "status";
    /// Start donating / Pause / Resume.
    pub const TOGGLE: &str = "toggle";
    /// Pause for 1 hour.
    pub const PAUSE_HOUR: &str = "pause_hour";
    /// Pause until tomorrow.
    pub const PAUSE_TOMORROW: &str = "pause_tomorrow";
    /// Open the window.
    pub const OPEN: &str = "open";
    /// Open the portal in the browser.
    pub const PORTAL: &str = "portal";
    /// The update: its state, and Restart to finish / install the package.
    pub const UPDATE: &str = "update";
    /// Quit.
    pub const QUIT: &str = "quit";
}

/// The icon for a state.
pub fn icon(state: &State) -> Image<'static> {
    let bytes: &'static [u8] = match state {
        State::Active | State::Registering | State::Pulling => {
            include_bytes!("../../../icons/tray-active.png")
        }
        State::Paused | State::Stopped => include_bytes!("../../../icons/tray-paused.png"),
        State::Error(_) => include_bytes!("../../../icons/tray-error.png"),
    };
    Image::from_bytes(bytes).expect("the tray icons are valid PNGs")
}

/// Opens a URL in the volunteer's browser.
fn open_url(url: &str) {
    let program = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(program).arg(url).spawn() {
        tracing::warn!(error = %e, url, "cannot open the browser");
    }
}

/// Quits as the volunteer's Quit does: the work stopped (at most 20 s), then the app. From the tray's Quit, and from
/// `commons --quit` launched while the app runs.
pub(crate) fn quit<R: Runtime>(app: &AppHandle<R>) {
    let donor = app.state::<Arc<Donor>>().inner().clone();
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        donor.quit(Duration::from_secs(20)).await;
        app.exit(0);
    });
}

fn on_menu<R: Runtime>(app: &AppHandle<R>, event: MenuEvent) {
    let donor = app.state::<Arc<Donor>>().inner().clone();
    let id = event.id().as_ref().to_owned();
    tracing::info!(entry = %id, "tray menu");
    match id.as_str() {
        ids::OPEN => crate::show_window(app),
        ids::PORTAL => {
            let donor = donor.clone();
            tauri::async_runtime::spawn(async move {
                let url = donor
                    .coordinator_url()
                    .await
                    .or_else(|| donor.settings().ok().map(|s| s.entry_url().to_owned()));
                if let Some(u) = url {
                    open_url(&format!("{}/", u.trim_end_matches('/')));
                }
            });
        }
        ids::UPDATE => {
            tauri::async_runtime::spawn(async move {
                let view = donor.watch_update().borrow().clone();
                match view.phase {
                    UpdatePhase::Restart => {
                        if let Err(e) = donor.restart_to_update().await {
                            tracing::warn!(error = %e, "update");
                        }
                    }
                    UpdatePhase::Package => {
                        if let Some(url) = view.detail.filter(|u| u.starts_with("http")) {
                            open_url(&url);
                        }
                    }
                    _ => {}
                }
            });
        }
        ids::QUIT => quit(app),
        ids::TOGGLE | ids::PAUSE_HOUR | ids::PAUSE_TOMORROW => {
            tauri::async_runtime::spawn(async move {
                let stopped = donor.watch().borrow().eq(&State::Stopped);
                let r = match id.as_str() {
                    // Stopped, the one entry starts donating with the saved settings.
                    ids::TOGGLE if stopped => donor.start(None, None).await,
                    ids::TOGGLE => donor.toggle().await,
                    ids::PAUSE_HOUR => donor.pause(Some(Duration::from_secs(3600))).await,
                    _ => donor.pause(Some(crate::donor::until_tomorrow())).await,
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "tray action");
                }
            });
        }
        _ => {}
    }
}

/// Builds the tray and keeps it following the agent's state.
pub fn create<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<()> {
    let donor = app.state::<Arc<Donor>>().inner().clone();
    let status = MenuItem::with_id(app, ids::STATUS, "Not donating", false, None::<&str>)?;
    let toggle = MenuItem::with_id(app, ids::TOGGLE, "Start donating", true, None::<&str>)?;
    let hour = MenuItem::with_id(
        app,
        ids::PAUSE_HOUR,
        "Pause for 1 hour",
        false,
        None::<&str>,
    )?;
    let tomorrow = MenuItem::with_id(
        app,
        ids::PAUSE_TOMORROW,
        "Pause until tomorrow",
        false,
        None::<&str>,
    )?;
    let open = MenuItem::with_id(app, ids::OPEN, "Open Commons", true, None::<&str>)?;
    let portal = MenuItem::with_id(app, ids::PORTAL, "Open the portal", true, None::<&str>)?;
    let (text, enabled) = donor.watch_update().borrow().tray_entry();
    let update = MenuItem::with_id(app, ids::UPDATE, text, enabled, None::<&str>)?;
    let quit = MenuItem::with_id(app, ids::QUIT, "Quit", true, None::<&str>)?;
    let menu = Menu::with_items(
        app,
        &[
            &status,
            &PredefinedMenuItem::separator(app)?,
            &toggle,
            &hour,
            &tomorrow,
            &PredefinedMenuItem::separator(app)?,
            &open,
            &portal,
            &PredefinedMenuItem::separator(app)?,
            &update,
            &quit,
        ],
    )?;
    let tray = TrayIconBuilder::with_id("commons")
        .icon(icon(&State::Stopped))
        .tooltip("Commons: not donating")
        .menu(&menu)
        .on_menu_event(on_menu)
        .build(app)?;
    let mut updates = donor.watch_update();
    tauri::async_runtime::spawn(async move {
        loop {
            let (text, enabled) = updates.borrow_and_update().tray_entry();
            let _ = update.set_text(text);
            let _ = update.set_enabled(enabled);
            if updates.changed().await.is_err() {
                return;
            }
        }
    });
    let offer = offer(donor.detected());
    let mut rx = donor.watch();
    tauri::async_runtime::spawn(async move {
        loop {
            let s = rx.borrow_and_update().clone();
            let running = !matches!(s, State::Stopped);
            let _ = tray.set_icon(Some(icon(&s)));
            let _ = tray.set_tooltip(Some(format!("Commons: {}", donor_state(&s).as_str())));
            let _ = status.set_text(summary(&s, &offer));
            let _ = toggle.set_text(match s {
                State::Stopped => "Start donating",
                State::Paused => "Resume",
                _ => "Pause",
            });
            for item in [&hour, &tomorrow] {
                let _ = item.set_enabled(running);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
