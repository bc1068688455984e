//! One module per page.

pub mod consumers;
pub mod login;
pub mod overview;
pub mod services;
pub mod topology;
pub mod volunteers;
pub mod workers;
