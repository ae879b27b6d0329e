//! The plan store: plan iterations, the catalog of plans and nodes, and state records.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dop_core::{Plan, PlanDiff};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, Batch, Database, HeldLock, SledBackend};
use crate::error::{Result, StoreError};
use crate::held::{Held, Shared};
use crate::layout::{check_name, Layout};
use crate::lock::Holder;
use crate::session::StateSession;
use dop_core::time::now_ms;

/// The tools that keep state in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum App {
    /// dopi's run state.
    Dopi,
    /// dopv's deployment state.
    Dopv,
    /// SSH host keys seen per node (trust on first use).
    Hosts,
}

impl App {
    fn prefix(self) -> &'static str {
        match self {
            App::Dopi => "rec/dopi/",
            App::Dopv => "rec/dopv/",
            App::Hosts => "rec/hosts/",
        }
    }
}

/// What describes one stored iteration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IterationInfo {
    /// 1 for the first iteration, then counting up.
    pub number: u64,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// SHA-256 of the stored text, hex.
    pub hash: String,
    /// Nodes, step sets and steps of this iteration.
    pub nodes: usize,
    /// Step sets.
    pub step_sets: usize,
    /// Steps.
    pub steps: usize,
    /// The file it was read from, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A stored iteration: its description, the text (includes expanded) and the parsed plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Iteration {
    /// Number, time, hash.
    pub info: IterationInfo,
    /// The plan text as stored.
    pub text: String,
    /// The plan as parsed when it was stored.
    pub plan: Plan,
}

/// A plan in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEntry {
    /// The plan's name.
    pub name: String,
    /// When it was added, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When its latest iteration was stored.
    pub updated_ms: u64,
    /// Its latest iteration.
    pub latest: u64,
    /// Its nodes (of the latest iteration).
    pub nodes: Vec<String>,
}

/// What `add` or `update` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A new iteration was stored.
    New(IterationInfo),
    /// The plan is the same as the latest iteration: nothing was stored.
    Unchanged(IterationInfo),
}

/// The state records of one tool for one plan, with the serial they were read at.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateRecords {
    /// Increases with every state write of the plan.
    pub serial: u64,
    /// Records by key.
    pub records: BTreeMap<String, serde_json::Value>,
}

/// Proof that this process holds a plan's run lock; state writes need one. A clone shares the
/// lock (dopc holds it across the dopv and dopi parts of one execution and hands each a
/// clone); it is released when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct PlanLock {
    plan: String,
    /// Held for its release on drop (the last clone's).
    _held: std::sync::Arc<dyn HeldLock>,
    took_over_from: Option<Holder>,
}

impl PlanLock {
    /// The plan.
    pub fn plan(&self) -> &str {
        &self.plan
    }

    /// The holder of a lock this one took over from a process that died, if any.
    pub fn took_over_from(&self) -> Option<&Holder> {
        self.took_over_from.as_ref()
    }
}

/// A store directory.
pub struct Store {
    layout: Layout,
    /// Opens databases: per operation, or kept open for a server (see `held`).
    held: Held,
    /// The state sessions open in this process, so that its readers ask them instead of
    /// taking their database away (dopc reads the state of plans its executions are running).
    live: crate::session::LiveSessions,
}

const PLAN_KEY: &str = "plan/";
const NODE_KEY: &str = "node/";
const INFO_KEY: &str = "info/";
const ITERATION_KEY: &str = "iteration/";
const SERIAL_KEY: &[u8] = b"serial";

fn iteration_key(prefix: &str, n: u64) -> Vec<u8> {
    format!("{prefix}{n:020}").into_bytes()
}

fn decode<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("unreadable record: {e}"),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn compress(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

fn decompress(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("damaged iteration: {e}"),
        })?;
    Ok(out)
}

/// SHA-256 of a text, hex.
pub fn content_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Store {
    /// Opens (creating if needed) the store at `root` with the sled backend.
    pub fn open(root: &Path) -> Result<Store> {
        Store::with_backend(root, Box::new(SledBackend::default()))
    }

    /// Opens the store at `root`: on the PostgreSQL database `url` names when there is one
    /// (`store_url`; the directory then keeps only the documents, see `records`), with sled in
    /// the directory otherwise. A bad URL, an unreachable server, a refused login or a newer
    /// schema is an error before anything is written.
    pub fn open_at(root: &Path, url: Option<&str>) -> Result<Store> {
        match url.filter(|u| !u.is_empty()) {
            Some(url) => {
                let backend = crate::pg::PgBackend::connect(url, root)?;
                Store::with_backend(root, Box::new(backend))
            }
            None => Store::open(root),
        }
    }

    /// Opens the store at `root` with another backend.
    pub fn with_backend(root: &Path, backend: Box<dyn Backend>) -> Result<Store> {
        let layout = Layout::new(root);
        layout.ensure()?;
        Ok(Store {
            layout,
            held: Held::new(Arc::from(backend)),
            live: crate::session::LiveSessions::default(),
        })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    pub(crate) fn db(&self, path: &Path) -> Result<Shared> {
        self.held.open(path)
    }

    /// Keeps the databases this process opens open between operations, instead of opening
    /// each per operation: for a server, which reads the catalog, iterations and its records
    /// with every request and every run. Another process that wants one of them still gets it
    /// within a fraction of a second, and an unused one is closed after a while (see `held`).
    /// It also sets the C allocator up for a long-running process (large blocks mapped on their
    /// own, free memory given back every 10 s), whose memory would otherwise grow with its
    /// uptime (see `allocator`).
    pub fn hold_databases(&self) {
        crate::allocator::for_a_server();
        self.held.hold();
    }

    /// Takes a plan's run lock for `command`, or says who holds it.
    pub fn lock(&self, plan: &str, command: &str) -> Result<PlanLock> {
        check_name(plan)?;
        let (lock, took_over_from) =
            self.held
                .backend()
                .lock(&self.layout.run_lock(plan), plan, command)?;
        Ok(PlanLock {
            plan: plan.to_string(),
            _held: std::sync::Arc::from(lock),
            took_over_from,
        })
    }

    /// Who holds a plan's run lock now, if anyone.
    pub fn lock_holder(&self, plan: &str) -> Option<Holder> {
        self.held
            .backend()
            .lock_holder(&self.layout.run_lock(plan), plan)
    }

    /// The catalog entry of a plan.
    pub fn entry(&self, plan: &str) -> Result<PlanEntry> {
        check_name(plan)?;
        let catalog = self.layout.catalog();
        let db = self.db(&catalog)?;
        match db.get(format!("{PLAN_KEY}{plan}").as_bytes())? {
            Some(bytes) => decode(&catalog, &bytes),
            None => Err(StoreError::NoSuchPlan(plan.to_string())),
        }
    }

    /// Every plan, by name.
    pub fn list(&self) -> Result<Vec<PlanEntry>> {
        let catalog = self.layout.catalog();
        let db = self.db(&catalog)?;
        db.scan_prefix(PLAN_KEY.as_bytes())?
            .into_iter()
            .map(|(_, v)| decode(&catalog, &v))
            .collect()
    }

    /// Stores a new plan. With `replace`, a plan of that name gets a new iteration instead of
    /// being refused. Node names must not belong to another plan.
    pub fn add(
        &self,
        text: &str,
        plan: &Plan,
        source: Option<&Path>,
        replace: bool,
    ) -> Result<Stored> {
        let mode = if replace {
            Mode::AddOrUpdate
        } else {
            Mode::Add
        };
        self.store(text, plan, source, mode, None)
    }

    /// Stores a new iteration of an existing plan; an unchanged plan stores nothing.
    pub fn update(&self, text: &str, plan: &Plan, source: Option<&Path>) -> Result<Stored> {
        self.store(text, plan, source, Mode::Update, None)
    }

    /// [`update`](Store::update) by a caller that holds the plan's run lock, so that it can
    /// change the plan's state within the same hold (`dopi update --clear`: no run comes
    /// between the new iteration and its fresh state). Panics when `lock` is another plan's.
    pub fn update_holding(
        &self,
        lock: &PlanLock,
        text: &str,
        plan: &Plan,
        source: Option<&Path>,
    ) -> Result<Stored> {
        assert_eq!(lock.plan, plan.name, "the lock is not the updated plan's");
        check_name(&plan.name)?;
        self.store_locked(text, plan, source, Mode::Update, None)
    }

    /// Stores an iteration with a given time (for imports): the first one as an `add`.
    pub(crate) fn store_at(
        &self,
        text: &str,
        plan: &Plan,
        source: Option<&Path>,
        first: bool,
        time_ms: Option<u64>,
    ) -> Result<Stored> {
        let mode = if first { Mode::Add } else { Mode::Update };
        self.store(text, plan, source, mode, time_ms)
    }

    fn store(
        &self,
        text: &str,
        plan: &Plan,
        source: Option<&Path>,
        mode: Mode,
        time_ms: Option<u64>,
    ) -> Result<Stored> {
        check_name(&plan.name)?;
        let _lock = self.lock(&plan.name, mode.command())?;
        self.store_locked(text, plan, source, mode, time_ms)
    }

    /// [`store`](Store::store) once the plan's run lock is held.
    fn store_locked(
        &self,
        text: &str,
        plan: &Plan,
        source: Option<&Path>,
        mode: Mode,
        time_ms: Option<u64>,
    ) -> Result<Stored> {
        let name = plan.name.as_str();
        let hash = content_hash(text);
        let iterations_path = self.layout.iterations(name);
        let catalog_path = self.layout.catalog();

        // The catalog is the commit point for names: the entry and the node reservations are
        // written first, so a crash can only leave nodes reserved, never claimed twice.
        let catalog = self.db(&catalog_path)?;
        let existing: Option<PlanEntry> = catalog
            .get(format!("{PLAN_KEY}{name}").as_bytes())?
            .map(|b| decode(&catalog_path, &b))
            .transpose()?;
        match (&existing, mode) {
            (Some(_), Mode::Add) => return Err(StoreError::PlanExists(name.to_string())),
            (None, Mode::Update) => return Err(StoreError::NoSuchPlan(name.to_string())),
            _ => {}
        }
        let iterations = self.db(&iterations_path)?;
        let latest = latest_info(&*iterations, &iterations_path)?;
        if let Some(latest) = latest
            .as_ref()
            .filter(|l| l.hash == hash && existing.is_some())
        {
            return Ok(Stored::Unchanged(latest.clone()));
        }
        let mut conflicts = Vec::new();
        for node in &plan.nodes {
            if let Some(owner) = catalog.get(format!("{NODE_KEY}{}", node.name).as_bytes())? {
                let owner = String::from_utf8_lossy(&owner).into_owned();
                if owner != name {
                    conflicts.push((node.name.clone(), owner));
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(StoreError::NodeConflict {
                plan: name.to_string(),
                conflicts,
            });
        }
        let now = time_ms.unwrap_or_else(now_ms);
        let number = latest.as_ref().map_or(1, |l| l.number + 1);
        let summary = plan.summary();
        let info = IterationInfo {
            number,
            time_ms: now,
            hash,
            nodes: summary.nodes,
            step_sets: summary.step_sets,
            steps: summary.steps,
            source: source.map(|s| s.display().to_string()),
        };
        let mut batch = Batch::default();
        if let Some(old) = &existing {
            for node in &old.nodes {
                batch.delete(format!("{NODE_KEY}{node}"));
            }
        }
        let nodes: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
        for node in &nodes {
            batch.put(format!("{NODE_KEY}{node}"), name);
        }
        let entry = PlanEntry {
            name: name.to_string(),
            created_ms: existing.as_ref().map_or(now, |e| e.created_ms),
            updated_ms: now,
            latest: number,
            nodes,
        };
        batch.put(format!("{PLAN_KEY}{name}"), encode(&entry));
        catalog.commit(batch)?;
        drop(catalog);

        let record = Iteration {
            info: info.clone(),
            text: text.to_string(),
            plan: plan.clone(),
        };
        let mut batch = Batch::default();
        batch.put(iteration_key(INFO_KEY, number), encode(&info));
        batch.put(
            iteration_key(ITERATION_KEY, number),
            compress(&encode(&record)),
        );
        iterations.commit(batch)?;
        Ok(Stored::New(info))
    }

    /// Every iteration of a plan, oldest first.
    pub fn versions(&self, plan: &str) -> Result<Vec<IterationInfo>> {
        self.entry(plan)?;
        let path = self.layout.iterations(plan);
        let db = self.db(&path)?;
        db.scan_prefix(INFO_KEY.as_bytes())?
            .into_iter()
            .map(|(_, v)| decode(&path, &v))
            .collect()
    }

    /// An iteration of a plan (`None`: the latest).
    pub fn iteration(&self, plan: &str, number: Option<u64>) -> Result<Iteration> {
        self.entry(plan)?;
        let path = self.layout.iterations(plan);
        let db = self.db(&path)?;
        let latest = latest_info(&*db, &path)?.map_or(0, |l| l.number);
        let number = number.unwrap_or(latest);
        let missing = || StoreError::NoSuchIteration {
            plan: plan.to_string(),
            number,
            latest,
        };
        if number == 0 {
            return Err(missing());
        }
        let bytes = db
            .get(&iteration_key(ITERATION_KEY, number))?
            .ok_or_else(missing)?;
        decode(&path, &decompress(&path, &bytes)?)
    }

    /// What changed from iteration `from` to `to` (defaults: the one before the latest, and the
    /// latest).
    pub fn diff(
        &self,
        plan: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<(u64, u64, PlanDiff)> {
        let to = self.iteration(plan, to)?;
        let from_number = from.unwrap_or(to.info.number.saturating_sub(1).max(1));
        let from = self.iteration(plan, Some(from_number))?;
        Ok((
            from.info.number,
            to.info.number,
            PlanDiff::between(&from.plan, &to.plan),
        ))
    }

    /// Removes a plan: its iterations, its catalog entry and node names, and (unless
    /// `keep_state`) its state. A plan with nodes in the dopv state is only removed with
    /// `force`.
    pub fn remove(&self, plan: &str, keep_state: bool, force: bool) -> Result<()> {
        let lock = self.lock(plan, "remove")?;
        let entry = self.entry(plan)?;
        if !force && !keep_state {
            let deployed = self.state(plan, App::Dopv)?;
            if !deployed.records.is_empty() {
                return Err(StoreError::StillDeployed {
                    plan: plan.to_string(),
                    count: deployed.records.len(),
                    nodes: deployed.records.keys().take(5).cloned().collect(),
                });
            }
        }
        let catalog_path = self.layout.catalog();
        let catalog = self.db(&catalog_path)?;
        let mut batch = Batch::default();
        for node in &entry.nodes {
            batch.delete(format!("{NODE_KEY}{node}"));
        }
        batch.delete(format!("{PLAN_KEY}{plan}"));
        catalog.commit(batch)?;
        drop(catalog);
        let remove_dir = |path: PathBuf| self.held.backend().destroy(&path);
        self.held.release(&self.layout.iterations(plan));
        remove_dir(self.layout.iterations(plan))?;
        if !keep_state {
            self.held.release(&self.layout.state(plan));
            remove_dir(self.layout.state(plan))?;
            drop(lock);
            let _ = std::fs::remove_file(self.layout.run_lock(plan));
            let _ = std::fs::remove_dir(self.layout.plan_dir(plan));
        }
        Ok(())
    }

    /// The state records of a tool for a plan (read without the run lock).
    pub fn state(&self, plan: &str, app: App) -> Result<StateRecords> {
        check_name(plan)?;
        let path = self.layout.state(plan);
        if !self.held.backend().exists(&path)? {
            return Ok(StateRecords::default());
        }
        if let Some(read) = self.live.read(&path, app) {
            return read;
        }
        let db = self.db(&path)?;
        read_state(&*db, &path, app)
    }

    /// Writes state records (a `None` value removes the record) in one durable step, and
    /// returns the new serial. With `expected_serial`, the write is refused if the state moved
    /// on since the caller read it.
    pub fn write_state(
        &self,
        lock: &PlanLock,
        app: App,
        changes: &[(String, Option<serde_json::Value>)],
        expected_serial: Option<u64>,
    ) -> Result<u64> {
        let path = self.layout.state(&lock.plan);
        let db = self.db(&path)?;
        let serial = read_serial(&*db, &path)?;
        if let Some(expected) = expected_serial.filter(|e| *e != serial) {
            return Err(StoreError::StaleSerial {
                plan: lock.plan.clone(),
                expected,
                actual: serial,
            });
        }
        write_batch(&*db, &[(app, changes)], serial + 1)?;
        Ok(serial + 1)
    }

    /// Keeps the plan's state database open for a run (see [`StateSession`]): its reads and
    /// writes then cost no database open each. Taking the run lock first is the caller's proof
    /// that it is the plan's only writer.
    pub fn state_session(&self, lock: &PlanLock) -> StateSession {
        StateSession::start(
            self.held.clone(),
            self.layout.state(&lock.plan),
            self.live.clone(),
        )
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Add,
    AddOrUpdate,
    Update,
}

impl Mode {
    fn command(self) -> &'static str {
        match self {
            Mode::Add | Mode::AddOrUpdate => "add",
            Mode::Update => "update",
        }
    }
}

fn latest_info(db: &dyn Database, path: &Path) -> Result<Option<IterationInfo>> {
    db.last_with_prefix(INFO_KEY.as_bytes())?
        .map(|(_, v)| decode(path, &v))
        .transpose()
}

/// State records to write (a `None` value removes one).
pub(crate) type Records = [(String, Option<serde_json::Value>)];

/// Writes records of several tools and the new serial in one durable commit.
pub(crate) fn write_batch(
    db: &dyn Database,
    changes: &[(App, &Records)],
    serial: u64,
) -> Result<()> {
    let mut batch = Batch::default();
    for (app, records) in changes {
        for (key, value) in records.iter() {
            let key = format!("{}{key}", app.prefix());
            match value {
                Some(v) => batch.put(key, encode(v)),
                None => batch.delete(key),
            }
        }
    }
    batch.put(SERIAL_KEY, serial.to_be_bytes().to_vec());
    db.commit(batch)
}

pub(crate) fn read_serial(db: &dyn Database, path: &Path) -> Result<u64> {
    match db.get(SERIAL_KEY)? {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: "the state serial is damaged".into(),
            }),
    }
}

pub(crate) fn read_state(db: &dyn Database, path: &Path, app: App) -> Result<StateRecords> {
    let serial = read_serial(db, path)?;
    let prefix = app.prefix();
    let records = db
        .scan_prefix(prefix.as_bytes())?
        .into_iter()
        .map(|(k, v)| {
            let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            decode(path, &v).map(|value| (key, value))
        })
        .collect::<Result<_>>()?;
    Ok(StateRecords { serial, records })
}
