//! The PostgreSQL backend: the store's databases as rows of shared tables, plan locks as
//! PostgreSQL advisory locks. Chosen by a `postgres://` store URL (`store_url` in dop.conf and
//! dopc.toml, `DOP_STORE_URL`, `--store-url`).
//!
//! * Every database of the sled layout (`catalog`, `plans/<plan>/iterations`,
//!   `plans/<plan>/state`, `dopc`) is a namespace of `dop_kv(db, key, value)`, named by its
//!   path below the store directory, so that processes with different store directories share
//!   one store. A [`Batch`] is one transaction; PostgreSQL's ordering of `bytea` is byte-wise,
//!   which gives prefix scans sled's key order.
//! * A plan's run lock is a session-level advisory lock (`pg_try_advisory_lock`) held by a
//!   connection of its own, on a thread of its own, for as long as the lock: it dies with that
//!   connection, so a process killed holding it leaves no lock behind. The holder is written to
//!   `dop_locks` beside it (a refused caller names it, and a taker that finds a holder's row
//!   left behind took over from a process that died); a clean release removes the row.
//! * The schema is versioned in `dop_schema` and migrated when the backend connects, in one
//!   transaction under an advisory lock (two processes starting at once migrate once). A
//!   database whose schema is newer than this dop knows is refused before anything is
//!   written.
//!
//! The client is the synchronous `postgres` crate. Its calls block on a runtime of their own,
//! which must not happen on a thread that drives a tokio runtime (dopc, dopi), so every query
//! runs on the backend's own worker threads, each with one connection, and the caller waits
//! for the answer the way it waits for a sled read. A connection the server closed (a restart)
//! is made anew, and the work done once more on it: a batch's puts and deletes are idempotent.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, Batch, Database, HeldLock};
use crate::error::{Result, StoreError};
use crate::lock::Holder;

/// The schema migrations, in order: version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[&str] = &[
    // 1: the key-value namespaces and the lock holders.
    "CREATE TABLE dop_kv (
         db text NOT NULL,
         key bytea NOT NULL,
         value bytea NOT NULL,
         PRIMARY KEY (db, key)
     );
     CREATE TABLE dop_locks (
         plan text PRIMARY KEY,
         holder text NOT NULL
     );",
];

/// The schema version this dop writes and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock migrations take (`dop` in ASCII, then 1).
const MIGRATION_LOCK: i64 = 0x646f_7000_0000_0001;

/// Worker threads (each one connection) for the store's queries.
const WORKERS: usize = 4;

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce(&mut Option<Client>) + Send>;

/// Where the store is, for messages: `user@host:port/database`, never the password.
#[derive(Clone, Debug)]
struct Target {
    config: postgres::Config,
    shown: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target> {
        let bad = |reason: String| StoreError::BadUrl {
            url: hide_password(url),
            reason,
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad("it does not start with postgres://".into()));
        }
        let mut config: postgres::Config = url.parse().map_err(|e| bad(format!("{e}")))?;
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => return Err(bad("it names no host".into())),
        };
        let Some(user) = config.get_user().map(str::to_string) else {
            return Err(bad("it names no user".into()));
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let db = config.get_dbname().unwrap_or(&user).to_string();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("dop");
        Ok(Target {
            config,
            shown: format!("{user}@{host}:{port}/{db}"),
        })
    }

    /// A new connection, its failure said in words an operator can act on.
    fn connect(&self) -> Result<Client> {
        self.config.connect(NoTls).map_err(|e| {
            let shown = self.shown.clone();
            match e.code() {
                Some(c) if *c == SqlState::INVALID_PASSWORD => StoreError::LoginRefused {
                    target: shown,
                    reason: reason(&e),
                },
                Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                    StoreError::LoginRefused {
                        target: shown,
                        reason: reason(&e),
                    }
                }
                Some(_) => StoreError::Database {
                    target: shown,
                    reason: reason(&e),
                },
                None => StoreError::Unreachable {
                    target: shown,
                    reason: reason(&e),
                },
            }
        })
    }

    fn failed(&self, e: &postgres::Error) -> StoreError {
        StoreError::Database {
            target: self.shown.clone(),
            reason: reason(e),
        }
    }
}

/// The server's message when it sent one, the client's otherwise (with its cause).
fn reason(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e} ({cause})"),
        None => e.to_string(),
    }
}

/// `url` with its password (if any) replaced by `***`.
pub(crate) fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The worker threads and their queue.
struct Workers {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Workers {
    fn start(count: usize) -> Result<Workers> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..count {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("dop-pg-{i}"))
                .spawn(move || {
                    let mut client: Option<Client> = None;
                    loop {
                        let job = {
                            let queue = rx.lock().unwrap_or_else(|p| p.into_inner());
                            queue.recv()
                        };
                        match job {
                            Ok(job) => job(&mut client),
                            Err(_) => return, // the backend is gone
                        }
                    }
                })
                .map_err(|e| StoreError::io("dop-pg worker thread", e))?;
        }
        Ok(Workers {
            jobs: Mutex::new(tx),
        })
    }
}

/// The PostgreSQL backend (see the module documentation).
pub struct PgBackend {
    inner: Arc<Inner>,
    /// Database paths are named relative to this directory.
    root: PathBuf,
}

/// What the backend's databases share with it: the target and the worker threads.
struct Inner {
    target: Arc<Target>,
    workers: Workers,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("target", &self.inner.target.shown)
            .finish()
    }
}

impl PgBackend {
    /// Connects to the PostgreSQL database at `url` for the store directory `root`, and
    /// migrates its schema to [`SCHEMA_VERSION`]. A bad URL, an unreachable server, a refused
    /// login and a schema newer than this dop's are errors that say so; nothing is written
    /// then.
    pub fn connect(url: &str, root: &Path) -> Result<PgBackend> {
        let target = Arc::new(Target::parse(url)?);
        // On a thread of its own, as every query: the caller may be on a runtime's worker.
        let first = target.clone();
        std::thread::Builder::new()
            .name("dop-pg-migrate".into())
            .spawn(move || -> Result<()> {
                let mut client = first.connect()?;
                migrate(&mut client, &first)
            })
            .map_err(|e| StoreError::io("dop-pg migration thread", e))?
            .join()
            .unwrap_or_else(|_| {
                Err(StoreError::Database {
                    target: target.shown.clone(),
                    reason: "the migration thread panicked".into(),
                })
            })?;
        let workers = Workers::start(WORKERS)?;
        Ok(PgBackend {
            inner: Arc::new(Inner { target, workers }),
            root: root.to_path_buf(),
        })
    }

    /// `user@host:port/database` of the store (no password).
    pub fn target(&self) -> &str {
        &self.inner.target.shown
    }

    /// The namespace of the database at `path`: its path below the store directory.
    fn namespace(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }
}

impl Inner {
    /// Runs `work` on a worker's connection and waits for its answer. A connection found
    /// closed is made anew, and `work` runs once more on a new one when the first closed
    /// under it.
    fn run<T: Send + 'static>(
        &self,
        mut work: impl FnMut(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        let target = self.target.clone();
        let job: Job = Box::new(move |slot: &mut Option<Client>| {
            let mut outcome = None;
            for _attempt in 0..2 {
                if slot.as_ref().is_none_or(Client::is_closed) {
                    match target.connect() {
                        Ok(c) => *slot = Some(c),
                        Err(e) => {
                            outcome = Some(Err(e));
                            break;
                        }
                    }
                }
                let Some(client) = slot.as_mut() else { break };
                match work(client) {
                    Ok(v) => {
                        outcome = Some(Ok(v));
                        break;
                    }
                    Err(e) => {
                        outcome = Some(Err(target.failed(&e)));
                        if !client.is_closed() {
                            break;
                        }
                        *slot = None;
                    }
                }
            }
            let _ = tx.send(outcome);
        });
        let sent = self
            .workers
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job);
        let stopped = || StoreError::Database {
            target: self.target.shown.clone(),
            reason: "the store's connection threads stopped".into(),
        };
        if sent.is_err() {
            return Err(stopped());
        }
        rx.recv().ok().flatten().unwrap_or_else(|| Err(stopped()))
    }
}

/// Brings the schema to [`SCHEMA_VERSION`], or refuses a newer one (nothing written).
fn migrate(client: &mut Client, target: &Target) -> Result<()> {
    let failed = |e: postgres::Error| target.failed(&e);
    let mut tx = client.transaction().map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(failed)?;
    let has_schema: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema() \
             AND tablename = 'dop_schema')",
            &[],
        )
        .map_err(failed)?
        .get(0);
    let found: i32 = if has_schema {
        tx.query_one("SELECT coalesce(max(version), 0) FROM dop_schema", &[])
            .map_err(failed)?
            .get(0)
    } else {
        0
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            target: target.shown.clone(),
            found: found as u32,
            known: SCHEMA_VERSION as u32,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(()); // nothing to do: the transaction ends without a write
    }
    if !has_schema {
        tx.batch_execute(
            "CREATE TABLE dop_schema (
                 version integer PRIMARY KEY,
                 applied timestamptz NOT NULL DEFAULT now()
             )",
        )
        .map_err(failed)?;
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).map_err(failed)?;
        tx.execute("INSERT INTO dop_schema (version) VALUES ($1)", &[&version])
            .map_err(failed)?;
    }
    tx.commit().map_err(failed)
}

/// The smallest key greater than every key that starts with `prefix` (`None`: no bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One namespace of `dop_kv`.
struct PgDatabase {
    inner: Arc<Inner>,
    db: String,
}

impl PgDatabase {
    fn scan(&self, prefix: &[u8], last: bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (db, from, to) = (self.db.clone(), prefix.to_vec(), prefix_end(prefix));
        let order = if last { "DESC LIMIT 1" } else { "ASC" };
        self.inner.run(move |c| {
            let rows = match &to {
                Some(to) => c.query(
                    &format!(
                        "SELECT key, value FROM dop_kv WHERE db = $1 AND key >= $2 AND key < $3 \
                         ORDER BY key {order}"
                    ),
                    &[&db, &from, to],
                )?,
                None => c.query(
                    &format!(
                        "SELECT key, value FROM dop_kv WHERE db = $1 AND key >= $2 \
                         ORDER BY key {order}"
                    ),
                    &[&db, &from],
                )?,
            };
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }
}

impl Database for PgDatabase {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (db, key) = (self.db.clone(), key.to_vec());
        self.inner.run(move |c| {
            Ok(c.query_opt(
                "SELECT value FROM dop_kv WHERE db = $1 AND key = $2",
                &[&db, &key],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan(prefix, false)
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.scan(prefix, true)?.pop())
    }

    fn commit(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (db, ops) = (self.db.clone(), batch.into_ops());
        self.inner.run(move |c| {
            let mut tx = c.transaction()?;
            for (key, value) in &ops {
                match value {
                    Some(v) => tx.execute(
                        "INSERT INTO dop_kv (db, key, value) VALUES ($1, $2, $3) \
                         ON CONFLICT (db, key) DO UPDATE SET value = EXCLUDED.value",
                        &[&db, key, v],
                    )?,
                    None => {
                        tx.execute("DELETE FROM dop_kv WHERE db = $1 AND key = $2", &[&db, key])?
                    }
                };
            }
            tx.commit()
        })
    }
}

/// The advisory lock key of a plan: the first 63 bits of a SHA-256 of its name.
fn lock_key(plan: &str) -> i64 {
    let digest = Sha256::digest(format!("dop plan lock\0{plan}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes) & i64::MAX
}

fn read_holder(c: &mut Client, plan: &str) -> Result<Option<Holder>, postgres::Error> {
    Ok(
        c.query_opt("SELECT holder FROM dop_locks WHERE plan = $1", &[&plan])?
            .and_then(|r| serde_json::from_str(r.get::<_, &str>(0)).ok()),
    )
}

/// A plan's run lock: the advisory lock of a connection kept by a thread of its own until the
/// value is dropped (then the holder's row goes, and the lock with the connection).
#[derive(Debug)]
struct PgLock {
    release: Option<mpsc::Sender<()>>,
    released: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Drop for PgLock {
    fn drop(&mut self) {
        drop(self.release.take());
        // Wait (boundedly) until it is released: a lock taken next in this process must not
        // find it still held.
        if let Some(done) = self
            .released
            .get_mut()
            .map(Option::take)
            .unwrap_or_else(|p| p.into_inner().take())
        {
            let _ = done.recv_timeout(Duration::from_secs(10));
        }
    }
}

impl PgBackend {
    fn take_lock(&self, plan: &str, command: &str) -> Result<(PgLock, Option<Holder>)> {
        let target = self.inner.target.clone();
        let (plan, me) = (plan.to_string(), Holder::of_this_process(command));
        let (answer_tx, answer) = mpsc::channel::<Result<Option<Holder>>>();
        let (release, released_rx) = mpsc::channel::<()>();
        let (released_tx, released) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("dop-pg-lock".into())
            .spawn(move || {
                let _released = released_tx;
                let mut client = match target.connect() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = answer_tx.send(Err(e));
                        return;
                    }
                };
                let key = lock_key(&plan);
                let taken =
                    (|| -> Result<Result<Option<Holder>, Option<Holder>>, postgres::Error> {
                        let try_lock = |c: &mut Client| -> Result<bool, postgres::Error> {
                            Ok(c.query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
                                .get(0))
                        };
                        if !try_lock(&mut client)? {
                            // The holder writes its row just after it takes the lock.
                            let mut holder = read_holder(&mut client, &plan)?;
                            for _ in 0..40 {
                                if holder.is_some() {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(5));
                                holder = read_holder(&mut client, &plan)?;
                            }
                            // A holder of this host that has died: its connection is closed,
                            // and the server ends its session (and the lock) a moment later.
                            let dead = holder.as_ref().is_some_and(|h| {
                                h.host == me.host
                                    && !Path::new(&format!("/proc/{}", h.pid)).exists()
                            });
                            let mut got = false;
                            for _ in 0..(if dead { 250 } else { 0 }) {
                                std::thread::sleep(Duration::from_millis(20));
                                if try_lock(&mut client)? {
                                    got = true;
                                    break;
                                }
                            }
                            if !got {
                                return Ok(Err(holder));
                            }
                        }
                        let previous = read_holder(&mut client, &plan)?;
                        let text = serde_json::to_string(&me).unwrap_or_default();
                        client.execute(
                            "INSERT INTO dop_locks (plan, holder) VALUES ($1, $2) \
                         ON CONFLICT (plan) DO UPDATE SET holder = EXCLUDED.holder",
                            &[&plan, &text],
                        )?;
                        Ok(Ok(previous))
                    })();
                match taken {
                    Ok(Ok(previous)) => {
                        let _ = answer_tx.send(Ok(previous));
                    }
                    Ok(Err(holder)) => {
                        let holder = holder.unwrap_or(Holder {
                            pid: 0,
                            host: "an unknown host".into(),
                            command: "another process (still starting)".into(),
                            since_ms: dop_core::time::now_ms(),
                        });
                        let _ = answer_tx.send(Err(StoreError::Locked { plan, holder }));
                        return;
                    }
                    Err(e) => {
                        let _ = answer_tx.send(Err(target.failed(&e)));
                        return;
                    }
                }
                // Held until the lock is dropped (the sender goes).
                let _ = released_rx.recv();
                let _ = client.execute("DELETE FROM dop_locks WHERE plan = $1", &[&plan]);
                let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&key]);
            })
            .map_err(|e| StoreError::io("dop-pg-lock thread", e))?;
        let previous = answer.recv().unwrap_or_else(|_| {
            Err(StoreError::Database {
                target: self.inner.target.shown.clone(),
                reason: "the lock's connection thread stopped".into(),
            })
        })?;
        Ok((
            PgLock {
                release: Some(release),
                released: Mutex::new(Some(released)),
            },
            previous,
        ))
    }
}

impl Backend for PgBackend {
    fn open(&self, path: &Path) -> Result<Box<dyn Database + Send + Sync>> {
        Ok(Box::new(PgDatabase {
            inner: self.inner.clone(),
            db: self.namespace(path),
        }))
    }

    fn exists(&self, path: &Path) -> Result<bool> {
        let db = self.namespace(path);
        self.inner.run(move |c| {
            Ok(
                c.query_one("SELECT EXISTS (SELECT 1 FROM dop_kv WHERE db = $1)", &[&db])?
                    .get(0),
            )
        })
    }

    fn destroy(&self, path: &Path) -> Result<()> {
        let db = self.namespace(path);
        self.inner
            .run(move |c| c.execute("DELETE FROM dop_kv WHERE db = $1", &[&db]))
            .map(|_| ())
    }

    fn lock(
        &self,
        _file: &Path,
        plan: &str,
        command: &str,
    ) -> Result<(Box<dyn HeldLock>, Option<Holder>)> {
        let (lock, previous) = self.take_lock(plan, command)?;
        Ok((Box::new(lock), previous))
    }

    fn lock_holder(&self, _file: &Path, plan: &str) -> Option<Holder> {
        let (plan, key) = (plan.to_string(), lock_key(plan));
        let (high, low) = (key >> 32, key & 0xffff_ffff);
        self.inner
            .run(move |c| {
                let held: bool = c
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                         AND granted AND database = (SELECT oid FROM pg_database \
                         WHERE datname = current_database()) \
                         AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1)",
                        &[&high, &low],
                    )?
                    .get(0);
                if held {
                    read_holder(c, &plan)
                } else {
                    Ok(None)
                }
            })
            .ok()
            .flatten()
    }

    fn someone_waits(&self, _path: &Path) -> bool {
        false // nobody waits for a table
    }

    fn let_waiters_in(&self, _path: &Path) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_prefix_ends_bound_scans() {
        assert_eq!(
            hide_password("postgres://dop:s3cret@db:5432/dop"),
            "postgres://dop:***@db:5432/dop"
        );
        assert_eq!(
            hide_password("postgres://dop@db/dop"),
            "postgres://dop@db/dop"
        );
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn urls_that_are_not_postgresql_urls_are_refused_naming_the_problem() {
        for (url, why) in [
            ("mysql://x@y/z", "does not start with postgres://"),
            ("postgres://dop:pw@db:notaport/dop", "invalid"),
            ("postgres://db:5432/dop", "names no user"),
        ] {
            let err = Target::parse(url).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, StoreError::BadUrl { .. }), "{url}: {text}");
            assert!(text.contains(why), "{url}: {text}");
            assert!(!text.contains("pw@"), "{text}");
        }
    }

    #[test]
    fn lock_keys_differ_per_plan_and_are_not_negative() {
        assert_ne!(lock_key("web"), lock_key("db"));
        assert!(lock_key("web") >= 0);
    }
}
