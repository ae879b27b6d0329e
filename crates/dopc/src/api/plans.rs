//! `/plans`: add, update, read, list, versions, diff, remove, reset.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine;
use dop_core::{LookupSettings, Severity};
use dop_run::Masker;
use dop_store::Stored;
use dopc_client::api::{
    Finding, IterationInfo, PlanDiffAnswer, PlanList, PlanRemoved, PlanReset, PlanStored,
    PlanSummary, PlanText, PlanUpload, ResetRequest, StoredStatus, Versions,
};
use dopi::update::StateChoice;
use serde::Deserialize;

use super::blocking;
use crate::auth::Caller;
use crate::error::{ApiError, Body, OptionalBody};
use crate::server::AppState;

fn plan_text(body: &PlanUpload) -> Result<String, ApiError> {
    if body.plan.is_some() && body.content.is_none() && body.text.is_none() {
        // With `clear` or `ignore` the caller handles it before (see `update_with`).
        return Err(ApiError::invalid(
            "invalid_body",
            "send the plan's `content` (base64) or `text`; dop keeps state across iterations by itself",
        ));
    }
    match (&body.content, &body.text) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "invalid_body",
            "send either `content` (base64) or `text`, not both",
        )),
        (None, None) => Err(ApiError::invalid(
            "invalid_body",
            "the plan is missing: send `content` (base64 of the YAML) or `text`",
        )),
        (Some(c), None) => {
            let cleaned: String = c.chars().filter(|ch| !ch.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(cleaned)
                .map_err(|e| {
                    ApiError::invalid("invalid_body", format!("`content` is not base64: {e}"))
                })?;
            String::from_utf8(bytes)
                .map_err(|_| ApiError::invalid("invalid_body", "`content` is not UTF-8 text"))
        }
        (None, Some(t)) => Ok(t.clone()),
    }
}

/// Loads and checks a plan text (with dopi's plugin checks, roles resolved as runs resolve
/// them); the findings on failure.
fn load(text: &str, settings: &LookupSettings) -> Result<dop_core::Plan, ApiError> {
    let loaded = dop_core::load_str(text, None, settings);
    let mut diagnostics = loaded.diagnostics.clone();
    if let Some(plan) = &loaded.plan {
        diagnostics.extend(dopi::cli::plugin_check(plan));
    }
    let errors: Vec<&dop_core::Diagnostic> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    match (&loaded.plan, errors.is_empty()) {
        (Some(plan), true) => Ok(plan.clone()),
        _ => Err(ApiError::invalid(
            "invalid_plan",
            format!("the plan is not valid ({} error(s))", errors.len().max(1)),
        )
        .with_findings(findings(&diagnostics))),
    }
}

/// A refused plan's findings, as `error.details`.
fn findings(diagnostics: &[dop_core::Diagnostic]) -> Vec<Finding> {
    diagnostics
        .iter()
        .map(|d| Finding {
            path: d.path.clone(),
            line: d.line,
            column: d.column,
            message: d.message.clone(),
            severity: d.severity,
        })
        .collect()
}

/// An iteration as the API shows it (the client's type, so that the two cannot drift).
fn iteration(info: &dop_store::IterationInfo) -> IterationInfo {
    IterationInfo {
        number: info.number,
        time_ms: info.time_ms,
        hash: info.hash.clone(),
        nodes: info.nodes,
        step_sets: info.step_sets,
        steps: info.steps,
        source: info.source.clone(),
    }
}

fn stored_answer(stored: &Stored, name: &str) -> PlanStored {
    let (status, info) = match stored {
        Stored::New(info) if info.number == 1 => (StoredStatus::Added, info),
        Stored::New(info) => (StoredStatus::Updated, info),
        Stored::Unchanged(info) => (StoredStatus::Unchanged, info),
    };
    PlanStored {
        name: name.to_string(),
        status,
        iteration: iteration(info),
        diff: None,
        state: None,
    }
}

/// What an update does to dopi's step state (`clear`, `ignore`), as `dopi update`.
fn state_choice(body: &PlanUpload) -> Result<Option<StateChoice>, ApiError> {
    match (body.clear, body.ignore) {
        (true, true) => Err(ApiError::invalid(
            "invalid_body",
            "`clear` and `ignore` exclude each other: send one",
        )),
        (true, false) => Ok(Some(StateChoice::Clear)),
        (false, true) => Ok(Some(StateChoice::Keep)),
        (false, false) => Ok(None),
    }
}

/// `GET /plans`.
#[utoipa::path(get, path = "/api/v1/plans", tag = "plans", responses((status = 200, description = "The stored plans: `{plans: [{name, latest, nodes, created_at, updated_at}]}`", body = PlanList), (status = 401, description = "No valid token", body = crate::openapi::ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<PlanList>, ApiError> {
    let store = s.store.clone();
    let plans = blocking(move || Ok(store.list()?)).await?;
    Ok(Json(PlanList {
        plans: plans
            .iter()
            .filter(|p| caller.scope.allows(&p.name))
            .map(|p| PlanSummary {
                name: p.name.clone(),
                latest: p.latest,
                nodes: p.nodes.len(),
                created_at: dop_store::rfc3339(p.created_ms),
                updated_at: dop_store::rfc3339(p.updated_ms),
            })
            .collect(),
    }))
}

/// `POST /plans`.
#[utoipa::path(post, path = "/api/v1/plans", tag = "plans", request_body = PlanUpload, responses((status = 201, description = "Stored: `{name, status: added|updated|unchanged, iteration}`", body = PlanStored), (status = 409, description = "The plan exists (use `force`), a node belongs to another plan, or (with `force`) the plan has a running execution", body = crate::openapi::ErrorBody), (status = 422, description = "Not a valid plan: `details` lists every finding with its path and line", body = crate::openapi::ErrorBody)))]
pub async fn add(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<PlanUpload>,
) -> Result<(StatusCode, Json<PlanStored>), ApiError> {
    let text = plan_text(&body)?;
    let store = s.store.clone();
    let runner = s.runner.clone();
    let force = body.force;
    let lookup = s.lookup.clone();
    let value = blocking(move || {
        let plan = load(&text, &lookup)?;
        if !caller.scope.allows(&plan.name) {
            return Err(ApiError::no_plan(&plan.name));
        }
        // `force` replaces a stored plan: as an update, never under a running execution (the
        // execution's run lock refuses it too, the moment it has the plan).
        if force && runner.plan_busy(&plan.name) {
            return Err(running_execution(&plan.name));
        }
        let stored = store.add(&text, &plan, None, force)?;
        Ok(stored_answer(&stored, &plan.name))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(value)))
}

/// 409 for a plan change while an execution of the plan runs.
fn running_execution(plan: &str) -> ApiError {
    ApiError::conflict(format!(
        "plan '{plan}' has a running execution; update it when it ends"
    ))
}

fn update_with(
    s: &AppState,
    caller: Caller,
    name: Option<String>,
    body: PlanUpload,
) -> impl std::future::Future<Output = Result<Json<PlanStored>, ApiError>> + Send + 'static {
    let store = s.store.clone();
    let runner = s.runner.clone();
    let lookup = s.lookup.clone();
    async move {
        let choice = state_choice(&body)?;
        if let (Some(path), Some(named)) = (&name, &body.plan) {
            if path != named {
                return Err(ApiError::invalid(
                    "invalid_body",
                    format!("the body names plan '{named}', not '{path}'"),
                ));
            }
        }
        let named = body.plan.clone().or_else(|| name.clone());
        if let (Some(choice), Some(named), None, None) = (choice, named, &body.content, &body.text)
        {
            return blocking(move || {
                if !caller.scope.allows(&named) {
                    return Err(ApiError::no_plan(&named));
                }
                if runner.plan_busy(&named) {
                    return Err(running_execution(&named));
                }
                let lock = store.lock(&named, "dopc plan update")?;
                let latest = store.iteration(&named, None)?;
                let mut answer = stored_answer(&Stored::Unchanged(latest.info), &named);
                answer.state = Some(choice.apply(&store, &lock, &latest.plan)?);
                Ok(Json(answer))
            })
            .await;
        }
        let text = plan_text(&body)?;
        let value = blocking(move || {
            let plan = load(&text, &lookup)?;
            if !caller.scope.allows(&plan.name) {
                return Err(ApiError::no_plan(&plan.name));
            }
            if let Some(name) = name.filter(|n| *n != plan.name) {
                return Err(ApiError::invalid(
                    "invalid_body",
                    format!("the plan is named '{}', not '{name}'", plan.name),
                ));
            }
            if runner.plan_busy(&plan.name) {
                return Err(running_execution(&plan.name));
            }
            let (stored, state) = match choice {
                Some(choice) => {
                    let lock = store.lock(&plan.name, "dopc plan update")?;
                    let stored = store.update_holding(&lock, &text, &plan, None)?;
                    (stored, Some(choice.apply(&store, &lock, &plan)?))
                }
                None => (store.update(&text, &plan, None)?, None),
            };
            let mut answer = stored_answer(&stored, &plan.name);
            answer.state = state;
            if matches!(stored, Stored::New(_)) {
                let (from, to, changes) = store.diff(&plan.name, None, None)?;
                answer.diff = Some(PlanDiffAnswer {
                    from,
                    to,
                    changes,
                    text: None,
                });
            }
            Ok(answer)
        })
        .await?;
        Ok(Json(value))
    }
}

/// `PUT /plans/{name}`.
#[utoipa::path(put, path = "/api/v1/plans/{name}", tag = "plans", request_body = PlanUpload, params(("name" = String, Path, description = "The plan")), responses((status = 200, description = "Stored as the next iteration (with its `diff`), or unchanged", body = PlanStored), (status = 409, description = "The plan has a running execution", body = crate::openapi::ErrorBody), (status = 422, description = "Not a valid plan, or another plan's name", body = crate::openapi::ErrorBody)))]
pub async fn update(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(body): Body<PlanUpload>,
) -> Result<Json<PlanStored>, ApiError> {
    update_with(&s, caller, Some(name), body).await
}

/// `PUT /plans` (the original's form: the name comes from the plan).
#[utoipa::path(put, path = "/api/v1/plans", tag = "plans", request_body = PlanUpload, responses((status = 200, description = "As `PUT /plans/{name}`, the name taken from the plan (the original's form)", body = PlanStored)))]
pub async fn update_original(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<PlanUpload>,
) -> Result<Json<PlanStored>, ApiError> {
    update_with(&s, caller, None, body).await
}

/// `?version=N`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    version: Option<u64>,
}

/// `GET /plans/{name}`: the stored text (secrets masked), base64 as the original, and plain.
#[utoipa::path(get, path = "/api/v1/plans/{name}", tag = "plans", params(("name" = String, Path, description = "The plan"), ("version" = Option<u64>, Query, description = "An iteration (default: the latest)")), responses((status = 200, description = "`{name, iteration, content (base64), text}`; passwords and private keys masked", body = PlanText), (status = 404, description = "No such plan or iteration", body = crate::openapi::ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<PlanText>, ApiError> {
    let store = s.store.clone();
    let it = blocking(move || Ok(store.iteration(&name, q.version)?)).await?;
    // By position in the YAML (any spelling of a secret), then by value (a secret repeated
    // elsewhere in the text); nothing is read or run for it.
    let by_position = dop_core::mask_secret_scalars(&it.text);
    let text = Masker::for_literals(&it.plan)
        .mask(by_position.as_deref().unwrap_or(&it.text))
        .into_owned();
    Ok(Json(PlanText {
        name: it.plan.name.clone(),
        iteration: iteration(&it.info),
        content: base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
        text,
    }))
}

/// `GET /plans/{name}/versions`.
#[utoipa::path(get, path = "/api/v1/plans/{name}/versions", tag = "plans", params(("name" = String, Path, description = "The plan")), responses((status = 200, description = "`{versions: [{number, time_ms, hash, nodes, step_sets, steps}]}`, oldest first", body = Versions), (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)))]
pub async fn versions(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Versions>, ApiError> {
    let store = s.store.clone();
    let versions = blocking(move || Ok(store.versions(&name)?)).await?;
    Ok(Json(Versions {
        versions: versions.iter().map(iteration).collect(),
    }))
}

/// `?from=N&to=M`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: Option<u64>,
    to: Option<u64>,
}

/// `GET /plans/{name}/diff`.
#[utoipa::path(get, path = "/api/v1/plans/{name}/diff", tag = "plans", params(("name" = String, Path, description = "The plan"), ("from" = Option<u64>, Query, description = "Iteration (default: the one before `to`)"), ("to" = Option<u64>, Query, description = "Iteration (default: the latest)")), responses((status = 200, description = "`{from, to, changes, text}`: what changed, by name", body = PlanDiffAnswer), (status = 404, description = "No such plan or iteration", body = crate::openapi::ErrorBody)))]
pub async fn diff(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Json<PlanDiffAnswer>, ApiError> {
    let store = s.store.clone();
    let (from, to, changes) = blocking(move || Ok(store.diff(&name, q.from, q.to)?)).await?;
    let text = Some(changes.to_string());
    Ok(Json(PlanDiffAnswer {
        from,
        to,
        changes,
        text,
    }))
}

/// `DELETE /plans/{name}`: refused while it has waiting or running executions or deployed nodes.
#[utoipa::path(delete, path = "/api/v1/plans/{name}", tag = "plans", params(("name" = String, Path, description = "The plan")), responses((status = 200, description = "Removed with its iterations and state", body = PlanRemoved), (status = 404, description = "No such plan", body = crate::openapi::ErrorBody), (status = 409, description = "It has waiting or running executions, or deployed nodes", body = crate::openapi::ErrorBody)))]
pub async fn remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PlanRemoved>, ApiError> {
    let (store, monitor, runner) = (s.store.clone(), s.monitor.clone(), s.runner.clone());
    blocking(move || {
        let pending = runner
            .book()
            .any(|e| e.plan == name && !e.status.is_final());
        if pending {
            return Err(ApiError::conflict(format!(
                "plan '{name}' has waiting or running executions; cancel them first"
            )));
        }
        store.remove(&name, false, false)?;
        // A plan added again later under this name starts unmonitored (dopc.toml aside).
        monitor.set(&name, None)?;
        Ok(Json(PlanRemoved {
            name,
            status: "removed".into(),
        }))
    })
    .await
}

/// `PUT /plans/{name}/reset`: dopi's step state back to ready (failed and interrupted work;
/// with `force` all), of every step set, of `step_set`, or of its `step`, as `dopi reset`.
#[utoipa::path(put, path = "/api/v1/plans/{name}/reset", tag = "plans", request_body(content = ResetRequest, description = "Optional"), params(("name" = String, Path, description = "The plan")), responses((status = 200, description = "`{name, reset}`: node records put back to ready", body = PlanReset), (status = 409, description = "The plan has a running execution", body = crate::openapi::ErrorBody), (status = 422, description = "`invalid_reset`: the plan has no such step set or step (nothing was reset)", body = crate::openapi::ErrorBody)))]
pub async fn reset(
    State(s): State<AppState>,
    Path(name): Path<String>,
    OptionalBody(body): OptionalBody<ResetRequest>,
) -> Result<Json<PlanReset>, ApiError> {
    let ResetRequest {
        force,
        step_set,
        step,
    } = body;
    let (store, runner, lookup) = (s.store.clone(), s.runner.clone(), s.lookup.clone());
    blocking(move || {
        if runner.plan_busy(&name) {
            return Err(ApiError::conflict(format!(
                "plan '{name}' has a running execution"
            )));
        }
        let opts = dopi::ResetOptions {
            step_set,
            step,
            filter: dop_core::NodeFilter::all(),
            force,
        };
        let n = dopi::reset(&store, &name, &opts, &lookup).map_err(|e| match e {
            dopi::ResetError::Store(e) => ApiError::from(e),
            other => ApiError::invalid("invalid_reset", other.to_string()),
        })?;
        Ok(Json(PlanReset {
            name,
            reset: u64::try_from(n).unwrap_or(u64::MAX),
        }))
    })
    .await
}
