//! The key-value layer under the store, and its sled implementation.
//!
//! sled takes an exclusive lock on a database for as long as it is open, and only one process
//! can have it open. The store therefore does not keep a database open by default: every
//! operation opens it, does its reads or one atomic, flushed write, and closes it. A process that finds a
//! database open elsewhere waits briefly and retries, so readers (`show`, `list`) work while a
//! run writes state, and runs on different plans (different databases) never meet.
//!
//! While it waits, a process holds a shared `flock` on `<database>.wait`. A run's state session
//! (the one holder that keeps a database open for longer) checks that file before each write
//! and closes the database while anyone waits.
//!
//! The PostgreSQL backend (`pg`) implements the same traits on shared tables, where
//! nobody has to wait.

use std::fs::File;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Result, StoreError};
use crate::lock::{Holder, RunLock};

/// Writes applied together: all or nothing, durable when `commit` returns.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The writes, in order (`None`: a removal).
    pub(crate) fn into_ops(self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.ops
    }
}

/// An open database.
pub trait Database {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The last entry whose key starts with `prefix`.
    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Applies the batch atomically and makes it durable before returning.
    fn commit(&self, batch: Batch) -> Result<()>;
}

/// A held plan lock, released when dropped (see [`Backend::lock`]).
pub trait HeldLock: Send + Sync + std::fmt::Debug {}

impl<T: Send + Sync + std::fmt::Debug> HeldLock for T {}

/// Opens databases by path, and keeps plans' run locks.
///
/// Everything but `open` has the sled store's behaviour by default (files beside the
/// databases), so a backend that wraps the sled one only implements `open`; the PostgreSQL
/// backend (`postgres`) implements them all.
pub trait Backend: Send + Sync {
    /// Opens (creating if needed) the database at `path`, waiting while another process has it.
    /// The database may move between threads (a run's state session commits on the blocking
    /// pool) and be shared by them (a server holds its databases open, see `held`).
    fn open(&self, path: &Path) -> Result<Box<dyn Database + Send + Sync>>;

    /// True when the database at `path` has been made (a plan's state before its first write
    /// has not).
    fn exists(&self, path: &Path) -> Result<bool> {
        Ok(path.exists())
    }

    /// Removes the database at `path` and everything in it (nothing when there is none). The
    /// caller has closed it.
    fn destroy(&self, path: &Path) -> Result<()> {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(path, e)),
            _ => Ok(()),
        }
    }

    /// Takes the run lock of `plan` for `command` (`file`: the sled store's lock file), or says
    /// who holds it. Returns the lock and, when the previous holder died holding it, who that
    /// was.
    fn lock(
        &self,
        file: &Path,
        plan: &str,
        command: &str,
    ) -> Result<(Box<dyn HeldLock>, Option<Holder>)> {
        let lock = RunLock::acquire(file, plan, command)?;
        let took_over_from = lock.took_over_from.clone();
        Ok((Box::new(lock), took_over_from))
    }

    /// Who holds the run lock of `plan` now, if anyone.
    fn lock_holder(&self, file: &Path, _plan: &str) -> Option<Holder> {
        RunLock::holder(file)
    }

    /// True when another process waits for the database at `path`, which this one should then
    /// close (sled: one process per database).
    fn someone_waits(&self, path: &Path) -> bool {
        someone_waits(path)
    }

    /// Waits (briefly) until the processes waiting for the database at `path` have had it.
    fn let_waiters_in(&self, path: &Path) {
        let_waiters_in(path)
    }
}

/// The sled backend.
#[derive(Clone, Debug)]
pub struct SledBackend {
    /// How long to wait for a database another process has open.
    pub wait: Duration,
}

impl Default for SledBackend {
    fn default() -> SledBackend {
        SledBackend {
            wait: Duration::from_secs(30),
        }
    }
}

struct SledDatabase {
    db: sled::Db,
    path: PathBuf,
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl SledDatabase {
    fn fail(&self, e: sled::Error) -> StoreError {
        match e {
            sled::Error::Io(io) => StoreError::io(&self.path, io),
            other => corrupt(&self.path, other),
        }
    }
}

impl Database for SledDatabase {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.fail(e))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.db
            .scan_prefix(prefix)
            .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .map_err(|e| self.fail(e))
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.db
            .scan_prefix(prefix)
            .next_back()
            .transpose()
            .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .map_err(|e| self.fail(e))
    }

    fn commit(&self, batch: Batch) -> Result<()> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch.ops {
            match value {
                Some(v) => sled_batch.insert(key, v),
                None => sled_batch.remove(key),
            }
        }
        self.db.apply_batch(sled_batch).map_err(|e| self.fail(e))?;
        self.db.flush().map(|_| ()).map_err(|e| self.fail(e))
    }
}

/// sled reports a database open elsewhere as an `Other` error whose text names the lock (and,
/// in the same process, a database still shutting down after its last handle was dropped).
fn is_lock_contention(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// The file whose shared lock says "a process waits for this database".
fn wait_marker(path: &Path) -> PathBuf {
    path.with_extension("wait")
}

fn open_marker(path: &Path) -> Option<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(wait_marker(path))
        .ok()
}

/// Shows that this process waits for the database at `path` (until the value is dropped).
fn announce_waiting(path: &Path) -> Option<File> {
    let file = open_marker(path)?;
    file.lock_shared().ok()?;
    Some(file)
}

/// True when another process waits for the database at `path`.
pub(crate) fn someone_waits(path: &Path) -> bool {
    let Some(file) = open_marker(path) else {
        return false;
    };
    // Closing the file releases the lock when we got it.
    file.try_lock().is_err()
}

/// Waits (at most a few seconds) until the processes waiting for the database at `path` have
/// had their turn: they hold their shared lock until they have opened it.
pub(crate) fn let_waiters_in(path: &Path) {
    let Some(file) = open_marker(path) else {
        return;
    };
    let start = Instant::now();
    while file.try_lock().is_err() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What [`clear_torn_snapshots`] found.
enum Torn {
    /// Leftover snapshot files were removed: open again.
    Cleared,
    /// Another process holds the database (it opened it): open again, waiting as for any
    /// holder.
    Busy,
    /// Nothing to remove: the damage is elsewhere.
    Nothing,
}

/// Removes the snapshot files a killed process left half written.
///
/// sled writes a snapshot of a changed database each time it opens it: into
/// `snap.<lsn>.generating`, then renamed to `snap.<lsn>`. sled 0.34 also reads a leftover
/// `.generating` file as the newest snapshot, and a torn one fails its checksum, so a process
/// killed in that window (and every store operation opens a database) would leave the
/// database unopenable. The log those snapshots summarise is intact, and sled rebuilds the
/// snapshot from the older one and the log. This runs only after an open failed, holding the
/// database's lock (the one sled takes, so no other process can be writing a snapshot).
fn clear_torn_snapshots(path: &Path) -> Torn {
    let Ok(db_file) = File::options().read(true).write(true).open(path.join("db")) else {
        return Torn::Nothing;
    };
    if db_file.try_lock().is_err() {
        return Torn::Busy;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return Torn::Nothing;
    };
    let mut cleared = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            cleared |= std::fs::remove_file(entry.path()).is_ok();
        }
    }
    if cleared {
        Torn::Cleared
    } else {
        Torn::Nothing
    }
}

impl Backend for SledBackend {
    fn open(&self, path: &Path) -> Result<Box<dyn Database + Send + Sync>> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        let mut waiting: Option<File> = None;
        let mut cleared = false;
        loop {
            let config = sled::Config::new()
                .path(path)
                // We flush after every write ourselves; no background flusher thread.
                .flush_every_ms(None)
                .cache_capacity(32 * 1024 * 1024);
            // sled can panic on some damaged files; a damaged store is an error, not a crash.
            let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
                .unwrap_or_else(|_| {
                    Err(sled::Error::Unsupported(
                        "the database files are damaged".into(),
                    ))
                });
            match opened {
                Ok(db) => {
                    return Ok(Box::new(SledDatabase {
                        db,
                        path: path.to_path_buf(),
                    }))
                }
                Err(sled::Error::Io(e)) if is_lock_contention(&e) => {
                    if waiting.is_none() {
                        waiting = announce_waiting(path);
                    }
                    if start.elapsed() >= self.wait {
                        return Err(StoreError::Busy {
                            path: path.to_path_buf(),
                            seconds: self.wait.as_secs(),
                        });
                    }
                    // Jittered back-off: holders keep a database for milliseconds.
                    let jitter =
                        Duration::from_micros(u64::from(start.elapsed().subsec_nanos() % 997));
                    std::thread::sleep(pause + jitter);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(sled::Error::Io(e)) => return Err(StoreError::io(path, e)),
                Err(e @ sled::Error::Corruption { .. }) if !cleared => {
                    match clear_torn_snapshots(path) {
                        Torn::Cleared => cleared = true,
                        Torn::Busy if start.elapsed() < self.wait => std::thread::sleep(pause),
                        Torn::Busy | Torn::Nothing => return Err(corrupt(path, e)),
                    }
                }
                Err(e) => return Err(corrupt(path, e)),
            }
        }
    }
}
