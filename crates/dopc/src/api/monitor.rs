//! `/plans/{name}/monitor` (a plan's refresh schedule and auto-sync policy, and what the monitor
//! last found) and `/metrics`.

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use dopc_client::api::MonitorDocument;

use super::blocking;
use crate::auth::Caller;
use crate::error::{ApiError, Body};
use crate::monitor::MonitorSettings;
use crate::server::AppState;

/// 404 unless the plan is in the store.
fn known(s: &AppState, name: &str) -> Result<(), ApiError> {
    s.store.entry(name)?;
    Ok(())
}

/// `GET /plans/{name}/monitor`.
#[utoipa::path(get, path = "/api/v1/plans/{name}/monitor", tag = "monitor", params(("name" = String, Path, description = "The plan")), responses((status = 200, description = "`{plan, settings, source: api|config|none, configured, status: {last_refresh, next_due_at, skipped, last_checked_at, verdict, findings, last_auto_sync}}`", body = MonitorDocument), (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<MonitorDocument>, ApiError> {
    blocking(move || {
        known(&s, &name)?;
        s.monitor.document(&name).map(Json)
    })
    .await
}

/// `PUT /plans/{name}/monitor`: sets the plan's monitor through the API (it wins over
/// `dopc.toml` until removed); the schedule starts over with a refresh now.
#[utoipa::path(put, path = "/api/v1/plans/{name}/monitor", tag = "monitor", request_body = MonitorSettings, params(("name" = String, Path, description = "The plan")), responses((status = 200, description = "The monitor document, as GET", body = MonitorDocument), (status = 404, description = "No such plan", body = crate::openapi::ErrorBody), (status = 422, description = "Bad settings (unknown key, interval 0)", body = crate::openapi::ErrorBody)))]
pub async fn put(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Body(settings): Body<MonitorSettings>,
) -> Result<Json<MonitorDocument>, ApiError> {
    blocking(move || {
        known(&s, &name)?;
        s.monitor.set(&name, Some(settings))?;
        s.monitor.document(&name).map(Json)
    })
    .await
}

/// `DELETE /plans/{name}/monitor`: removes the API setting; `dopc.toml`'s applies again.
#[utoipa::path(delete, path = "/api/v1/plans/{name}/monitor", tag = "monitor", params(("name" = String, Path, description = "The plan")), responses((status = 200, description = "The monitor document, as GET", body = MonitorDocument), (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)))]
pub async fn remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<MonitorDocument>, ApiError> {
    blocking(move || {
        known(&s, &name)?;
        s.monitor.set(&name, None)?;
        s.monitor.document(&name).map(Json)
    })
    .await
}

/// `GET /metrics`: Prometheus text (OpenMetrics) with the server's numbers.
#[utoipa::path(get, path = "/api/v1/metrics", tag = "monitor", responses((status = 200, description = "Prometheus text: dopc_executions{task,status}, dopc_queue_length, dopc_execution_duration_seconds{task,status}, dopc_nodes{plan,state}, dopc_dopi_commands_total{result}, dopc_websocket_subscribers{stream}, dopc_monitor_refreshes_skipped_total{plan}, dopc_monitor_auto_syncs_total{plan}", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let text = blocking(move || {
        s.metrics
            .scrape(&s.store, s.runner.book(), &s.providers)
            .map_err(|e| ApiError::internal(format!("cannot read the metrics: {e}")))
    })
    .await?;
    let text = match caller.scope.is_all() {
        true => text,
        false => crate::metrics::only_plans(&text, |plan| caller.scope.allows(plan)),
    };
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}
