//! Commons' wire protocol and the pure logic every component shares.
//!
//! Plain data and pure functions only: no async runtime, no HTTP server, no database. This crate
//! builds for `wasm32-unknown-unknown` so the portal can use the same types as the servers.
//!
//! - [`units`]: byte sizes with units ("23.5GB", "4096MB") as the legacy RMA workers send them.
//! - [`ids`]: the 128-bit worker id.
//! - [`caps`]: hardware capabilities, native and legacy shapes.
//! - [`tier`]: the tier and role rules.
//! - [`catalogue`]: the service catalogue (TOML) and [`assign`]: which services a worker gets.
//! - [`desktop`]: what the desktop app's window and shell exchange.
//! - [`dht`]: records, keys and views of the DHT.
//! - [`api`]: request and response bodies of the worker and admin APIs; [`edge`]: the edge router's.
//! - [`validate`]: field limits and the registration parser that maps every bad input to a field.
//! - [`release`]: the update feed and the signature, checksum and version checks before an update installs.
//! - [`routing`]: the weight of a worker when routing a service request.
//! - [`error`]: the JSON error body every server answers with.
//! - [`backoff`]: how long a retry loop waits.
//! - [`consumers`]: consumer API keys; [`usage`]: what the pool served, the volunteers' credit.
#![deny(missing_docs)]

pub mod api;
pub mod assign;
pub mod backoff;
pub mod caps;
pub mod catalogue;
pub mod consumers;
pub mod desktop;
pub mod dht;
pub mod edge;
pub mod error;
pub mod figures;
pub mod ids;
pub mod portal;
pub mod release;
pub mod routing;
pub mod tier;
pub mod units;
pub mod usage;
pub mod validate;

#[cfg(test)]
mod properties;

pub use error::ErrorBody;
pub use ids::WorkerId;
