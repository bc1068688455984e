//! The JSON error body: `{"error": "<code>", "message": "<a sentence for a human>"}`.

use serde::{Deserialize, Serialize};

/// Every error a Commons server answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `invalid_field`, `unauthorized`, `no_worker`.
    pub error: String,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            message: message.into(),
        }
    }
}
