//! A plan's combined state: dopv's (per node: its standing — in sync, pending, drifted or
//! unknown, with the differing fields —, deployed entry, actual state, generation)
//! and dopi's (per step set, step and node), one document; and a websocket that pushes it on
//! every change.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use dop_core::{LookupSettings, NodeFacts, Resolver};
use dop_store::{App, Store};
use serde_json::{json, Value};

use super::blocking;
use crate::error::ApiError;
use crate::server::AppState;

/// How often a state stream looks for a new state serial.
const POLL: Duration = Duration::from_millis(300);

/// The combined state document of a plan.
pub fn combined(
    store: &Store,
    name: &str,
    providers: &dopv::provider::ProviderOptions,
) -> Result<Value, ApiError> {
    let iteration = store.iteration(name, None)?;
    let plan = &iteration.plan;
    let dopv_records = store.state(name, App::Dopv)?;
    let dopv = dopv::state::DopvState::from_records(&dopv_records).map_err(|reason| {
        ApiError::internal(format!("the dopv state of '{name}' is damaged: {reason}"))
    })?;
    let dopi_records = store.state(name, App::Dopi)?;
    let dopi = dopi::PlanState::from_records(&dopi_records);
    let settings = LookupSettings::default();
    let resolver = Resolver::new(plan, &settings);
    let step_sets: Vec<Value> = plan
        .step_sets
        .iter()
        .map(|set| {
            let view = dopi.step_set_view(set, |step| {
                step.filter
                    .select(&resolver)
                    .nodes
                    .iter()
                    .map(|&i| resolver.name(i).to_string())
                    .collect()
            });
            let steps: Vec<Value> = view
                .iter()
                .map(|(key, nodes)| {
                    let state = dopi::RunState::aggregate(nodes.iter().map(|(_, r)| r.state));
                    json!({
                        "name": key, "state": state.as_str(),
                        "nodes": nodes.iter().map(|(n, r)| (n.clone(), json!({
                            "state": r.state.as_str(),
                            "attempts": r.commands.iter().map(|c| c.attempts).max().unwrap_or(0),
                        }))).collect::<serde_json::Map<_, _>>(),
                    })
                })
                .collect();
            let state = dopi::RunState::aggregate(
                view.iter()
                    .flat_map(|(_, n)| n.iter().map(|(_, r)| r.state)),
            );
            json!({"name": set.name, "state": state.as_str(), "steps": steps})
        })
        .collect();
    let standings =
        dopv::standing::standings(name, plan, &dopv, providers, dopv::Permissions::default());
    let mut counts = serde_json::Map::new();
    for word in dopv::standing::SyncState::ALL {
        let n = standings.iter().filter(|s| s.state == word).count();
        counts.insert(word.name().to_string(), n.into());
    }
    let nodes: Vec<Value> = standings
        .iter()
        .map(|standing| {
            let n = &standing.node;
            let record = dopv.nodes.get(n);
            json!({
                "name": n,
                "in_plan": standing.in_plan,
                "sync": {
                    "state": standing.state,
                    "reason": standing.action.as_ref().map(|a| a.reason),
                    "held_back": standing.action.as_ref().map(|a| a.held_back.clone()).unwrap_or_default(),
                    "drift": standing.drift,
                    "pending": standing.pending,
                    "refreshed_at": standing.refreshed_ms.map(dop_store::rfc3339),
                    "read_error": standing.read_error,
                },
                "status": record.map(|r| r.status),
                "generation": record.map(|r| r.generation),
                "iteration": record.map(|r| r.iteration),
                "actual": record.and_then(|r| r.actual.clone()),
                "refreshed_ms": record.and_then(|r| r.refreshed_ms),
                "error": record.and_then(|r| r.error.clone()),
                "disks": dopv.disks.get(n).map(|d| d.iter().map(|x| json!({"name": x.name, "size": x.size})).collect::<Vec<_>>()),
            })
        })
        .collect();
    Ok(json!({
        "plan": name, "iteration": iteration.info.number, "serial": dopi_records.serial.max(dopv_records.serial),
        "sync": counts, "nodes": nodes, "step_sets": step_sets,
    }))
}

/// How long a computed state document is served before it is computed again. Reading a
/// plan's state opens its databases, which a busy run holds; many readers share one reading.
const FRESH: Duration = Duration::from_millis(200);

/// When it was computed, the runner's change count then, and the document.
type Entry = (std::time::Instant, u64, axum::body::Bytes);

/// Recently computed state documents by plan.
#[derive(Default)]
pub struct StateCache {
    entries: tokio::sync::Mutex<std::collections::HashMap<String, Entry>>,
}

impl StateCache {
    /// The plan's state as JSON, at most [`FRESH`] old, and never older than the last
    /// change the runner noted (`changes`): a client that saw an execution end or a plan
    /// update reads the state after it.
    pub async fn get(
        &self,
        store: &std::sync::Arc<Store>,
        name: &str,
        providers: &dopv::provider::ProviderOptions,
        changes: u64,
    ) -> Result<axum::body::Bytes, ApiError> {
        let mut entries = self.entries.lock().await;
        if let Some((at, seen, value)) = entries.get(name) {
            if at.elapsed() < FRESH && *seen == changes {
                return Ok(value.clone());
            }
        }
        let (store, n, p) = (store.clone(), name.to_string(), providers.clone());
        let value = axum::body::Bytes::from(
            blocking(move || combined(&store, &n, &p))
                .await?
                .to_string(),
        );
        entries.retain(|_, (at, _, _)| at.elapsed() < FRESH);
        entries.insert(
            name.to_string(),
            (std::time::Instant::now(), changes, value.clone()),
        );
        Ok(value)
    }
}

/// `GET /plans/{name}/state` (at most 200 ms old).
#[utoipa::path(get, path = "/api/v1/plans/{name}/state", tag = "state", params(("name" = String, Path, description = "The plan")), responses((status = 200, description = "`{plan, iteration, serial, sync: {in_sync, pending, drifted, unknown}, nodes: [{name, in_plan, sync: {state, reason, held_back, drift, pending, refreshed_at, read_error}, status, generation, iteration, actual, error, disks}], step_sets: [{name, state, steps: [{name, state, nodes: {node: {state, attempts}}}]}]}`", body = serde_json::Value), (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let body = s
        .state_cache
        .get(&s.store, &name, &s.providers, s.runner.changes())
        .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// `GET /plans/{name}/state/stream` (websocket): the state now, then again after every change.
#[utoipa::path(get, path = "/api/v1/plans/{name}/state/stream", tag = "state", params(("name" = String, Path, description = "The plan")), responses((status = 101, description = "Websocket: the state document now, then again on every change")))]
pub async fn stream(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let (store, n, p) = (s.store.clone(), name.clone(), s.providers.clone());
    let first = blocking(move || combined(&store, &n, &p)).await?;
    Ok(ws.on_upgrade(move |socket| push(s, name, first, socket)))
}

async fn push(s: AppState, name: String, first: Value, mut socket: WebSocket) {
    let _counted = s.metrics.subscriber(crate::metrics::Stream::State);
    let mut closing = s.closing.clone();
    let mut serial = first["serial"].as_u64().unwrap_or(0);
    let mut iteration = first["iteration"].as_u64().unwrap_or(0);
    if tokio::time::timeout(
        Duration::from_secs(10),
        socket.send(Message::Text(first.to_string().into())),
    )
    .await
    .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = closing.changed() => return,
            msg = socket.recv() => {
                if matches!(msg, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                    return;
                }
                continue;
            }
        }
        let (store, n, p) = (s.store.clone(), name.clone(), s.providers.clone());
        let Ok(Ok(now)) = tokio::task::spawn_blocking(move || combined(&store, &n, &p)).await
        else {
            // The plan is gone (removed): say so and end.
            let _ = socket
                .send(Message::Text(
                    json!({"kind": "end", "reason": "the plan is no longer in the store"})
                        .to_string()
                        .into(),
                ))
                .await;
            return;
        };
        let (new_serial, new_iteration) = (
            now["serial"].as_u64().unwrap_or(0),
            now["iteration"].as_u64().unwrap_or(0),
        );
        if (new_serial, new_iteration) == (serial, iteration) {
            continue;
        }
        (serial, iteration) = (new_serial, new_iteration);
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            socket.send(Message::Text(now.to_string().into())),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            // A client that does not read is dropped; the next connection gets the whole state.
            return;
        }
    }
}
