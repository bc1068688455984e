//! The window's commands: thin adapters over [`Donor`]; its errors reach the page as `{error, message}`.

use std::sync::Arc;
use std::time::Duration;

use commons_shared::caps::Capabilities;
use serde::Serialize;
use tauri::State;

use crate::donor::{AppError, Donor, Status};

/// The hardware the first-run page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Hardware {
    /// What was detected.
    pub capabilities: Capabilities,
    /// Why no GPU was found, when none was (driver missing, ...).
    pub no_gpu: Option<String>,
}

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
