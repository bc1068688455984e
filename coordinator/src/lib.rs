//! The Commons coordinator: the worker registry (SQLite-backed), tier and service assignment, heartbeats and
//! liveness, load-aware routing of service requests to workers, and the admin API.
//!
//! [`Server`] is the whole thing as a library type; `main.rs` only parses the command line and calls it.
#![deny(missing_docs)]

mod admin;
pub mod config;
pub mod dht;
pub mod http;
pub mod metrics;
mod portal;
mod proxy;
pub mod registrar;
pub mod registry;
pub mod server;
pub mod state;
pub mod store;
pub mod tasks;
pub mod updates;

pub use commons_server::{auth, error};
pub use config::Config;
pub use server::Server;
