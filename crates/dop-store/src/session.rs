//! A run's hold on its plan's state database.
//!
//! Opening and closing a sled database costs milliseconds, and a run writes a state transition
//! before and after every command: opened per write, the store, not the nodes, would set the
//! pace of a large run. A [`StateSession`] keeps the state database open on one thread for the
//! run, writes every transition that arrives while it is busy in one durable commit (group
//! commit), and serves the run's own reads. It gives the database up whenever it is idle for a
//! moment and whenever another process waits for it (a reader that finds the database held
//! keeps a shared `flock` on `state.wait`, see `backend`), so `show` and `list` keep working
//! while a run writes.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::{self, Backend, Database};
use crate::error::{Result, StoreError};
use crate::store::{read_serial, read_state, write_batch, App, StateRecords};

/// How long the session keeps the database open with nothing to do.
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

/// Reads and durable writes of one plan's state, on a thread that keeps the database open
/// while the run is busy. Made by [`crate::Store::state_session`] for a run lock's holder.
pub struct StateSession {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

fn ended(path: &std::path::Path) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: "the state writer of this run stopped".into(),
    }
}

impl StateSession {
    pub(crate) fn start(backend: Arc<dyn Backend>, path: PathBuf) -> StateSession {
        let (tx, rx) = mpsc::channel();
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("dop-state".into())
            .spawn(move || serve(&*backend, &thread_path, &rx))
            .ok();
        StateSession {
            requests: thread.is_some().then_some(tx),
            thread,
            path,
        }
    }

    fn send(&self, request: Request) {
        let failed = match &self.requests {
            Some(tx) => tx.send(request).err().map(|e| e.0),
            None => Some(request),
        };
        // The thread is gone: answer here.
        match failed {
            Some(Request::Write { reply, .. }) => reply(Err(ended(&self.path))),
            Some(Request::Read { reply, .. }) => reply(Err(ended(&self.path))),
            None => {}
        }
    }

    /// Writes state records (a `None` value removes one) durably, then calls `done` with the
    /// new serial, on the session's thread. Writes that arrive together share one commit.
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

    /// Reads a tool's records, then calls `done` with them, on the session's thread.
    pub fn read_then(&self, app: App, done: impl FnOnce(Result<StateRecords>) + Send + 'static) {
        self.send(Request::Read {
            app,
            reply: Box::new(done),
        });
    }

    /// Writes state records; resolves with the new serial once they are durable.
    #[cfg(feature = "async")]
    pub async fn write_async(&self, app: App, changes: Changes) -> Result<u64> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.write_then(app, changes, move |r| {
            let _ = done.send(r);
        });
        result.await.unwrap_or_else(|_| Err(ended(&self.path)))
    }

    /// Reads a tool's records without blocking the caller's runtime.
    #[cfg(feature = "async")]
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
        // Every write was acknowledged once durable; closing the channel ends the thread,
        // which closes the database.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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

fn serve(backend: &dyn Backend, path: &std::path::Path, requests: &mpsc::Receiver<Request>) {
    let mut db: Option<Box<dyn Database + '_>> = None;
    loop {
        let first = if db.is_some() {
            match requests.recv_timeout(IDLE) {
                Ok(r) => r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    db = None;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match requests.recv() {
                Ok(r) => r,
                Err(_) => return,
            }
        };
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        if db.is_some() && backend::someone_waits(path) {
            db = None;
            backend::let_waiters_in(path);
        }
        if db.is_none() {
            match backend.open(path) {
                Ok(d) => db = Some(d),
                Err(e) => {
                    for request in batch {
                        match request {
                            Request::Write { reply, .. } => reply(Err(copy_of(&e, path))),
                            Request::Read { reply, .. } => reply(Err(copy_of(&e, path))),
                        }
                    }
                    continue;
                }
            }
        }
        let Some(open) = db.as_deref() else { continue };
        serve_batch(open, path, batch);
    }
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
