//! What `dopi update` does to the step state with a new plan iteration, as the original's
//! `--clear` and `--ignore`. Without either, nothing: records are found by step and node
//! name, and a step whose definition changed is ready again by its `step_hash`.

use dop_core::Plan;
use dop_store::{App, PlanLock, Store, StoreError};

use crate::state::{record_key, step_hash, step_keys, CommandState, PlanState};

/// `--clear`: every record of the plan removed, so every step is ready on every node.
/// Returns how many records were removed.
pub fn clear(store: &Store, lock: &PlanLock) -> Result<usize, StoreError> {
    let records = store.state(lock.plan(), App::Dopi)?;
    let changes: Vec<(String, Option<serde_json::Value>)> =
        records.records.keys().map(|k| (k.clone(), None)).collect();
    if !changes.is_empty() {
        store.write_state(lock, App::Dopi, &changes, None)?;
    }
    Ok(changes.len())
}

/// `--ignore`: the records of steps whose definition changed are taken over by the new
/// definition with their states, so that the change does not make the step run again (a
/// corrected typo in a command that already ran). Commands are matched by position: a
/// command the step gained is ready, one it lost goes. Returns how many records were taken
/// over.
pub fn keep(store: &Store, lock: &PlanLock, plan: &Plan) -> Result<usize, StoreError> {
    let state = PlanState::from_records(&store.state(lock.plan(), App::Dopi)?);
    let mut changes = Vec::new();
    for set in &plan.step_sets {
        for (key, step) in step_keys(set).iter().zip(&set.steps) {
            let hash = step_hash(step);
            let prefix = record_key(&set.name, key, "");
            for (record_key, record) in state.records.range(prefix.clone()..) {
                if !record_key.starts_with(&prefix) {
                    break;
                }
                if record.step_hash == hash || record.step_hash.is_empty() {
                    continue;
                }
                let mut record = record.clone();
                record.step_hash.clone_from(&hash);
                record.commands.truncate(step.commands.len());
                for command in &step.commands[record.commands.len()..] {
                    record.commands.push(CommandState {
                        title: command.title.clone(),
                        ..CommandState::default()
                    });
                }
                for (c, command) in record.commands.iter_mut().zip(&step.commands) {
                    c.title.clone_from(&command.title);
                }
                record.refresh();
                changes.push((
                    record_key.clone(),
                    Some(serde_json::to_value(&record).unwrap_or_default()),
                ));
            }
        }
    }
    if !changes.is_empty() {
        store.write_state(lock, App::Dopi, &changes, None)?;
    }
    Ok(changes.len())
}

/// `--clear` or `--ignore` (dopc: `clear` or `ignore`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateChoice {
    /// [`clear`].
    Clear,
    /// [`keep`].
    Keep,
}

impl StateChoice {
    /// Changes the state of the plan whose latest iteration `plan` is, under `lock`; returns
    /// a line for people saying what was done.
    pub fn apply(self, store: &Store, lock: &PlanLock, plan: &Plan) -> Result<String, StoreError> {
        Ok(match self {
            StateChoice::Clear => format!(
                "dopi state cleared: {} node record(s) removed, every step is ready",
                clear(store, lock)?
            ),
            StateChoice::Keep => format!(
                "dopi state kept: {} node record(s) of changed steps keep their state",
                keep(store, lock, plan)?
            ),
        })
    }
}
