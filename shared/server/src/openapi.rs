//! What every Commons server's OpenAPI document says alike, applied to the generated document ([`Conventions`]):
//! the answers that any operation of a kind can give, so that no route has to list them by hand (and none
//! forgets one), the bearer security schemes, and flattened schemas that stay valid.

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{AdditionalProperties, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr, ResponseBuilder};

/// The security schemes: each a bearer token.
pub const SCHEMES: [&str; 4] = ["worker_token", "admin_token", "api_key", "federation_key"];

/// The answers any operation of a kind can give, besides its own:
/// - any operation: 429 (the client's address holds too many connections);
/// - one with a request body: 400 (not JSON), 408 (the body stopped arriving), 413 (too large), 422 (a field is
///   wrong);
/// - one that needs a token: 401 (none, or a wrong one).
///
/// Also: every scheme in [`SCHEMES`] is a bearer token; and a schema that is flattened into another (`allOf`) does
/// not forbid the other's properties.
#[derive(Debug, Clone, Copy)]
pub struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in SCHEMES {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
        open_flattened(components);
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                standard_answers(op);
            }
        }
    }
}

fn standard_answers(op: &mut Operation) {
    let mut add = |status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            utoipa::openapi::ContentBuilder::new()
                                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                    "ErrorBody",
                                ))))
                                .build(),
                        )
                        .build(),
                )
            });
    };
    add(
        "429",
        "too many requests, or too many connections from this address at once",
    );
    if op.request_body.is_some() {
        add("400", "the body is not JSON of the right shape");
        add("408", "the body stopped arriving");
        add("413", "the body is too large");
        add("422", "a field is wrong; the message names it");
    }
    if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
        add("401", "no token, or not a valid one");
    }
}

/// A component flattened into another (`allOf`, as `#[serde(flatten)]` makes it) must not forbid the other's
/// properties: its `additionalProperties: false` (from `deny_unknown_fields`, which is about what a server
/// accepts) goes, where it is flattened.
fn open_flattened(components: &mut utoipa::openapi::Components) {
    let flattened: Vec<String> = components
        .schemas
        .values()
        .filter_map(|s| match s {
            RefOr::T(Schema::AllOf(all)) => Some(all.items.iter()),
            _ => None,
        })
        .flatten()
        .filter_map(|item| match item {
            RefOr::Ref(r) => r.ref_location.rsplit('/').next().map(str::to_owned),
            RefOr::T(_) => None,
        })
        .collect();
    for name in flattened {
        if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(&name)
            && matches!(
                o.additional_properties.as_deref(),
                Some(AdditionalProperties::FreeForm(false))
            )
        {
            o.additional_properties = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi as _;

    #[derive(serde::Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: u32,
    }

    #[derive(serde::Deserialize, utoipa::ToSchema)]
    #[allow(dead_code)]
    struct Outer {
        #[serde(flatten)]
        inner: Inner,
        b: u32,
    }

    #[utoipa::path(post, path = "/x", request_body = Outer, responses((status = 200)),
        security(("admin_token" = [])))]
    #[allow(dead_code)]
    fn x() {}

    #[utoipa::path(get, path = "/y", responses((status = 200)))]
    #[allow(dead_code)]
    fn y() {}

    #[derive(utoipa::OpenApi)]
    #[openapi(paths(x, y), components(schemas(Outer, Inner)), modifiers(&Conventions))]
    struct Doc;

    #[test]
    fn operations_list_what_any_of_their_kind_can_answer() {
        let doc = serde_json::to_value(Doc::openapi()).unwrap();
        let codes = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["responses"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(
            codes("/x", "post"),
            ["200", "400", "401", "408", "413", "422", "429"]
        );
        assert_eq!(codes("/y", "get"), ["200", "429"]);
        assert_eq!(
            doc["components"]["securitySchemes"]["admin_token"]["scheme"],
            "bearer"
        );
        // Flattened: the outer's fields are allowed beside the inner's.
        assert!(doc["components"]["schemas"]["Inner"]["additionalProperties"].is_null());
    }
}

/// The service routes, described once for the coordinator and the edge (each has its own handlers).
pub mod services {
    #![allow(dead_code)]
    use commons_shared::ErrorBody;

    /// A request for a service of the catalogue, sent on to a volunteer's worker that offers it (through a
    /// coordinator, from the edge) and answered with the worker's answer, streamed. With an API key when the
    /// coordinator asks for one.
    #[utoipa::path(method(get, post, put, delete, patch), path = "/api/service/{service}/{path}",
        params(("service" = String, Path, description = "a service of the catalogue", max_length = 32),
               ("path" = String, Path, description = "the service's own path")),
        responses((status = 200, description = "the service's answer, whatever it is"),
                  (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
                  (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
                  (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
                  (status = 504, body = ErrorBody), (status = 508, body = ErrorBody)),
        security((), ("api_key" = [])))]
    pub fn service() {}

    /// The same for the service's root path.
    #[utoipa::path(method(get, post, put, delete, patch), path = "/api/service/{service}",
        params(("service" = String, Path, description = "a service of the catalogue", max_length = 32)),
        responses((status = 200, description = "the service's answer, whatever it is"),
                  (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
                  (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
                  (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
                  (status = 504, body = ErrorBody), (status = 508, body = ErrorBody)),
        security((), ("api_key" = [])))]
    pub fn service_root() {}

    /// The OpenAI-compatible API (an OpenAI client's `base_url` is the server's `/v1`), served by the `llm`
    /// service.
    #[utoipa::path(method(get, post), path = "/v1/{path}",
        params(("path" = String, Path, description = "e.g. chat/completions, embeddings, models")),
        responses((status = 200, description = "the llm service's answer (an event stream when asked to stream)"),
                  (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
                  (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
                  (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
                  (status = 504, body = ErrorBody), (status = 508, body = ErrorBody)),
        security((), ("api_key" = [])))]
    pub fn openai() {}

    /// Prometheus metrics, as text.
    #[utoipa::path(get, path = "/metrics",
        responses((status = 200, description = "the Prometheus text format", content_type = "text/plain",
                   body = String)))]
    pub fn metrics() {}
}
