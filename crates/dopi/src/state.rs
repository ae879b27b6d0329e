//! dopi's state: for every step set, step and node, the state of each command, kept in the
//! plan store as one record per `set/step/node`.
//!
//! Records are keyed by names (a repeated step name gets `#2`), so a new plan iteration finds
//! its state by name: a new node or step has no record and is ready; a removed one's record is
//! ignored; a step whose definition changed carries another `step_hash` and is ready again.

use std::collections::BTreeMap;

use dop_core::plan::StepSet;
use serde::{Deserialize, Serialize};

/// The state of a command (and, aggregated, of a node in a step, a step, a step set).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Not run yet, or reset.
    #[default]
    Ready,
    /// Running now (or interrupted, when no run holds the plan).
    Running,
    /// Finished successfully (or skipped because its verify commands passed).
    Done,
    /// Finished unsuccessfully.
    Failed,
}

impl RunState {
    /// The state of a group: any failed → failed; all done → done; any running → running;
    /// else ready (a mix of done and ready is ready, which is what lets a run resume).
    pub fn aggregate(states: impl IntoIterator<Item = RunState>) -> RunState {
        let (mut any, mut all_done, mut failed, mut running) = (false, true, false, false);
        for s in states {
            any = true;
            all_done &= s == RunState::Done;
            failed |= s == RunState::Failed;
            running |= s == RunState::Running;
        }
        if failed {
            RunState::Failed
        } else if any && all_done {
            RunState::Done
        } else if running {
            RunState::Running
        } else {
            RunState::Ready
        }
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Ready => "ready",
            RunState::Running => "running",
            RunState::Done => "done",
            RunState::Failed => "failed",
        }
    }
}

/// One command of a node in a step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandState {
    /// The command's title.
    pub title: String,
    /// Its state.
    pub state: RunState,
    /// How many times it was started.
    #[serde(default)]
    pub attempts: u32,
    /// When the last attempt started (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// When the last attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The exit status of the last attempt's process, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// The last lines of output of the last attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_tail: Vec<String>,
    /// Why it failed, was skipped or was reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A node's record in one step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStepState {
    /// The aggregate of the commands (kept for readers that only want this).
    pub state: RunState,
    /// A hash of the step's definition when the record was written: a changed step starts over.
    #[serde(default)]
    pub step_hash: String,
    /// The plan iteration the record was written under.
    #[serde(default)]
    pub iteration: u64,
    /// The commands, in order.
    #[serde(default)]
    pub commands: Vec<CommandState>,
    /// The dopv generation of the node when the record was written (none when dopv did not
    /// deploy it): a node dopv redeployed since has stale records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

impl NodeStepState {
    /// A fresh record: every command ready.
    pub fn ready(step: &dop_core::plan::Step, step_hash: &str, iteration: u64) -> NodeStepState {
        NodeStepState {
            state: RunState::Ready,
            step_hash: step_hash.to_string(),
            iteration,
            generation: None,
            commands: step
                .commands
                .iter()
                .map(|c| CommandState {
                    title: c.title.clone(),
                    ..CommandState::default()
                })
                .collect(),
        }
    }

    /// Recomputes `state` from the commands.
    pub fn refresh(&mut self) {
        self.state = RunState::aggregate(self.commands.iter().map(|c| c.state));
    }
}

/// The record key of a node in a step.
pub fn record_key(set: &str, step_key: &str, node: &str) -> String {
    format!("{set}/{step_key}/{node}")
}

/// The keys of a step set's steps (see `StepSet::step_keys`).
pub fn step_keys(set: &StepSet) -> Vec<String> {
    set.step_keys()
}

/// A stable hash of a step's definition (FNV-1a over its JSON form).
pub fn step_hash(step: &dop_core::plan::Step) -> String {
    let json = serde_json::to_string(step).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The state of a plan's nodes in its steps, as read from the store records.
#[derive(Clone, Debug, Default)]
pub struct PlanState {
    /// Records by key, parsed.
    pub records: BTreeMap<String, NodeStepState>,
    /// The store serial they were read at.
    pub serial: u64,
}

impl PlanState {
    /// Parses store records. Records imported from the original dopi (`{state, commands:
    /// ["done", …]}`) are read too; records of another format count as absent.
    pub fn from_records(records: &dop_store::StateRecords) -> PlanState {
        let parsed = records
            .records
            .iter()
            .filter_map(|(k, v)| {
                let record = serde_json::from_value::<NodeStepState>(v.clone())
                    .ok()
                    .or_else(|| imported(v))?;
                Some((k.clone(), record))
            })
            .collect();
        PlanState {
            records: parsed,
            serial: records.serial,
        }
    }

    /// The record of a node in a step, if it belongs to this definition of the step.
    pub fn current(&self, key: &str, hash: &str) -> Option<&NodeStepState> {
        self.records
            .get(key)
            .filter(|r| r.step_hash == hash || r.step_hash.is_empty())
    }

    /// The state of every node of every step of a step set, for `show`: `(step key, [(node,
    /// state)])`, ready where nothing is recorded.
    pub fn step_set_view(
        &self,
        set: &StepSet,
        nodes_of: impl Fn(&dop_core::plan::Step) -> Vec<String>,
    ) -> Vec<(String, Vec<(String, NodeStepState)>)> {
        step_keys(set)
            .into_iter()
            .zip(&set.steps)
            .map(|(key, step)| {
                let hash = step_hash(step);
                let nodes = nodes_of(step)
                    .into_iter()
                    .map(|node| {
                        let mut record = self
                            .current(&record_key(&set.name, &key, &node), &hash)
                            .cloned()
                            .unwrap_or_else(|| NodeStepState::ready(step, &hash, 0));
                        for (c, command) in record.commands.iter_mut().zip(&step.commands) {
                            if c.title.is_empty() {
                                c.title.clone_from(&command.title);
                            }
                        }
                        (node, record)
                    })
                    .collect();
                (key, nodes)
            })
            .collect()
    }
}

/// A record written by `import-store` from an original `dopi.yaml`: command states only.
fn imported(v: &serde_json::Value) -> Option<NodeStepState> {
    let states = v.get("commands")?.as_array()?;
    let commands = states
        .iter()
        .map(|s| {
            let state = match s.as_str()? {
                "done" => RunState::Done,
                "failed" => RunState::Failed,
                // `running`/`starting` in an original file were interrupted runs.
                _ => RunState::Ready,
            };
            Some(CommandState {
                state,
                message: Some("imported from the original dopi".into()),
                ..CommandState::default()
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let mut record = NodeStepState {
        commands,
        ..NodeStepState::default()
    };
    record.refresh();
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregation_follows_the_original_rules() {
        use RunState::*;
        assert_eq!(RunState::aggregate([Done, Failed, Running]), Failed);
        assert_eq!(RunState::aggregate([Done, Done]), Done);
        assert_eq!(RunState::aggregate([Done, Ready]), Ready);
        assert_eq!(RunState::aggregate([Done, Running, Ready]), Running);
        assert_eq!(RunState::aggregate([]), Ready);
    }
}
