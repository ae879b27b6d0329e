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

    /// The schema names a documented 2xx answer allows (its `$ref`, the items of an array,
    /// the arms of a `oneOf`), or `None` when the operation has no JSON answer.
    fn documented_answers(doc: &serde_json::Value, method: &str, path: &str) -> Vec<String> {
        let op = &doc["paths"][format!("/api/v1{path}")][method];
        assert!(
            op.is_object(),
            "{method} {path} is not in the OpenAPI document"
        );
        let responses = op["responses"].as_object().expect("responses");
        let mut names = Vec::new();
        for (status, answer) in responses {
            if !status.starts_with('2') {
                continue;
            }
            let schema = &answer["content"]["application/json"]["schema"];
            let schema = if schema["type"] == "array" {
                names.push("array".to_string());
                &schema["items"]
            } else {
                schema
            };
            let referenced = |s: &serde_json::Value| {
                s["$ref"]
                    .as_str()
                    .map(|r| r.trim_start_matches("#/components/schemas/").to_string())
            };
            names.extend(referenced(schema));
            // An untagged answer of several shapes: its arms.
            if let Some(name) = referenced(schema) {
                let component = &doc["components"]["schemas"][&name];
                for arm in component["oneOf"].as_array().into_iter().flatten() {
                    names.extend(referenced(arm));
                }
            }
        }
        names
    }

    /// The schema name of what a client call answers, read from the call's own signature: the
    /// future is made and dropped, never sent.
    fn client_answer<T: utoipa::ToSchema>(
        _call: impl std::future::Future<Output = Result<T, dopc_client::client::ClientError>>,
    ) -> String {
        T::name().into_owned()
    }

    fn client_answers_list<T: utoipa::ToSchema>(
        _call: impl std::future::Future<Output = Result<Vec<T>, dopc_client::client::ClientError>>,
    ) -> String {
        T::name().into_owned()
    }

    /// The client and the server agree on every endpoint by type: each call of the client
    /// library expects the type the server documents for that endpoint (the server's handlers
    /// answer with the type their annotation names; the same crate's types on both sides), and
    /// every documented operation is either called by the client or listed here with why not.
    #[test]
    fn the_client_expects_what_the_server_documents_for_every_endpoint() {
        use dopc_client::api::{ExecOptions, MonitorSettings, Task};
        use dopc_client::client::{Client, ClientConfig};
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let c = Client::new(ClientConfig::default()).unwrap();
        let settings: MonitorSettings = serde_json::from_str(r#"{"interval_secs": 60}"#).unwrap();
        let options = ExecOptions::default();
        // (method, path, the type the client call expects, it is a list)
        let calls: Vec<(&str, &str, String, bool)> = vec![
            ("get", "/ping", client_answer(c.ping()), false),
            ("get", "/plans", client_answer(c.plans()), false),
            (
                "post",
                "/plans",
                client_answer(c.add_plan("", false)),
                false,
            ),
            (
                "put",
                "/plans/{name}",
                client_answer(c.update_plan("p", &Default::default())),
                false,
            ),
            (
                "get",
                "/plans/{name}",
                client_answer(c.plan("p", None)),
                false,
            ),
            (
                "get",
                "/plans/{name}/versions",
                client_answer(c.versions("p")),
                false,
            ),
            (
                "get",
                "/plans/{name}/diff",
                client_answer(c.diff("p", None, None)),
                false,
            ),
            (
                "delete",
                "/plans/{name}",
                client_answer(c.delete_plan("p")),
                false,
            ),
            (
                "put",
                "/plans/{name}/reset",
                client_answer(c.reset("p", &Default::default())),
                false,
            ),
            (
                "get",
                "/plans/{name}/state",
                client_answer(c.state("p")),
                false,
            ),
            (
                "get",
                "/plans/{name}/monitor",
                client_answer(c.monitor("p")),
                false,
            ),
            (
                "put",
                "/plans/{name}/monitor",
                client_answer(c.set_monitor("p", Some(&settings))),
                false,
            ),
            (
                "delete",
                "/plans/{name}/monitor",
                client_answer(c.set_monitor("p", None)),
                false,
            ),
            (
                "get",
                "/executions",
                client_answers_list(c.executions(None, None, &Default::default())),
                true,
            ),
            (
                "post",
                "/executions",
                client_answer(c.execute("p", Task::Run, &options)),
                false,
            ),
            (
                "delete",
                "/executions",
                client_answers_list(c.clear(&[], None, None)),
                true,
            ),
            (
                "get",
                "/executions/{id}",
                client_answer(c.execution(1)),
                false,
            ),
            (
                "delete",
                "/executions/{id}",
                client_answer(c.remove_execution(1)),
                false,
            ),
            (
                "post",
                "/executions/{id}/cancel",
                client_answer(c.cancel(1, false)),
                false,
            ),
            (
                "get",
                "/executions/{id}/log",
                client_answer(c.log(1, None, None)),
                false,
            ),
        ];
        // Operations the client does not call as JSON, and why.
        let not_json = [
            // The original dopc's update (plan name in the body); the client uses PUT /plans/{name}.
            ("put", "/plans"),
            // Prometheus text: `Client::metrics` returns it as a string.
            ("get", "/metrics"),
            // Websockets: `Client::follow` and `Client::watch_state` read `Event`s and
            // `PlanState`s, checked by the stream tests.
            ("get", "/executions/{id}/log/stream"),
            ("get", "/plans/{name}/state/stream"),
        ];
        for (method, path, expected, list) in &calls {
            let documented = documented_answers(&doc, method, path);
            assert!(
                documented.contains(expected),
                "{} {path}: the client expects {expected}, the server documents {documented:?}",
                method.to_uppercase()
            );
            assert_eq!(
                documented.first().map(String::as_str) == Some("array"),
                *list,
                "{} {path}: list or not",
                method.to_uppercase()
            );
        }
        let covered: std::collections::BTreeSet<(String, String)> = calls
            .iter()
            .map(|(m, p, _, _)| (m.to_string(), p.to_string()))
            .chain(not_json.iter().map(|(m, p)| (m.to_string(), p.to_string())))
            .collect();
        let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                let path = path.trim_start_matches("/api/v1").to_string();
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.clone(), path.clone()))
            })
            .collect();
        assert_eq!(
            documented, covered,
            "every documented operation is checked here (add the client call, or say why not)"
        );
    }
}
