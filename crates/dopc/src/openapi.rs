//! The OpenAPI description of the API, generated from the handlers' annotations
//! (`dopc openapi` prints it; `docs/openapi.json` is a copy a test keeps in step).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The body of every error response (the client's type).
pub use dopc_client::api::{ErrorBody, ErrorDetail};

/// `GET /api/v1/ping`: no token needed.
#[utoipa::path(get, path = "/api/v1/ping", tag = "server", security(()), responses((status = 200, description = "`{pong: pong}`", body = dopc_client::api::Pong)))]
#[allow(dead_code)]
fn ping() {}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The API.
#[derive(OpenApi)]
#[openapi(
    info(title = "dopc", description = "The dop server: plans, queued dopv and dopi executions, their logs, each plan's combined state, its monitor (scheduled refresh, auto-sync policy) and Prometheus metrics. Every endpoint but ping needs `Authorization: Bearer <token>` (`dopc token create NAME`)."),
    paths(
        ping,
        crate::api::plans::list, crate::api::plans::add, crate::api::plans::update_original,
        crate::api::plans::get, crate::api::plans::update, crate::api::plans::remove,
        crate::api::plans::versions, crate::api::plans::diff, crate::api::plans::reset,
        crate::api::state::get, crate::api::state::stream,
        crate::api::executions::list, crate::api::executions::create, crate::api::executions::clear,
        crate::api::executions::get, crate::api::executions::remove, crate::api::executions::cancel,
        crate::api::logs::get, crate::api::logs::stream,
        crate::api::monitor::get, crate::api::monitor::put, crate::api::monitor::remove,
        crate::api::monitor::metrics,
    ),
    components(schemas(ErrorBody, ErrorDetail, crate::execution::Execution, crate::execution::ExecOptions, crate::execution::Task, crate::execution::Status, crate::monitor::MonitorSettings, crate::monitor::AutoSync)),
    modifiers(&Bearer),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The document, as pretty JSON (with the crate's version).
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    /// `docs/openapi.json` is the document the code generates; regenerate it with
    /// `cargo run -p dopc -- openapi > docs/openapi.json`.
    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let checked_in = include_str!("../../../docs/openapi.json");
        assert_eq!(
            checked_in.trim_end(),
            super::document().trim_end(),
            "docs/openapi.json is stale: cargo run -p dopc -- openapi > docs/openapi.json"
        );
    }
}
