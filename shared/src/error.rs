//! The JSON error body: `{"error": "<code>", "message": "<a sentence for a human>"}`, with `"field"` naming the
//! input at fault in a 422 (`invalid_field`).

use serde::{Deserialize, Serialize};

/// Every error a Commons server answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `invalid_field`, `unauthorized`, `no_worker`.
    pub error: String,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
    /// The dotted path of the input at fault (`invalid_field` only), for a client to act on without reading the
    /// message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    /// An error body.
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            message: message.into(),
            field: None,
        }
    }

    /// The same, naming the input at fault.
    pub fn in_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_text_names_the_field_only_when_there_is_one() {
        let plain = ErrorBody::new("not_found", "no worker \"x\"");
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"error":"not_found","message":"no worker \"x\""}"#
        );
        let field = ErrorBody::new("invalid_field", "endpoint: the coordinator's own address")
            .in_field("endpoint");
        let text = serde_json::to_string(&field).unwrap();
        assert_eq!(
            text,
            r#"{"error":"invalid_field","message":"endpoint: the coordinator's own address","field":"endpoint"}"#
        );
        assert_eq!(serde_json::from_str::<ErrorBody>(&text).unwrap(), field);
        // A body from a server that names no field reads as before.
        assert_eq!(
            serde_json::from_str::<ErrorBody>(r#"{"error":"x","message":"y"}"#)
                .unwrap()
                .field,
            None
        );
    }
}
