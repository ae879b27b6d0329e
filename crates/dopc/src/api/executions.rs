//! `/executions`: create (queued per plan), list, get, cancel, remove, clear.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use dop_store::now_ms;
use serde::Deserialize;
use serde_json::json;

use super::blocking;
use crate::auth::Caller;
use crate::error::{ApiError, Body, OptionalBody};
use crate::execution::{Execution, Status};
use crate::server::AppState;
use dopc_client::api::{CancelRequest, ClearRequest, ExecutionPage, ExecutionRequest};

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("no execution '{id}' (ids are numbers)")))
}

fn load(book: &crate::book::ExecutionBook, id: u64) -> Result<Execution, ApiError> {
    book.get(id).ok_or_else(|| ApiError::no_execution(id))
}

/// `POST /executions`: checks the plan, the step set and the options before anything is queued.
#[utoipa::path(post, path = "/api/v1/executions", tag = "executions", request_body = ExecutionRequest, responses((status = 201, description = "Queued (status `new`); it runs when its plan has no running execution", body = Execution), (status = 422, description = "No such plan, no such step set, bad node filter, unknown option", body = crate::openapi::ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<ExecutionRequest>,
) -> Result<(StatusCode, Json<Execution>), ApiError> {
    if !caller.scope.allows(&body.plan) {
        return Err(crate::runner::no_plan_to_run(&body.plan));
    }
    let runner = s.runner.clone();
    let execution = blocking(move || {
        runner.submit(crate::runner::Request {
            plan: body.plan,
            task: body.task,
            options: body.options,
            created_by: caller.name.clone(),
            reason: None,
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(execution)))
}

/// `?plan=&status=&limit=&before=&since=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    plan: Option<String>,
    status: Option<Status>,
    limit: Option<usize>,
    before: Option<u64>,
    since: Option<u64>,
}

/// `GET /executions`: a JSON array, oldest first (as the original).
#[utoipa::path(get, path = "/api/v1/executions", tag = "executions", params(("plan" = Option<String>, Query, description = "Only this plan's"), ("status" = Option<Status>, Query, description = "Only those with this status"), ExecutionPage), responses((status = 200, description = "Executions, oldest first (a bare array, as the original); with `limit`, one page of them", body = Vec<Execution>), (status = 422, description = "A limit out of range", body = crate::openapi::ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Execution>>, ApiError> {
    let page = ExecutionPage {
        limit: q.limit,
        before: q.before,
        since: q.since,
    };
    if let Some(problem) = page.problem() {
        return Err(ApiError::invalid("invalid_query", problem));
    }
    let executions = s.runner.book().page(
        |e| {
            caller.scope.allows(&e.plan)
                && q.plan.as_ref().is_none_or(|p| *p == e.plan)
                && q.status.is_none_or(|st| st == e.status)
        },
        &page,
    );
    Ok(Json(executions))
}

/// `GET /executions/{id}`.
#[utoipa::path(get, path = "/api/v1/executions/{id}", tag = "executions", params(("id" = u64, Path, description = "The execution")), responses((status = 200, description = "The execution", body = Execution), (status = 404, description = "No such execution", body = crate::openapi::ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(load(s.runner.book(), id)?))
}

/// `POST /executions/{id}/cancel`.
#[utoipa::path(post, path = "/api/v1/executions/{id}/cancel", tag = "executions", request_body(content = CancelRequest, description = "Optional"), params(("id" = u64, Path, description = "The execution")), responses((status = 200, description = "A waiting one is cancelled; a running one is asked to stop: 1st request graceful, 2nd (or `force`) terminates its commands, 3rd kills them", body = Execution), (status = 409, description = "It has finished", body = crate::openapi::ErrorBody)))]
pub async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody<CancelRequest>,
) -> Result<Json<Execution>, ApiError> {
    let id = parse_id(&id)?;
    let force = body.force;
    let runner = s.runner.clone();
    let e = blocking(move || runner.cancel(id, force)).await?;
    let runner = s.runner.clone();
    tokio::task::spawn_blocking(move || runner.kick());
    Ok(Json(e))
}

/// `DELETE /executions/{id}`: a finished or cancelled one, with its logs.
#[utoipa::path(delete, path = "/api/v1/executions/{id}", tag = "executions", params(("id" = u64, Path, description = "The execution")), responses((status = 200, description = "Removed, with its logs", body = Execution), (status = 409, description = "It has not finished", body = crate::openapi::ErrorBody)))]
pub async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    let id = parse_id(&id)?;
    let state = s.clone();
    blocking(move || {
        let e = load(state.runner.book(), id)?;
        if !e.status.is_final() {
            return Err(ApiError::conflict(format!(
                "execution {id} has not finished; cancel it first"
            )));
        }
        state.runner.book().write(&[(id, None)])?;
        crate::retention::remove_logs(&state.log_dir, &e);
        Ok(Json(e))
    })
    .await
}

/// `DELETE /executions`: removes finished executions by status (and plan, age), with logs.
#[utoipa::path(delete, path = "/api/v1/executions", tag = "executions", request_body = ClearRequest, responses((status = 200, description = "The removed executions (logs removed too)", body = Vec<Execution>), (status = 422, description = "No status, a status that is not final, or an `age` too large", body = crate::openapi::ErrorBody)))]
pub async fn clear(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<ClearRequest>,
) -> Result<Json<Vec<Execution>>, ApiError> {
    if body.statuses.is_empty() {
        return Err(ApiError::invalid(
            "invalid_body",
            "`statuses` must name at least one status",
        ));
    }
    if let Some(st) = body.statuses.iter().find(|st| !st.is_final()) {
        return Err(ApiError::invalid(
            "invalid_body",
            format!(
                "{} executions cannot be removed: only done, failed and cancelled ones",
                json!(st)
            ),
        ));
    }
    // Checked: an age that overflows in milliseconds wrapped to a small one in release builds
    // and removed every finished execution of the statuses.
    let min_age_ms = match body.age {
        None => None,
        Some(age) => Some(age.checked_mul(1000).ok_or_else(|| {
            ApiError::invalid(
                "invalid_body",
                format!(
                    "`age` {age} is too large: give at most {} seconds",
                    u64::MAX / 1000
                ),
            )
        })?),
    };
    let state = s.clone();
    blocking(move || {
        let now = now_ms();
        let removed: Vec<Execution> = state.runner.book().list(|e| {
            let old_enough = min_age_ms.is_none_or(|min_age_ms| {
                let finished = e
                    .finished_at
                    .as_deref()
                    .and_then(dop_store::parse_rfc3339)
                    .unwrap_or(now);
                now.saturating_sub(finished) >= min_age_ms
            });
            caller.scope.allows(&e.plan)
                && body.statuses.contains(&e.status)
                && body.plan.as_ref().is_none_or(|p| *p == e.plan)
                && old_enough
        });
        let changes: Vec<(u64, Option<Execution>)> = removed.iter().map(|e| (e.id, None)).collect();
        state.runner.book().write(&changes)?;
        for e in &removed {
            crate::retention::remove_logs(&state.log_dir, e);
        }
        Ok(Json(removed))
    })
    .await
}
