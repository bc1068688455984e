//! The Commons edge router: the one well-known address volunteers and users start from.
//!
//! It keeps a registry of coordinators (they register and heartbeat with a federation key), forwards worker
//! registrations and service requests to a chosen coordinator (heartbeats never pass through it), hands out DHT
//! bootstrap seeds, and counts its own requests per kind per day.
#![deny(missing_docs)]

pub mod config;
pub mod http;
pub mod server;
pub mod state;
pub mod store;

pub use config::Config;
pub use server::Server;
