//! A run's hold on its plan's state database.
//!
//! Opening and closing a sled database costs milliseconds and a megabyte of fresh page table,
//! and a run writes a state transition before and after every command: opened per write, the
//! store, not the nodes, would set the pace of a large run (and, in dopc with many plans, the
//! server's memory). A [`StateSession`] keeps the state database open for the run, writes every
//! transition that arrives while it is busy in one durable commit (group commit), and serves
//! the run's own reads and those of its process ([`crate::Store::state`] asks the live session
//! instead of taking its database away). It is a task of the run's runtime, not a thread: dopc
//! runs many plans at once on one runtime, and each commit goes to the runtime's blocking pool
//! only for as long as it takes. It gives the database up when another process waits for it
//! (a reader that finds the database held keeps a shared `flock` on `state.wait`, see
//! `backend`), looked at with every request and every 50 ms while idle, so `show` and `list`
//! keep working while a run writes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use std::time::Duration;
use tokio::sync::mpsc as queue;

use crate::backend::{Backend, Database};
use crate::error::{Result, StoreError};
use crate::held::{Held, Shared};
use crate::store::{read_serial, read_state, write_batch, App, StateRecords};

/// How often an idle session looks for another process waiting for its database.
const IDLE: Duration = Duration::from_millis(50);

type Changes = Vec<(String, Option<serde_json::Value>)>;
type WriteReply = Box<dyn FnOnce(Result<u64>) + Send>;
type ReadReply = Box<dyn FnOnce(Result<StateRecords>) + Send>;

enum Request {
    Write {
        app: App,
        changes: Changes,
        reply: WriteReply,
    },
    Read {
        app: App,
        reply: ReadReply,
    },
}

/// Reads and durable writes of one plan's state, served by a task that keeps the database open
/// while the run is busy. Made by [`crate::Store::state_session`] for a run lock's holder.
pub struct StateSession {
    requests: Option<queue::UnboundedSender<Request>>,
    live: LiveSessions,
    /// Disconnects when the serving loop has returned (and closed the database). In a mutex
    /// only so that the session can be shared with the run's tasks (a receiver is not `Sync`).
    served: std::sync::Mutex<Option<mpsc::Receiver<()>>>,
    path: PathBuf,
}

fn ended(path: &std::path::Path) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: "the state writer of this run stopped".into(),
    }
}

impl StateSession {
    pub(crate) fn start(held: Held, path: PathBuf, live: LiveSessions) -> StateSession {
        let (tx, rx) = queue::unbounded_channel();
        let (served_tx, served) = mpsc::channel::<()>();
        let serving_path = path.clone();
        let serving = async move {
            serve(held, serving_path, rx).await;
            drop(served_tx);
        };
        let requests = spawn(serving).then_some(tx);
        if let Some(tx) = &requests {
            live.add(&path, tx.clone());
        }
        StateSession {
            requests,
            live,
            served: std::sync::Mutex::new(Some(served)),
            path,
        }
    }

    fn send(&self, request: Request) {
        let failed = match &self.requests {
            Some(tx) => tx.send(request).err().map(|e| e.0),
            None => Some(request),
        };
        // The serving task is gone: answer here.
        match failed {
            Some(Request::Write { reply, .. }) => reply(Err(ended(&self.path))),
            Some(Request::Read { reply, .. }) => reply(Err(ended(&self.path))),
            None => {}
        }
    }

    /// Writes state records (a `None` value removes one) durably, then calls `done` with the
    /// new serial, on the blocking pool. Writes that arrive together share one commit.
    pub fn write_then(
        &self,
        app: App,
        changes: Changes,
        done: impl FnOnce(Result<u64>) + Send + 'static,
    ) {
        self.send(Request::Write {
            app,
            changes,
            reply: Box::new(done),
        });
    }

    /// Writes state records and returns the new serial once they are durable.
    pub fn write(&self, app: App, changes: Changes) -> Result<u64> {
        let (tx, rx) = mpsc::channel();
        self.write_then(app, changes, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or_else(|_| Err(ended(&self.path)))
    }

    /// Reads a tool's records, then calls `done` with them, on the blocking pool.
    pub fn read_then(&self, app: App, done: impl FnOnce(Result<StateRecords>) + Send + 'static) {
        self.send(Request::Read {
            app,
            reply: Box::new(done),
        });
    }

    /// Writes state records; resolves with the new serial once they are durable.
    pub async fn write_async(&self, app: App, changes: Changes) -> Result<u64> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.write_then(app, changes, move |r| {
            let _ = done.send(r);
        });
        result.await.unwrap_or_else(|_| Err(ended(&self.path)))
    }

    /// Reads a tool's records without blocking the caller's runtime.
    pub async fn read_async(&self, app: App) -> Result<StateRecords> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.read_then(app, move |r| {
            let _ = done.send(r);
        });
        result.await.unwrap_or_else(|_| Err(ended(&self.path)))
    }

    /// Reads a tool's records.
    pub fn read(&self, app: App) -> Result<StateRecords> {
        let (tx, rx) = mpsc::channel();
        self.read_then(app, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or_else(|_| Err(ended(&self.path)))
    }
}

impl Drop for StateSession {
    fn drop(&mut self) {
        // Every write was acknowledged once durable; closing the queue ends the serving task,
        // which closes the database. The run lock is released after this returns.
        if let Some(tx) = self.requests.take() {
            self.live.remove(&self.path, &tx);
        }
        let served = self.served.get_mut().map(Option::take);
        if let Ok(Some(served)) = served {
            let wait = move || {
                let _ = served.recv();
            };
            // On an async worker, hand the worker's other tasks (the serving task may be among
            // them) to another thread while waiting.
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
                _ => wait(),
            }
        }
    }
}

/// Starts the serving task on the caller's runtime; without one (a caller outside any run),
/// on a small runtime of its own thread. False when neither could be had.
fn spawn(serving: impl std::future::Future<Output = ()> + Send + 'static) -> bool {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        drop(runtime.spawn(serving));
        return true;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return false;
    };
    std::thread::Builder::new()
        .name("dop-state".into())
        .spawn(move || runtime.block_on(serving))
        .is_ok()
}

/// The same error for each of the requests it failed (errors are not `Clone`: an I/O error
/// keeps its kind and text, a busy or damaged database stays what it was).
fn copy_of(e: &StoreError, path: &std::path::Path) -> StoreError {
    match e {
        StoreError::Busy { path, seconds } => StoreError::Busy {
            path: path.clone(),
            seconds: *seconds,
        },
        StoreError::Io { path, source } => StoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StoreError::Corrupt { path, reason } => StoreError::Corrupt {
            path: path.clone(),
            reason: reason.clone(),
        },
        other => StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// The state sessions of this process by database path, for the process's own readers.
#[derive(Clone, Default)]
pub(crate) struct LiveSessions(
    Arc<std::sync::Mutex<HashMap<PathBuf, queue::UnboundedSender<Request>>>>,
);

impl LiveSessions {
    fn add(&self, path: &std::path::Path, requests: queue::UnboundedSender<Request>) {
        self.map().insert(path.to_path_buf(), requests);
    }

    fn remove(&self, path: &std::path::Path, requests: &queue::UnboundedSender<Request>) {
        let mut map = self.map();
        if map.get(path).is_some_and(|r| r.same_channel(requests)) {
            map.remove(path);
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, queue::UnboundedSender<Request>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tool's records read by the live session of the database at `path`, if this process
    /// has one: it has the database open, and a reader opening it would make it close and
    /// open it again. Blocks until the session answers (call it off the async workers).
    pub(crate) fn read(&self, path: &std::path::Path, app: App) -> Option<Result<StateRecords>> {
        let requests = self.map().get(path).cloned()?;
        let (tx, rx) = mpsc::channel();
        let reply: ReadReply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        requests.send(Request::Read { app, reply }).ok()?;
        rx.recv().ok()
    }
}

type Open = Option<Shared>;

/// Serves the run's requests until the session is dropped: the database stays open for the
/// run (given up while another process waits for it); every round of requests is answered on
/// the blocking pool. A database this process holds open is taken over at the start and given
/// back at the end.
async fn serve(held: Held, path: PathBuf, mut requests: queue::UnboundedReceiver<Request>) {
    let backend = held.backend().clone();
    let mut db: Open = held.take(&path);
    loop {
        let first = if db.is_some() {
            match tokio::time::timeout(IDLE, requests.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(_idle) => {
                    // Kept open for the run's next transition (a run waits on its nodes most
                    // of the time), unless another process waits for the database: then it
                    // is given up within IDLE. A probe is one open, flock and close.
                    if backend.someone_waits(&path) {
                        let (waited, backend) = (path.clone(), backend.clone());
                        db = off_workers(move || {
                            drop(db);
                            backend.let_waiters_in(&waited);
                            None
                        })
                        .await;
                    }
                    continue;
                }
            }
        } else {
            match requests.recv().await {
                Some(r) => r,
                None => break,
            }
        };
        let mut batch = vec![first];
        while let Ok(r) = requests.try_recv() {
            batch.push(r);
        }
        let (backend, round_path) = (backend.clone(), path.clone());
        db = off_workers(move || serve_round(&*backend, &round_path, db, batch)).await;
    }
    off_workers(move || {
        if let Some(db) = db {
            held.give_back(&path, db);
        }
        None
    })
    .await;
}

/// Runs store work on the blocking pool; `None` comes back where the database was (closed).
async fn off_workers(work: impl FnOnce() -> Open + Send + 'static) -> Open {
    match tokio::task::spawn_blocking(work).await {
        Ok(db) => db,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_cancelled) => None,
        },
    }
}

/// One round: lets a waiting process in first, opens the database when closed, answers the
/// requests; returns the database, still open (`None` when it could not be opened).
fn serve_round(
    backend: &dyn Backend,
    path: &std::path::Path,
    mut db: Open,
    batch: Vec<Request>,
) -> Open {
    if db.is_some() && backend.someone_waits(path) {
        db = None;
        backend.let_waiters_in(path);
    }
    if db.is_none() {
        match backend.open(path) {
            Ok(d) => db = Some(Arc::from(d)),
            Err(e) => {
                for request in batch {
                    match request {
                        Request::Write { reply, .. } => reply(Err(copy_of(&e, path))),
                        Request::Read { reply, .. } => reply(Err(copy_of(&e, path))),
                    }
                }
                return None;
            }
        }
    }
    if let Some(open) = db.as_deref() {
        serve_batch(open, path, batch);
    }
    db
}

/// Answers the requests in order; consecutive writes share one commit.
fn serve_batch(db: &dyn Database, path: &std::path::Path, batch: Vec<Request>) {
    let mut writes: Vec<(App, Changes, WriteReply)> = Vec::new();
    let flush = |writes: &mut Vec<(App, Changes, WriteReply)>| {
        if writes.is_empty() {
            return;
        }
        let outcome = read_serial(db, path).and_then(|serial| {
            let mut records = Vec::new();
            for (app, changes, _) in writes.iter() {
                records.push((*app, changes.as_slice()));
            }
            write_batch(db, &records, serial + 1).map(|()| serial + 1)
        });
        for (_, _, reply) in writes.drain(..) {
            reply(match &outcome {
                Ok(serial) => Ok(*serial),
                Err(e) => Err(copy_of(e, path)),
            });
        }
    };
    for request in batch {
        match request {
            Request::Write {
                app,
                changes,
                reply,
            } => writes.push((app, changes, reply)),
            Request::Read { app, reply } => {
                flush(&mut writes);
                reply(read_state(db, path, app));
            }
        }
    }
    flush(&mut writes);
}
