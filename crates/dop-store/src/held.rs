//! Databases a long-running process keeps open between operations.
//!
//! A command-line tool opens a database per operation and is gone a moment later. A server
//! (dopc) reads the catalog and the plans' iterations with every request and every run, and
//! each open of a sled database costs milliseconds, a megabyte of fresh page table and a little
//! memory sled never gives back: opened per operation, the server's memory grows with its
//! uptime. Once [`crate::Store::hold_databases`] is called, the store keeps each database it
//! opens, and a watcher thread closes one
//!
//! * as soon as another process waits for it (it holds a shared `flock` on `<db>.wait`, see
//!   `backend`), so `dopi run` or `dopv sync` next to the server still get in within
//!   [`WATCH`];
//! * when it has not been used for [`IDLE`];
//! * the least recently used first, when more than [`MOST`] are open.
//!
//! A database is given up before the store removes it ([`Held::release`]); a run's state
//! session takes its plan's state database over for the run and gives it back at the end
//! ([`Held::take`], [`Held::give_back`]), so a plan that runs again and again is not opened
//! again and again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Database};
use crate::error::Result;

/// A database shared by the operations running on it.
pub(crate) type Shared = Arc<dyn Database + Send + Sync>;

/// How often the watcher looks for waiting processes and idle databases.
const WATCH: Duration = Duration::from_millis(50);
/// How long an unused database stays open.
const IDLE: Duration = Duration::from_secs(10);
/// How many databases stay open at most.
const MOST: usize = 32;

/// When the watcher closes a database nobody waits for.
#[derive(Clone, Copy)]
struct Limits {
    idle: Duration,
    most: usize,
}

/// One held database (`None`: closed, or not opened yet).
#[derive(Default)]
struct Slot {
    db: Option<Shared>,
    used: Option<Instant>,
}

type Slots = HashMap<PathBuf, Arc<Mutex<Slot>>>;

/// The store's opener: per operation, or held (see the module documentation). Clones share
/// the held databases.
#[derive(Clone)]
pub(crate) struct Held {
    backend: Arc<dyn Backend>,
    /// `None` until the process asks to hold its databases.
    slots: Arc<Mutex<Option<Slots>>>,
    limits: Limits,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Held {
    pub(crate) fn new(backend: Arc<dyn Backend>) -> Held {
        Held {
            backend,
            slots: Arc::new(Mutex::new(None)),
            limits: Limits {
                idle: IDLE,
                most: MOST,
            },
        }
    }

    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Keeps databases open from now on, and starts the watcher (once).
    pub(crate) fn hold(&self) {
        let mut slots = locked(&self.slots);
        if slots.is_some() {
            return;
        }
        *slots = Some(HashMap::new());
        let (weak, limits) = (Arc::downgrade(&self.slots), self.limits);
        let backend = self.backend.clone();
        let started = std::thread::Builder::new()
            .name("dop-store-held".into())
            .spawn(move || watch(weak, limits, &*backend));
        if started.is_err() {
            // Without a watcher nobody would let other processes in: open per operation.
            *slots = None;
        }
    }

    /// The database at `path`: the held one, or one opened for this operation.
    pub(crate) fn open(&self, path: &Path) -> Result<Shared> {
        let slot = locked(&self.slots)
            .as_mut()
            .map(|slots| slots.entry(path.to_path_buf()).or_default().clone());
        let Some(slot) = slot else {
            return Ok(Arc::from(self.backend.open(path)?));
        };
        // Per path: operations on other databases go on while this one opens (which may wait
        // for another process).
        let mut slot = locked(&slot);
        slot.used = Some(Instant::now());
        if let Some(db) = &slot.db {
            return Ok(db.clone());
        }
        // The watcher may just have given it up for a waiting process: let that one in first,
        // or this open would take it back before it had its turn.
        self.backend.let_waiters_in(path);
        let db: Shared = Arc::from(self.backend.open(path)?);
        slot.db = Some(db.clone());
        Ok(db)
    }

    /// Closes the held database at `path`, if any: before its files are removed, or before
    /// this process opens it another way (a state session). An operation still running on it
    /// keeps it until that operation ends.
    pub(crate) fn release(&self, path: &Path) {
        let slot = locked(&self.slots)
            .as_mut()
            .and_then(|slots| slots.remove(path));
        if let Some(slot) = slot {
            locked(&slot).db = None;
        }
    }

    /// Takes the held database at `path` out of the watcher's care, if one is open: a run's
    /// state session keeps it for the run and gives it back at the end ([`Held::give_back`]).
    pub(crate) fn take(&self, path: &Path) -> Option<Shared> {
        let slot = locked(&self.slots).as_mut()?.remove(path)?;
        // A reader opening it right now keeps its own: the session then opens it as well,
        // once the reader is done, instead of waiting here.
        let db = slot.try_lock().ok()?.db.take();
        db
    }

    /// Keeps `db` (the database at `path`) open when this process holds its databases; closes
    /// it otherwise.
    pub(crate) fn give_back(&self, path: &Path, db: Shared) {
        let mut slots = locked(&self.slots);
        let Some(slots) = slots.as_mut() else {
            return;
        };
        let slot = slots.entry(path.to_path_buf()).or_default().clone();
        // A reader that is opening it (and so waits for this very database) keeps the slot
        // locked: then this one closes, never waiting for the slot while holding what the
        // reader waits for.
        let Ok(mut slot) = slot.try_lock() else {
            return;
        };
        // Opened meanwhile by a reader: that one stays, this one closes.
        if slot.db.is_none() {
            slot.db = Some(db);
            slot.used = Some(Instant::now());
        }
    }

    /// How many databases are open now (for tests).
    #[cfg(test)]
    fn open_count(&self) -> usize {
        locked(&self.slots).as_ref().map_or(0, |slots| {
            slots.values().filter(|s| locked(s).db.is_some()).count()
        })
    }
}

/// The watcher: every [`WATCH`], closes what another process waits for, what was not used for
/// [`IDLE`], and the least recently used beyond [`MOST`]. Ends with the store.
fn watch(slots: Weak<Mutex<Option<Slots>>>, limits: Limits, backend: &dyn Backend) {
    loop {
        std::thread::sleep(WATCH);
        let Some(slots) = slots.upgrade() else {
            return;
        };
        let mut open: Vec<(PathBuf, Arc<Mutex<Slot>>, Instant)> = {
            let guard = locked(&slots);
            let Some(map) = guard.as_ref() else {
                return;
            };
            map.iter()
                .filter_map(|(path, slot)| {
                    let s = slot.try_lock().ok()?;
                    s.db.as_ref()?;
                    Some((path.clone(), slot.clone(), s.used?))
                })
                .collect()
        };
        drop(slots);
        open.sort_by_key(|(_, _, used)| std::cmp::Reverse(*used));
        let now = Instant::now();
        for (rank, (path, slot, used)) in open.into_iter().enumerate() {
            let waited_for = backend.someone_waits(&path);
            if !(waited_for || rank >= limits.most || now.duration_since(used) >= limits.idle) {
                continue;
            }
            // A slot in use (opening) is looked at again next time.
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            if slot.used != Some(used) {
                continue; // used since: it stays.
            }
            slot.db = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SledBackend;

    fn held() -> Held {
        let held = Held::new(Arc::new(SledBackend::default()));
        held.hold();
        held
    }

    #[test]
    fn a_held_database_stays_open_until_released_and_is_then_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let held = held();
        let path = dir.path().join("a");
        let first = held.open(&path).unwrap();
        let again = held.open(&path).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same database is handed out"
        );
        assert_eq!(held.open_count(), 1);
        drop((first, again));
        held.release(&path);
        assert_eq!(held.open_count(), 0);
        // Released, the files can go and the database is made anew when asked for.
        std::fs::remove_dir_all(&path).unwrap();
        held.open(&path).unwrap();
        assert_eq!(held.open_count(), 1);
    }

    /// Waits (boundedly) until `held` has `count` databases open.
    fn until_open(held: &Held, count: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        while held.open_count() != count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        held.open_count()
    }

    #[test]
    fn the_watcher_closes_unused_databases_and_the_least_recently_used_beyond_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut held = Held::new(Arc::new(SledBackend::default()));
        held.limits = Limits {
            idle: Duration::from_secs(3600),
            most: 2,
        };
        held.hold();
        for name in ["a", "b", "c", "d"] {
            held.open(&dir.path().join(name)).unwrap();
        }
        assert_eq!(until_open(&held, 2), 2);
        let still_open = |name: &str| {
            let slots = locked(&held.slots);
            let slot = slots.as_ref().unwrap().get(&dir.path().join(name)).cloned();
            slot.is_some_and(|s| locked(&s).db.is_some())
        };
        assert!(still_open("c") && still_open("d"), "the newest stay open");

        let mut held = Held::new(Arc::new(SledBackend::default()));
        held.limits = Limits {
            idle: Duration::from_millis(100),
            most: 32,
        };
        held.hold();
        held.open(&dir.path().join("e")).unwrap();
        assert_eq!(until_open(&held, 0), 0, "an unused database stays open");
    }

    #[test]
    fn without_hold_every_operation_opens_its_own_database() {
        let dir = tempfile::tempdir().unwrap();
        let held = Held::new(Arc::new(SledBackend::default()));
        let path = dir.path().join("a");
        let db = held.open(&path).unwrap();
        drop(db);
        assert_eq!(held.open_count(), 0);
        // Closed: another opener gets it.
        SledBackend::default().open(&path).unwrap();
    }
}
