//! The window's commands: thin adapters over [`Donor`]; its errors reach the page as `{error, message}`.

use std::sync::Arc;
use std::time::Duration;

use tauri::State;

use crate::donor::{AppError, Donor, Hardware, Limits, Status};

/// The status now.
#[tauri::command]
pub async fn status(donor: State<'_, Arc<Donor>>) -> Result<Status, AppError> {
    Ok(donor.status().await)
}

/// This machine's hardware, as detected at start.
#[tauri::command]
pub fn detect(donor: State<'_, Arc<Donor>>) -> Hardware {
    let d = donor.detected();
    Hardware {
        capabilities: d.capabilities.clone(),
        no_gpu: d.no_gpu.clone(),
    }
}

/// Starts donating (the first-run button), with the Advanced fields when given.
#[tauri::command]
pub async fn start_donating(
    donor: State<'_, Arc<Donor>>,
    coordinator: Option<String>,
    enrollment_token: Option<String>,
) -> Result<Status, AppError> {
    donor.start(coordinator, enrollment_token).await
}

/// Pauses, for `minutes` when given.
#[tauri::command]
pub async fn pause(donor: State<'_, Arc<Donor>>, minutes: Option<u32>) -> Result<Status, AppError> {
    let d = minutes.map(|m| Duration::from_secs(u64::from(m.clamp(1, 7 * 24 * 60)) * 60));
    donor.inner().pause(d).await
}

/// Donates again.
#[tauri::command]
pub async fn resume(donor: State<'_, Arc<Donor>>) -> Result<Status, AppError> {
    donor.resume().await
}

/// The caps and rules (CPU %, memory, disk, GPUs, GPU temperature limit, idle / on AC only, schedule windows).
#[tauri::command]
pub fn limits(donor: State<'_, Arc<Donor>>) -> Result<Limits, AppError> {
    donor.limits()
}

/// Saves new caps and rules and applies them to the running agent at once.
#[tauri::command]
pub async fn set_limits(donor: State<'_, Arc<Donor>>, limits: Limits) -> Result<Limits, AppError> {
    donor.set_limits(limits).await
}

/// Starts again after a problem (Retry).
#[tauri::command]
pub async fn retry(donor: State<'_, Arc<Donor>>) -> Result<Status, AppError> {
    donor.retry().await
}

/// Whether Commons starts at login.
#[tauri::command]
pub fn autostart<R: tauri::Runtime>(app: tauri::AppHandle<R>) -> Result<bool, AppError> {
    launcher(&app)?
        .is_enabled()
        .map_err(|e| AppError::Settings(format!("cannot read the login items: {e}")))
}

/// Starts Commons at login, or no longer.
#[tauri::command]
pub fn set_autostart<R: tauri::Runtime>(
    app: tauri::AppHandle<R>,
    enabled: bool,
) -> Result<bool, AppError> {
    let l = launcher(&app)?;
    if enabled { l.enable() } else { l.disable() }
        .map_err(|e| AppError::Settings(format!("cannot change the login items: {e}")))?;
    Ok(enabled)
}

fn launcher<R: tauri::Runtime>(
    app: &tauri::AppHandle<R>,
) -> Result<tauri::State<'_, tauri_plugin_autostart::AutoLaunchManager>, AppError> {
    use tauri::Manager;
    app.try_state::<tauri_plugin_autostart::AutoLaunchManager>()
        .ok_or_else(|| AppError::Settings("starting at login is not available here".into()))
}

/// Finishes a verified update: the app restarts as the new version (see `Donor::restart_to_update`).
#[tauri::command]
pub async fn restart_to_update(donor: State<'_, Arc<Donor>>) -> Result<(), AppError> {
    donor.restart_to_update().await
}
