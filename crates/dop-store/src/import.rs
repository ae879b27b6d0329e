//! Import of an original DOP plan store (`<dir>/<plan>/versions/*.yaml`, `dopi.yaml`,
//! `dopv.yaml`), so existing users can move over with their history and state.

use std::path::{Path, PathBuf};

use dop_core::yaml::{self, Value, Yaml};
use dop_core::{load_str, LookupSettings, Plan};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::store::{App, Store, Stored};
use dop_core::time::from_compact_utc;

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Plans imported.
    pub plans: Vec<ImportedPlan>,
    /// Plans left out, with the reason.
    pub skipped: Vec<Skipped>,
}

/// One imported plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImportedPlan {
    /// Its name.
    pub name: String,
    /// Iterations stored (one per valid original version).
    pub iterations: usize,
    /// Original versions left out, with the reason.
    pub skipped_versions: Vec<Skipped>,
    /// dopi state records imported.
    pub dopi_records: usize,
    /// dopv state records imported.
    pub dopv_records: usize,
}

/// Something left out of an import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The plan or version.
    pub what: String,
    /// Why.
    pub reason: String,
}

/// Imports every plan of the original store at `dir` into `store`. Plans already in the store
/// are left alone; versions that are not valid plans (today, on this machine) are skipped and
/// reported.
pub fn import_store(store: &Store, dir: &Path, settings: &LookupSettings) -> Result<ImportReport> {
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    let mut plan_dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("versions").is_dir())
        .collect();
    plan_dirs.sort();
    if plan_dirs.is_empty() {
        return Err(StoreError::Import {
            path: dir.to_path_buf(),
            reason: "no plan directories with a versions/ folder: is this an original DOP \
                     plan store (its plan_store_dir)?"
                .into(),
        });
    }
    let mut report = ImportReport::default();
    for plan_dir in plan_dirs {
        let shown = plan_dir.display().to_string();
        match import_plan(store, &plan_dir, settings) {
            Ok(imported) => report.plans.push(imported),
            Err(e) => report.skipped.push(Skipped {
                what: shown,
                reason: e.to_string(),
            }),
        }
    }
    Ok(report)
}

fn import_plan(store: &Store, plan_dir: &Path, settings: &LookupSettings) -> Result<ImportedPlan> {
    let versions_dir = plan_dir.join("versions");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(&versions_dir)
        .map_err(|e| StoreError::io(&versions_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    // Version names are a UTC stamp (14 digits) and microseconds, which before 0.9.2 were not
    // zero-padded: sort by the stamp, then the microseconds as a number.
    versions.sort_by_key(|p| {
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let (stamp, micros) = stem.split_at(stem.len().min(14));
        (
            stamp.to_string(),
            micros.parse::<u64>().unwrap_or(0),
            stem.clone(),
        )
    });
    let mut skipped_versions = Vec::new();
    let mut valid: Vec<(String, Plan, PathBuf, Option<u64>)> = Vec::new();
    for version in versions {
        let text = std::fs::read_to_string(&version).map_err(|e| StoreError::io(&version, e))?;
        let loaded = load_str(&text, Some(&version), settings);
        match loaded.plan {
            Some(plan) => {
                let stamp = version
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(from_compact_utc);
                valid.push((text, plan, version, stamp));
            }
            None => skipped_versions.push(Skipped {
                what: version.display().to_string(),
                reason: loaded
                    .errors()
                    .next()
                    .map_or("not a valid plan".to_string(), |d| {
                        format!("not a valid plan: {}", d.message)
                    }),
            }),
        }
    }
    let Some(name) = valid.last().map(|(_, p, _, _)| p.name.clone()) else {
        return Err(StoreError::Import {
            path: plan_dir.to_path_buf(),
            reason: "no version of this plan is valid".into(),
        });
    };
    if store.entry(&name).is_ok() {
        return Err(StoreError::PlanExists(name));
    }
    let mut iterations = 0;
    for (i, (text, plan, path, stamp)) in valid.iter().enumerate() {
        if plan.name != name {
            skipped_versions.push(Skipped {
                what: path.display().to_string(),
                reason: format!("it names the plan '{}', not '{name}'", plan.name),
            });
            continue;
        }
        let stored = store.store_at(text, plan, Some(path), i == 0, *stamp)?;
        if matches!(stored, Stored::New(_)) {
            iterations += 1;
        }
    }
    let latest = store.iteration(&name, None)?.plan;
    let lock = store.lock(&name, "import-store")?;
    let dopi = read_state_file(&plan_dir.join("dopi.yaml"))?
        .map(|doc| dopi_records(&doc, &latest))
        .unwrap_or_default();
    let dopv = read_state_file(&plan_dir.join("dopv.yaml"))?
        .map(|doc| dopv_records(&doc))
        .unwrap_or_default();
    if !dopi.is_empty() {
        store.write_state(&lock, App::Dopi, &dopi, None)?;
    }
    if !dopv.is_empty() {
        store.write_state(&lock, App::Dopv, &dopv, None)?;
    }
    Ok(ImportedPlan {
        name,
        iterations,
        skipped_versions,
        dopi_records: dopi.len(),
        dopv_records: dopv.len(),
    })
}

/// Reads an original state file (YAML with Ruby symbol keys); a missing or empty file is none.
fn read_state_file(path: &Path) -> Result<Option<Yaml>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let doc = yaml::parse(&text).map_err(|e| StoreError::Import {
        path: path.to_path_buf(),
        reason: e.message,
    })?;
    Ok((!doc.root.is_null()).then_some(doc.root))
}

type Records = Vec<(String, Option<serde_json::Value>)>;

/// `:state: :step_sets: {set: [ {node: [ {:command_state: :done} ]} ]}`: steps by index, nodes
/// by name, commands by index. Becomes one record per step set, step and node, keyed
/// `set/step/node` with the step names of the latest iteration.
fn dopi_records(doc: &Yaml, plan: &Plan) -> Records {
    let mut out = Vec::new();
    let Some(sets) = doc
        .get("state")
        .and_then(|s| s.get("step_sets"))
        .and_then(Yaml::as_map)
    else {
        return out;
    };
    for (set_key, steps) in sets {
        let set_name = set_key.key_text();
        let Some(set) = plan.step_set(&set_name) else {
            continue;
        };
        let Value::Seq(steps) = &steps.value else {
            continue;
        };
        let step_keys = set.step_keys();
        for (index, nodes) in steps.iter().enumerate() {
            let Some(step_key) = step_keys.get(index) else {
                continue;
            };
            for (node, commands) in nodes.as_map().unwrap_or_default() {
                let states: Vec<String> = match &commands.value {
                    Value::Seq(list) => list
                        .iter()
                        .map(|c| {
                            c.get("command_state")
                                .and_then(Yaml::as_str_or_sym)
                                .unwrap_or("ready")
                                .to_string()
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let state = aggregate(&states);
                out.push((
                    format!("{set_name}/{step_key}/{}", node.key_text()),
                    Some(serde_json::json!({
                        "state": state,
                        "commands": states,
                        "imported_from": "dopi.yaml",
                    })),
                ));
            }
        }
    }
    out
}

/// The original's aggregation: any failed → failed, all done → done, any running or
/// starting → running, else ready.
fn aggregate(states: &[String]) -> &'static str {
    if states.iter().any(|s| s == "failed") {
        "failed"
    } else if !states.is_empty() && states.iter().all(|s| s == "done") {
        "done"
    } else if states
        .iter()
        .any(|s| s == "running" || s == "starting" || s == "running_noop")
    {
        "running"
    } else {
        "ready"
    }
}

/// `:data_volumes: {node: [disk…]}` and `:nodes: {node: {:ip_addresses: […]}}` become one
/// record per node.
fn dopv_records(doc: &Yaml) -> Records {
    let mut nodes: std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>> =
        std::collections::BTreeMap::new();
    for (section, field) in [("data_volumes", "data_volumes"), ("nodes", "facts")] {
        for (node, value) in doc.get(section).and_then(Yaml::as_map).unwrap_or_default() {
            nodes
                .entry(node.key_text())
                .or_default()
                .insert(field.to_string(), value.to_json());
        }
    }
    nodes
        .into_iter()
        .map(|(node, mut fields)| {
            fields.insert("imported_from".into(), "dopv.yaml".into());
            (node, Some(serde_json::Value::Object(fields)))
        })
        .collect()
}
