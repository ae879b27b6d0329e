//! Hiera data for Puppet, written from the store: for every node of every stored plan (newest
//! iteration), one JSON file per hierarchy level that the plan's `configuration` has for it
//! (`nodes/<fqdn>`, `roles/<role>`, `defaults`, …, with the node's role resolved as dop-core
//! does). Puppet reads them with Hiera 5's built-in `json_data` backend and a glob, no Ruby of
//! ours:
//!
//! ```text
//! <dir>/current -> generations/g<N>        the data Puppet reads (a symlink, swapped atomically)
//! <dir>/generations/g<N>/index.json        what is in it: plans, iterations, nodes, problems
//! <dir>/generations/g<N>/nodes/<node>/00-nodes_web01.example.com.json
//! <dir>/generations/g<N>/nodes/<node>/01-roles_web.json
//! <dir>/generations/g<N>/nodes/<node>/02-defaults.json
//! <dir>/generations/g<N>/autosign.json     per plan, the salted hash of its `autosign`
//!                                          credential's password (mode 0640)
//! <dir>/.lock                              one writer at a time (flock)
//! ```
//!
//! `dop-puppet-autosign` reads `index.json` and `autosign.json` of `current`: the Puppet
//! server needs to read this directory, never the store.
//!
//! A sync builds a whole new generation and only then points `current` at it, so Puppet never
//! reads a half-written file nor a mix of two syncs within one file. A plan whose data Puppet
//! cannot use (a level that is not a mapping, an empty key) is reported and keeps the data of
//! the previous generation, so one bad plan neither blanks nor blocks the others. A node in no
//! plan has no directory: its lookups find nothing here and go on to Hiera's other levels.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use dop_core::{LookupSettings, Resolver};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use dop_core::time::{now_ms, rfc3339};
use dop_store::{Store, StoreError};

/// The generations kept besides `current` (a Puppet run may still read the one before).
const KEEP: usize = 1;

/// Why the Hiera data could not be written at all.
#[derive(Debug, thiserror::Error)]
pub enum HieraError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file or directory of the Hiera data.
    #[error("the Hiera data under {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HieraError + '_ {
    move |source| HieraError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a sync wrote for one plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanData {
    /// The plan iteration the data comes from.
    pub iteration: u64,
    /// Its nodes (each has a directory, possibly empty).
    pub nodes: Vec<String>,
    /// Why the newest iteration could not be written; the data is then the previous
    /// generation's (`iteration` says which), or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `index.json` of a generation, and what a sync reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Index {
    /// The generation's number.
    pub generation: u64,
    /// When it was written (RFC 3339).
    pub written_at: String,
    /// Per plan, what is in it.
    pub plans: BTreeMap<String, PlanData>,
}

impl Index {
    /// The plans whose newest iteration could not be written, with why.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.plans
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), p.problem.clone()?)))
            .collect()
    }
}

/// The files of one plan's nodes: node name, file name, content.
type Files = Vec<(String, String, Vec<u8>)>;

/// The data files of a plan's nodes, or why Puppet could not use them.
fn plan_files(plan: &dop_core::Plan, settings: &LookupSettings) -> Result<Files, String> {
    let resolver = Resolver::new(plan, settings).map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        if node.name.is_empty() || node.name.starts_with('.') || node.name.contains('/') {
            return Err(format!(
                "nodes.{}: a node name must be usable as a directory name (it is Puppet's certname)",
                node.name
            ));
        }
        for (n, level) in resolver.levels(i).into_iter().enumerate() {
            let path = format!("configuration.{}", level.source.replace('/', "."));
            let Value::Object(map) = level.data else {
                return Err(format!(
                    "{path} (hierarchy level '{}' of node {}): Hiera needs a mapping of keys here, not {}",
                    level.level,
                    node.name,
                    kind(level.data)
                ));
            };
            if let Some(key) = map.keys().find(|k| !usable_key(k)) {
                return Err(format!(
                    "{path}: the key {key:?} cannot be looked up in Hiera (empty, surrounding \
                     spaces or control characters)"
                ));
            }
            let name = format!("{n:02}-{}.json", file_part(&level.source));
            let text = serde_json::to_vec_pretty(level.data).unwrap_or_default();
            files.push((node.name.clone(), name, text));
        }
    }
    Ok(files)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn usable_key(k: &str) -> bool {
    !k.is_empty() && k.trim() == k && !k.chars().any(char::is_control)
}

/// A hierarchy source as a file name part: `nodes/web01.example.com` → `nodes_web01.example.com`.
fn file_part(source: &str) -> String {
    source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), HieraError> {
    let mut f = File::create_new(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The generation `current` points at, if any.
pub fn current(dir: &Path) -> Option<Index> {
    let text = std::fs::read_to_string(dir.join("current/index.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the Hiera data of every stored plan as a new generation and makes it current.
/// Plans whose data Puppet could not use keep their previous data and are reported in the
/// returned index (`problems`).
pub fn sync(store: &Store, dir: &Path, settings: &LookupSettings) -> Result<Index, HieraError> {
    std::fs::create_dir_all(dir.join("generations")).map_err(io(dir))?;
    let lock_path = dir.join(".lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;

    let previous = current(dir);
    let generation = previous.as_ref().map_or(1, |p| p.generation + 1);
    let gen_dir = dir.join(format!("generations/g{generation}"));
    if gen_dir.exists() {
        // Left by a sync that died before making it current.
        std::fs::remove_dir_all(&gen_dir).map_err(io(&gen_dir))?;
    }
    let nodes_dir = gen_dir.join("nodes");
    std::fs::create_dir_all(&nodes_dir).map_err(io(&nodes_dir))?;

    let mut autosign = BTreeMap::new();
    let mut index = Index {
        generation,
        written_at: rfc3339(now_ms()),
        plans: BTreeMap::new(),
    };
    for entry in store.list()? {
        let iteration = store.iteration(&entry.name, None)?;
        let plan = &iteration.plan;
        let (files, data) = match plan_files(plan, settings) {
            Ok(files) => (
                files,
                PlanData {
                    iteration: iteration.info.number,
                    nodes: plan.nodes.iter().map(|n| n.name.clone()).collect(),
                    problem: None,
                },
            ),
            Err(problem) => {
                // The previous generation's data of this plan, if it had any.
                let kept = previous.as_ref().and_then(|p| p.plans.get(&entry.name));
                let mut files = Vec::new();
                if let Some(kept) = kept {
                    for node in &kept.nodes {
                        let from = dir.join("current/nodes").join(node);
                        for f in std::fs::read_dir(&from).into_iter().flatten().flatten() {
                            let bytes = std::fs::read(f.path()).map_err(io(&f.path()))?;
                            let name = f.file_name().to_string_lossy().into_owned();
                            files.push((node.clone(), name, bytes));
                        }
                    }
                }
                let data = PlanData {
                    iteration: kept.map_or(0, |k| k.iteration),
                    nodes: kept.map(|k| k.nodes.clone()).unwrap_or_default(),
                    problem: Some(format!("iteration {}: {problem}", iteration.info.number)),
                };
                (files, data)
            }
        };
        if let Some(challenge) = challenge_of(plan) {
            autosign.insert(entry.name.clone(), challenge);
        }
        for node in &data.nodes {
            let d = nodes_dir.join(node);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        for (node, name, bytes) in files {
            write_file(&nodes_dir.join(&node).join(name), &bytes)?;
        }
        index.plans.insert(entry.name, data);
    }
    let autosign_path = gen_dir.join("autosign.json");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&autosign_path)
            .map_err(io(&autosign_path))?;
        f.write_all(&serde_json::to_vec_pretty(&json!({ "plans": autosign })).unwrap_or_default())
            .and_then(|()| f.sync_all())
            .map_err(io(&autosign_path))?;
    }
    let index_path = gen_dir.join("index.json");
    write_file(
        &index_path,
        &serde_json::to_vec_pretty(&index).unwrap_or_default(),
    )?;
    File::open(&nodes_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&nodes_dir))?;

    // Point `current` at the new generation in one rename.
    let link = dir.join(format!(".current-{}", std::process::id()));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("generations/g{generation}"), &link).map_err(io(&link))?;
    std::fs::rename(&link, dir.join("current")).map_err(io(dir))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;

    // Drop generations older than the one before.
    let mut old: Vec<u64> = std::fs::read_dir(dir.join("generations"))
        .map_err(io(dir))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix('g')?.parse().ok())
        .filter(|g| *g < generation)
        .collect();
    old.sort_unstable();
    let drop_count = old.len().saturating_sub(KEEP);
    for g in &old[..drop_count] {
        let _ = std::fs::remove_dir_all(dir.join(format!("generations/g{g}")));
    }
    Ok(index)
}

/// The name of the plan credential whose password is the challenge a node's certificate
/// request must carry to be signed by `dop-puppet-autosign`.
pub const AUTOSIGN_CREDENTIAL: &str = "autosign";

/// The salted hash of a challenge password, as `autosign.json` holds it.
pub fn challenge_hash(plan: &str, challenge: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("dop-autosign\0{plan}\0{challenge}"));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A plan's autosign entry: `{sha256}` of its `autosign` credential's password, or `{error}`
/// when the password cannot be read (its nodes are then never signed); `None` without one.
fn challenge_of(plan: &dop_core::Plan) -> Option<Value> {
    let credential = plan.credential(AUTOSIGN_CREDENTIAL)?;
    Some(match &credential.kind {
        dop_core::plan::CredentialKind::UsernamePassword { password, .. } => {
            match password.load_unless_exec() {
                Ok(p) => json!({ "sha256": challenge_hash(&plan.name, &p) }),
                Err(e) => {
                    json!({ "error": format!("credentials.{AUTOSIGN_CREDENTIAL}.password: {e}") })
                }
            }
        }
        _ => {
            json!({ "error": format!("credentials.{AUTOSIGN_CREDENTIAL} must be of type username_password (its password is the challenge)") })
        }
    })
}

/// The data files Puppet reads for a node now, in the order Hiera reads them (most specific
/// first): `(file name, content)`. Empty when the node is in no plan.
pub fn node_data(dir: &Path, node: &str) -> Result<Vec<(String, Value)>, HieraError> {
    if node.is_empty() || node.contains('/') || node.starts_with('.') {
        return Ok(Vec::new());
    }
    let node_dir = dir.join("current/nodes").join(node);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&node_dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&node_dir)(e)),
    };
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let value = serde_json::from_str(&text).map_err(|e| HieraError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, value))
        })
        .collect()
}

/// The `hiera.yaml` (Hiera 5) that reads the data under `dir`.
pub fn hiera_yaml(dir: &std::path::Path) -> String {
    format!(
        "# Hiera 5: the configuration of nodes in stored dop plans (`dopi hiera config`).\n\
         # Nodes in no plan have no data here: their lookups go on to the next level.\n\
         ---\n\
         version: 5\n\
         hierarchy:\n  \
           - name: \"dop plans: the node's plan configuration (nodes, roles, defaults)\"\n    \
             data_hash: json_data\n    \
             datadir: \"{}\"\n    \
             glob: \"%{{trusted.certname}}/*.json\"\n",
        dir.join("current/nodes").display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = "name: shop
infrastructures: {lab: {type: baremetal}}
nodes:
  web01.example.com: {infrastructure: lab}
  db01.example.com: {infrastructure: lab}
configuration:
  nodes:
    db01.example.com: {role: db, 'postgres::port': 5433}
  roles:
    db: {'postgres::port': 5432, backup: true}
    web: {'apache::port': 8080}
  defaults: {role: web, ntp: [ntp1, ntp2]}
";

    fn add(store: &Store, text: &str) {
        let loaded = dop_core::load_str(text, None, &LookupSettings::default());
        let plan = loaded.plan.expect("a valid plan");
        store.add(text, &plan, None, true).unwrap();
    }

    #[test]
    fn every_node_gets_its_levels_and_a_bad_plan_keeps_its_old_data() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let dir = tmp.path().join("hiera");
        let settings = LookupSettings::default();
        add(&store, PLAN);
        let first = sync(&store, &dir, &settings).unwrap();
        assert_eq!(first.generation, 1);
        assert!(first.problems().is_empty());
        let db = node_data(&dir, "db01.example.com").unwrap();
        let names: Vec<&str> = db.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "00-nodes_db01.example.com.json",
                "01-roles_db.json",
                "02-defaults.json"
            ]
        );
        assert_eq!(db[0].1["postgres::port"], 5433);
        let web = node_data(&dir, "web01.example.com").unwrap();
        assert_eq!(web[0].1["apache::port"], 8080, "role from the defaults");
        assert!(node_data(&dir, "elsewhere.example.com").unwrap().is_empty());
        assert!(node_data(&dir, "../etc").unwrap().is_empty());

        // Iteration 2 makes a level a list: reported, and the plan keeps generation 1's data.
        add(
            &store,
            &PLAN.replace("web: {'apache::port': 8080}", "web: [8080]"),
        );
        let second = sync(&store, &dir, &settings).unwrap();
        assert_eq!(second.generation, 2);
        let problems = second.problems();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].1.starts_with(
                "iteration 2: configuration.roles.web (hierarchy level 'roles/%{::role}' of node web01.example.com): Hiera needs a mapping"
            ),
            "{problems:?}"
        );
        assert_eq!(second.plans["shop"].iteration, 1);
        let web = node_data(&dir, "web01.example.com").unwrap();
        assert_eq!(web[0].1["apache::port"], 8080, "the previous data stays");

        // Fixed and the plan removed: the node's data goes; old generations are dropped.
        add(&store, PLAN);
        sync(&store, &dir, &settings).unwrap();
        store.remove("shop", false, true).unwrap();
        let last = sync(&store, &dir, &settings).unwrap();
        assert!(last.plans.is_empty());
        assert!(node_data(&dir, "web01.example.com").unwrap().is_empty());
        let generations = std::fs::read_dir(dir.join("generations")).unwrap().count();
        assert_eq!(generations, 1 + KEEP);
    }

    #[test]
    fn an_exec_challenge_is_never_run_by_a_sync() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let dir = tmp.path().join("hiera");
        let marker = tmp.path().join("ran");
        let plan = format!(
            "{PLAN}credentials:\n  autosign: {{type: username_password, username: puppet, \
             password: {{exec: ['/usr/bin/touch', '{}']}}}}\n",
            marker.display()
        );
        add(&store, &plan);
        sync(&store, &dir, &LookupSettings::default()).unwrap();
        assert!(!marker.exists(), "the sync ran the plan's program");
        let autosign: Value =
            serde_json::from_slice(&std::fs::read(dir.join("current/autosign.json")).unwrap())
                .unwrap();
        let error = autosign.to_string();
        assert!(error.contains("runs only inside an execution"), "{error}");
    }

    #[test]
    fn a_reader_never_sees_a_partial_file_while_the_data_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let dir = tmp.path().join("hiera");
        let settings = LookupSettings::default();
        let (a, b) = (PLAN.to_string(), PLAN.replace("5433", "6543"));
        add(&store, &a);
        sync(&store, &dir, &settings).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (dir, done) = (dir.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
                    let levels = node_data(&dir, "db01.example.com").expect("whole files");
                    assert_eq!(levels.len(), 3);
                    let port = &levels[0].1["postgres::port"];
                    assert!(port == 5433 || port == 6543, "{port}");
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..30 {
            add(&store, if i % 2 == 0 { &b } else { &a });
            sync(&store, &dir, &settings).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn keys_hiera_cannot_look_up_are_refused_with_their_path() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        add(&store, &PLAN.replace("backup: true", "' backup': true"));
        let index = sync(
            &store,
            &tmp.path().join("hiera"),
            &LookupSettings::default(),
        )
        .unwrap();
        let problems = index.problems();
        assert!(
            problems[0]
                .1
                .contains("configuration.roles.db: the key \" backup\" cannot be looked up"),
            "{problems:?}"
        );
        assert!(
            index.plans["shop"].nodes.is_empty(),
            "no earlier data to keep"
        );
    }
}
