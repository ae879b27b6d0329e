//! A plan's combined state: dopv's (per node: its standing — in sync, pending, drifted or
//! unknown, with the differing fields —, deployed entry, actual state, generation)
//! and dopi's (per step set, step and node), one document; and a websocket that pushes it on
//! every change.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use dop_core::{LookupSettings, NodeFacts, Resolver};
use dop_store::{App, Store};
use dopc_client::api::{
    NodeDisk, NodeState, NodeStepState, PlanState, StateStreamEnd, StepSetState, StepState,
    SyncCounts, SyncState,
};

use super::{blocking, mirror};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::server::AppState;

/// How often a state stream looks for a new state serial.
const POLL: Duration = Duration::from_millis(300);

/// The combined state document of a plan.
pub fn combined(
    store: &Store,
    name: &str,
    providers: &dopv::provider::ProviderOptions,
    settings: &LookupSettings,
) -> Result<PlanState, ApiError> {
    let iteration = store.iteration(name, None)?;
    let plan = &iteration.plan;
    let dopv_records = store.state(name, App::Dopv)?;
    let dopv = dopv::state::DopvState::from_records(&dopv_records).map_err(|reason| {
        ApiError::internal(format!("the dopv state of '{name}' is damaged: {reason}"))
    })?;
    let dopi_records = store.state(name, App::Dopi)?;
    let dopi = dopi::PlanState::from_records(&dopi_records);
    let resolver = Resolver::new(plan, settings).map_err(|e| ApiError::internal(e.to_string()))?;
    let step_sets = plan
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
            let steps = view
                .iter()
                .map(|(key, nodes)| StepState {
                    name: key.clone(),
                    state: mirror::run_state(dopi::RunState::aggregate(
                        nodes.iter().map(|(_, r)| r.state),
                    )),
                    nodes: nodes
                        .iter()
                        .map(|(n, r)| {
                            let node = NodeStepState {
                                state: mirror::run_state(r.state),
                                attempts: r.commands.iter().map(|c| c.attempts).max().unwrap_or(0),
                            };
                            (n.clone(), node)
                        })
                        .collect(),
                })
                .collect();
            let state = dopi::RunState::aggregate(
                view.iter()
                    .flat_map(|(_, n)| n.iter().map(|(_, r)| r.state)),
            );
            StepSetState {
                name: set.name.clone(),
                state: mirror::run_state(state),
                steps,
            }
        })
        .collect();
    let standings =
        dopv::standing::standings(name, plan, &dopv, providers, dopv::Permissions::default());
    let mut sync = SyncCounts::default();
    for standing in &standings {
        let count = match mirror::sync_state(standing.state) {
            SyncState::InSync => &mut sync.in_sync,
            SyncState::Pending => &mut sync.pending,
            SyncState::Drifted => &mut sync.drifted,
            SyncState::Unknown => &mut sync.unknown,
        };
        *count += 1;
    }
    let nodes = standings
        .iter()
        .map(|standing| {
            let n = &standing.node;
            let record = dopv.nodes.get(n);
            NodeState {
                name: n.clone(),
                in_plan: standing.in_plan,
                sync: mirror::node_sync(standing),
                status: record.map(|r| mirror::deploy_status(r.status)),
                generation: record.map(|r| r.generation),
                iteration: record.map(|r| r.iteration),
                actual: record.and_then(|r| r.actual.as_ref()).map(mirror::actual),
                refreshed_ms: record.and_then(|r| r.refreshed_ms),
                error: record.and_then(|r| r.error.clone()),
                disks: dopv.disks.get(n).map(|d| {
                    d.iter()
                        .map(|x| NodeDisk {
                            name: x.name.clone(),
                            size: x.size,
                        })
                        .collect()
                }),
            }
        })
        .collect();
    Ok(PlanState {
        plan: name.to_string(),
        iteration: iteration.info.number,
        serial: dopi_records.serial.max(dopv_records.serial),
        sync,
        nodes,
        step_sets,
    })
}

/// The document as JSON text. Serializing it cannot fail (plain structs, maps keyed by
/// strings); an empty text would be refused by every client rather than misread.
fn json_text(state: &PlanState) -> String {
    serde_json::to_string(state).unwrap_or_default()
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
        settings: &std::sync::Arc<LookupSettings>,
        changes: u64,
    ) -> Result<axum::body::Bytes, ApiError> {
        let mut entries = self.entries.lock().await;
        if let Some((at, seen, value)) = entries.get(name) {
            if at.elapsed() < FRESH && *seen == changes {
                return Ok(value.clone());
            }
        }
        let (store, n, p, l) = (
            store.clone(),
            name.to_string(),
            providers.clone(),
            settings.clone(),
        );
        let value = axum::body::Bytes::from(json_text(
            &blocking(move || combined(&store, &n, &p, &l)).await?,
        ));
        entries.retain(|_, (at, _, _)| at.elapsed() < FRESH);
        entries.insert(
            name.to_string(),
            (std::time::Instant::now(), changes, value.clone()),
        );
        Ok(value)
    }
}

/// `GET /plans/{name}/state` (at most 200 ms old).
#[utoipa::path(get, path = "/api/v1/plans/{name}/state", tag = "state", params(("name" = String, Path, description = "The plan")), responses((status = 200, description = "`{plan, iteration, serial, sync: {in_sync, pending, drifted, unknown}, nodes: [{name, in_plan, sync: {state, reason, held_back, drift, pending, refreshed_at, read_error}, status, generation, iteration, actual, error, disks}], step_sets: [{name, state, steps: [{name, state, nodes: {node: {state, attempts}}}]}]}`", body = PlanState), (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let body = s
        .state_cache
        .get(&s.store, &name, &s.providers, &s.lookup, s.runner.changes())
        .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// `GET /plans/{name}/state/stream` (websocket): the state now, then again after every change.
#[utoipa::path(get, path = "/api/v1/plans/{name}/state/stream", tag = "state", params(("name" = String, Path, description = "The plan")), responses((status = 101, description = "Websocket: the state document now, then again on every change; a stream whose token is revoked is closed within 2 s with code 4401 `token revoked`")))]
pub async fn stream(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let (store, n, p, l) = (
        s.store.clone(),
        name.clone(),
        s.providers.clone(),
        s.lookup.clone(),
    );
    let first = blocking(move || combined(&store, &n, &p, &l)).await?;
    Ok(ws.on_upgrade(move |socket| push(s, caller, name, first, socket)))
}

async fn push(s: AppState, caller: Caller, name: String, first: PlanState, mut socket: WebSocket) {
    let _counted = s.metrics.subscriber(crate::metrics::Stream::State);
    let revoked = crate::auth::revoked(s.clone(), caller);
    tokio::pin!(revoked);
    let mut closing = s.closing.clone();
    let (mut serial, mut iteration) = (first.serial, first.iteration);
    if tokio::time::timeout(
        Duration::from_secs(10),
        socket.send(Message::Text(json_text(&first).into())),
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
            () = &mut revoked => {
                let frame = axum::extract::ws::CloseFrame {
                    code: crate::auth::CLOSE_REVOKED,
                    reason: "token revoked".into(),
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    socket.send(Message::Close(Some(frame))),
                )
                .await;
                return;
            }
            msg = socket.recv() => {
                if matches!(msg, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                    return;
                }
                continue;
            }
        }
        let (store, n, p, l) = (
            s.store.clone(),
            name.clone(),
            s.providers.clone(),
            s.lookup.clone(),
        );
        let Ok(Ok(now)) = tokio::task::spawn_blocking(move || combined(&store, &n, &p, &l)).await
        else {
            // The plan is gone (removed): say so and end.
            let end = StateStreamEnd {
                kind: "end".into(),
                reason: "the plan is no longer in the store".into(),
            };
            let _ = socket
                .send(Message::Text(
                    serde_json::to_string(&end).unwrap_or_default().into(),
                ))
                .await;
            return;
        };
        let (new_serial, new_iteration) = (now.serial, now.iteration);
        if (new_serial, new_iteration) == (serial, iteration) {
            continue;
        }
        (serial, iteration) = (new_serial, new_iteration);
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            socket.send(Message::Text(json_text(&now).into())),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            // A client that does not read is dropped; the next connection gets the whole state.
            return;
        }
    }
}
