//! Execution logs, served from the files dopi and dopv wrote: the whole log, one node's, by
//! level, events after a sequence number, and a live websocket stream that resumes from one.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use dopc_client::api::{Level, LogEvents, LogText, StreamEnd};
use serde::{Deserialize, Serialize};

use super::blocking;
use super::log_files::{self, seq_of};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::execution::Execution;
use crate::server::AppState;

/// How long a stream waits for a client to take a message before it drops the client (who
/// resumes with `?since=` from the last sequence number it got).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// `?node=&level=&since=&limit=`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    node: Option<String>,
    level: Option<String>,
    since: Option<u64>,
    limit: Option<usize>,
}

/// A level word of the `level` filter or of a log line (any case). Levels order from `error`
/// to `debug`, so "that level and above" is `<=`.
fn level_of(word: &str) -> Option<Level> {
    match word.to_ascii_lowercase().as_str() {
        "debug" => Some(Level::Debug),
        "info" => Some(Level::Info),
        "warn" | "warning" => Some(Level::Warn),
        "error" => Some(Level::Error),
        _ => None,
    }
}

fn execution(state: &AppState, id: &str) -> Result<Execution, ApiError> {
    let n: u64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no execution '{id}' (ids are numbers)")))?;
    state
        .runner
        .book()
        .get(n)
        .ok_or_else(|| ApiError::no_execution(n))
}

fn dir(state: &AppState, e: &Execution) -> PathBuf {
    state.log_dir.join(&e.plan).join(&e.log_id)
}

/// `GET /executions/{id}/log`: the text, or with `since` the events.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum LogAnswer {
    /// The log as text.
    Text(LogText),
    /// The events after `since`.
    Events(LogEvents),
}

/// `GET /executions/{id}/log`.
#[utoipa::path(get, path = "/api/v1/executions/{id}/log", tag = "logs", params(("id" = u64, Path, description = "The execution"), ("node" = Option<String>, Query, description = "One node's log"), ("level" = Option<String>, Query, description = "debug, info, warn or error: that level and above"), ("since" = Option<u64>, Query, description = "Events after this sequence number, as JSON"), ("limit" = Option<usize>, Query, description = "With `since`: at most this many events (continue from `last_seq`)")), responses((status = 200, description = "`{execution, status, log}`, or with `since` `{execution, status, events, last_seq}`; streamed from the files, so a log of any size is served in little memory", body = LogAnswer), (status = 404, description = "No such execution or node log", body = crate::openapi::ErrorBody), (status = 422, description = "Unknown level, a limit of 0, or a limit without since", body = crate::openapi::ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let min = match &q.level {
        Some(l) => Some(level_of(l).ok_or_else(|| {
            ApiError::invalid(
                "invalid_query",
                format!("unknown level '{l}': use debug, info, warn or error"),
            )
        })?),
        None => None,
    };
    match (q.since, q.limit) {
        (_, Some(0)) => {
            return Err(ApiError::invalid(
                "invalid_query",
                "`limit` must be at least 1",
            ))
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "invalid_query",
                "`limit` pages events: give `since` too (0 for the first page)",
            ))
        }
        _ => {}
    }
    let state = s.clone();
    let body = blocking(move || {
        let e = execution(&state, &id)?;
        let dir = dir(&state, &e);
        if let Some(since) = q.since {
            let path = dir.join("events.jsonl");
            let file = log_files::open(&path).map_err(|err| cannot_read(&path, err))?;
            let filter = log_files::EventFilter {
                node: q.node,
                min,
                limit: q.limit,
            };
            return Ok(log_files::events_answer(
                e.id, e.status, file, since, filter,
            ));
        }
        let path = match &q.node {
            Some(node) => {
                if node.is_empty() || node.contains('/') || node.starts_with('.') {
                    return Err(ApiError::invalid(
                        "invalid_query",
                        format!("'{node}' is not a node name"),
                    ));
                }
                dir.join(format!("{node}.log"))
            }
            None => dir.join("all.log"),
        };
        let file = log_files::open(&path).map_err(|err| cannot_read(&path, err))?;
        if file.is_none() {
            if let Some(node) = &q.node {
                return Err(ApiError::not_found(format!(
                    "execution {} has no log of node '{node}'",
                    e.id
                )));
            }
        }
        let filter = min.map(|min| -> log_files::LineFilter {
            Box::new(move |line: &str| {
                line.split_whitespace()
                    .nth(1)
                    .and_then(level_of)
                    .is_some_and(|level| level <= min)
            })
        });
        Ok(log_files::text_answer(e.id, e.status, file, filter))
    })
    .await?;
    Ok(Response::builder()
        .header(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )
        .body(body)
        .unwrap_or_default())
}

fn cannot_read(path: &std::path::Path, err: std::io::Error) -> ApiError {
    ApiError::internal(format!("cannot read {}: {err}", path.display()))
}

/// `?since=SEQ` for the stream.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    #[serde(default)]
    since: u64,
}

/// `GET /executions/{id}/log/stream` (websocket): every event after `since`, live until the
/// execution ends, then `{"kind": "end", "status"}` and a normal close.
#[utoipa::path(get, path = "/api/v1/executions/{id}/log/stream", tag = "logs", params(("id" = u64, Path, description = "The execution"), ("since" = Option<u64>, Query, description = "Start after this sequence number (default 0)")), responses((status = 101, description = "Websocket: one JSON event per message, live, then `{kind: end, status, last_seq}` and a close. A client that does not read for 10 s is closed with code 4000 and the sequence number to resume from; one whose token is revoked, within 2 s with code 4401 `token revoked`")))]
pub async fn stream(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // The book is in memory: no store work, nothing to take off the workers.
    let e = execution(&s, &id)?;
    Ok(ws.on_upgrade(move |socket| follow(s, caller, e, q.since, socket)))
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

/// Sends messages with one flush at the end.
async fn send_all(socket: &mut WebSocket, lines: Vec<String>) -> bool {
    use futures_util::SinkExt;
    let work = async {
        for line in lines {
            socket.feed(Message::Text(line.into())).await?;
        }
        socket.flush().await
    };
    matches!(tokio::time::timeout(SEND_TIMEOUT, work).await, Ok(Ok(())))
}

async fn close(socket: &mut WebSocket, code: u16, reason: String) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

/// How many streams read their execution's file at the same time.
static FILE_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// A stream's reading position in `events.jsonl`.
struct Tail {
    path: PathBuf,
    /// Where the next read starts; `None` until the first read has found the first event
    /// after `last` (a binary search, not a read from the start).
    offset: Option<u64>,
    /// Bytes of a line (or a character) not complete yet.
    partial: Vec<u8>,
    last: u64,
    /// The last read reached the end of the file.
    at_end: bool,
}

impl Tail {
    fn new(path: PathBuf, since: u64) -> Tail {
        Tail {
            path,
            offset: None,
            partial: Vec::new(),
            last: since,
            at_end: false,
        }
    }

    /// The complete events of the next piece of the file (at most [`log_files::CHUNK`]
    /// bytes) with a sequence number above `last`; `at_end` says whether more is there now.
    async fn read(&mut self) -> Vec<String> {
        let (path, start, since) = (self.path.clone(), self.offset, self.last);
        // A hundred streams catching up at once would each take a thread of the blocking pool
        // for a moment; a few at a time read as fast and keep the server's threads few.
        let Ok(_turn) = FILE_READS.acquire().await else {
            return Vec::new();
        };
        let read = tokio::task::spawn_blocking(move || read_from(&path, start, since))
            .await
            .ok()
            .flatten();
        let Some((bytes, offset)) = read else {
            self.at_end = true;
            return Vec::new();
        };
        self.at_end = bytes.len() < log_files::CHUNK;
        self.offset = Some(offset);
        self.partial.extend_from_slice(&bytes);
        let mut out = Vec::new();
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(line) = self.fresh(line.trim_end()) {
                out.push(line);
            }
        }
        out
    }

    /// The line when its event comes after `last` (and moves `last` on).
    fn fresh(&mut self, line: &str) -> Option<String> {
        let seq = seq_of(line)?;
        (seq > self.last).then(|| {
            self.last = seq;
            line.to_string()
        })
    }
}

async fn follow(s: AppState, caller: Caller, e: Execution, since: u64, mut socket: WebSocket) {
    let _counted = s.metrics.subscriber(crate::metrics::Stream::Log);
    let revoked = crate::auth::revoked(s.clone(), caller.clone());
    tokio::pin!(revoked);
    let mut tail = Tail::new(dir(&s, &e).join("events.jsonl"), since);
    let mut closing = s.closing.clone();
    // Subscribed before the file is read, so nothing falls between the two.
    let mut live = s.runner.live_log(e.id).map(|log| log.subscribe());
    // Everything in the file after `tail.last`, a piece at a time (never the whole file in
    // memory), each piece in one write.
    macro_rules! catch_up {
        () => {
            loop {
                let lines = tail.read().await;
                if !lines.is_empty() && !send_all(&mut socket, lines).await {
                    close(
                        &mut socket,
                        4000,
                        format!("lagged: reconnect with ?since={}", tail.last),
                    )
                    .await;
                    return;
                }
                if tail.at_end {
                    break;
                }
            }
        };
    }
    catch_up!();
    if let Some(rx) = live.as_mut() {
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Ok(line) => {
                        // Whatever else is waiting goes out in the same write.
                        let mut batch: Vec<String> = tail.fresh(&line).into_iter().collect();
                        while batch.len() < 256 {
                            match rx.try_recv() {
                                Ok(more) => batch.extend(tail.fresh(&more)),
                                Err(_) => break,
                            }
                        }
                        if !send_all(&mut socket, batch).await {
                            close(&mut socket, 4000, format!("lagged: reconnect with ?since={}", tail.last)).await;
                            return;
                        }
                    }
                    // Too far behind the live feed: catch up from the file, then go on.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => catch_up!(),
                    // The execution's log is closed: it has ended.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                _ = closing.changed() => {
                    close(&mut socket, 1001, format!("the server is stopping: reconnect with ?since={}", tail.last)).await;
                    return;
                }
                () = &mut revoked => {
                    close(&mut socket, crate::auth::CLOSE_REVOKED, "token revoked".into()).await;
                    return;
                }
                msg = socket.recv() => {
                    if matches!(msg, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                        return;
                    }
                }
            }
        }
    }
    // Ended, or not started yet: the rest of the file; then either the end message, once the
    // execution's record says how it ended, or (it started meanwhile) the live feed again.
    let mut started = s.runner.subscribe_started();
    loop {
        catch_up!();
        let id = e.id;
        let current = s.runner.book().get(id);
        match current {
            Some(c) if !c.status.is_final() => {
                if live.is_none() && s.runner.live_log(id).is_some() {
                    // It was waiting in the queue and runs now.
                    return Box::pin(follow(s.clone(), caller, e.clone(), tail.last, socket)).await;
                }
                // Woken when an execution starts (or, for an ending one, now and then).
                tokio::select! {
                    _ = started.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = closing.changed() => {
                        close(&mut socket, 1001, format!("the server is stopping: reconnect with ?since={}", tail.last)).await;
                        return;
                    }
                    () = &mut revoked => {
                        close(&mut socket, crate::auth::CLOSE_REVOKED, "token revoked".into()).await;
                        return;
                    }
                }
            }
            other => {
                catch_up!();
                let end = StreamEnd {
                    kind: "end".into(),
                    status: other.map(|c| c.status),
                    last_seq: tail.last,
                };
                let _ = send(&mut socket, serde_json::to_string(&end).unwrap_or_default()).await;
                close(&mut socket, 1000, "the execution has ended".into()).await;
                return;
            }
        }
    }
}

/// Up to [`log_files::CHUNK`] bytes from `offset` (first: from the line the search finds
/// for events after `since`), and the offset after them; `None` while there is no file.
fn read_from(path: &std::path::Path, offset: Option<u64>, since: u64) -> Option<(Vec<u8>, u64)> {
    let mut file = std::fs::File::open(path).ok()?;
    let offset = offset.unwrap_or_else(|| log_files::offset_after(&file, since));
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(log_files::CHUNK as u64)
        .read_to_end(&mut bytes)
        .ok()?;
    let next = offset + bytes.len() as u64;
    Some((bytes, next))
}
