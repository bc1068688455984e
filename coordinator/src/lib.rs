//! The Commons coordinator: the worker registry (SQLite-backed), tier and service assignment, heartbeats and
//! liveness, load-aware routing of service requests to workers, and the admin API.
//!
//! [`Server`] is the whole thing as a library type; `main.rs` only parses the command line and calls it.
#![deny(missing_docs)]

mod access;
mod accounting;
pub mod config;
pub mod dht;
mod ledger;
pub mod machine;
pub mod metrics;
mod queue;
pub mod registrar;
pub mod registry;
pub mod routes;
pub mod server;
pub mod state;
mod stats;
pub mod store;
pub mod tasks;
mod topology;
pub mod updates;
pub mod verify;

pub use commons_server::{auth, error};
pub use config::Config;
pub use server::Server;
