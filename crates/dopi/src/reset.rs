//! `reset`: puts failed (or, with force, all) work back to ready, for the whole plan or a step
//! set, one step (by name or number) and some nodes.

use dop_core::{LookupSettings, NodeFacts, NodeFilter, Resolver};
use dop_store::{App, PlanLock, Store, StoreError};

use crate::state::{record_key, step_hash, step_keys, NodeStepState, PlanState, RunState};

/// What to reset.
#[derive(Clone, Debug, Default)]
pub struct ResetOptions {
    /// Only this step set.
    pub step_set: Option<String>,
    /// Only this step: its name, or its number (from 1) in the step set.
    pub step: Option<String>,
    /// Only these nodes (all when the filter has no include).
    pub filter: NodeFilter,
    /// Reset done work too.
    pub force: bool,
}

/// Why a reset failed.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The nodes' roles cannot be resolved through the site's Hiera: nothing was reset.
    #[error("nothing was reset: {0}")]
    Roles(#[from] dop_core::HieraError),
    /// No such step set or step.
    #[error("{0}")]
    NotFound(String),
}

/// Resets; returns how many node records changed.
pub fn reset(
    store: &Store,
    plan_name: &str,
    opts: &ResetOptions,
    settings: &LookupSettings,
) -> Result<usize, ResetError> {
    let lock = store.lock(plan_name, "dopi reset")?;
    reset_holding(store, &lock, opts, settings)
}

/// Resets the plan whose run lock the caller holds (dopc: its execution's, taken before the
/// execution's first part, so that no other writer comes between the parts).
pub fn reset_holding(
    store: &Store,
    lock: &PlanLock,
    opts: &ResetOptions,
    settings: &LookupSettings,
) -> Result<usize, ResetError> {
    let plan_name = lock.plan();
    let plan = store.iteration(plan_name, None)?.plan;
    let sets = chosen_steps(&plan, opts)?;
    let resolver = Resolver::new(&plan, settings)?;
    let wanted = opts.filter.select(&resolver);
    let mut wanted_nodes = vec![false; resolver.len()];
    for i in wanted.nodes {
        wanted_nodes[i] = true;
    }
    let state = PlanState::from_records(&store.state(plan_name, App::Dopi)?);
    let mut changes = Vec::new();
    for (set, chosen) in sets {
        let keys = step_keys(set);
        for s in chosen {
            let step = &set.steps[s];
            let hash = step_hash(step);
            for i in step.filter.select(&resolver).nodes {
                if !wanted_nodes[i] {
                    continue;
                }
                let key = record_key(&set.name, &keys[s], resolver.name(i));
                let Some(record) = state.current(&key, &hash) else {
                    continue;
                };
                let mut record: NodeStepState = record.clone();
                let mut changed = false;
                for c in &mut record.commands {
                    let reset_it = match c.state {
                        RunState::Failed | RunState::Running => true,
                        RunState::Done => opts.force,
                        RunState::Ready => false,
                    };
                    if reset_it {
                        c.state = RunState::Ready;
                        c.message = Some(if opts.force {
                            "reset (forced)".into()
                        } else {
                            "reset".into()
                        });
                        changed = true;
                    }
                }
                if changed {
                    record.refresh();
                    changes.push((key, Some(serde_json::to_value(&record).unwrap_or_default())));
                }
            }
        }
    }
    let count = changes.len();
    if !changes.is_empty() {
        store.write_state(lock, App::Dopi, &changes, None)?;
    }
    Ok(count)
}

/// The step sets and steps (by index) a reset touches; an error names a step set or step the
/// plan does not have. dopc checks an execution's options with it before it queues one.
pub fn chosen_steps<'p>(
    plan: &'p dop_core::Plan,
    opts: &ResetOptions,
) -> Result<Vec<(&'p dop_core::plan::StepSet, Vec<usize>)>, ResetError> {
    let plan_name = &plan.name;
    let sets: Vec<&dop_core::plan::StepSet> = match (&opts.step_set, &opts.step) {
        (Some(name), _) => vec![plan.step_set(name).ok_or_else(|| {
            ResetError::NotFound(format!(
                "plan '{plan_name}' has no step set '{name}'; it has: {}",
                plan.step_sets
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?],
        (None, Some(_)) => vec![plan.step_set("default").ok_or_else(|| {
            ResetError::NotFound(
                "--step needs --stepset: the plan has no step set 'default'".into(),
            )
        })?],
        (None, None) => plan.step_sets.iter().collect(),
    };
    let mut out = Vec::new();
    for set in sets {
        let keys = step_keys(set);
        let chosen: Vec<usize> = match &opts.step {
            None => (0..set.steps.len()).collect(),
            Some(which) => {
                let by_name = keys.iter().position(|k| k == which);
                let by_number = which
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=set.steps.len()).contains(n))
                    .map(|n| n - 1);
                vec![by_name.or(by_number).ok_or_else(|| {
                    ResetError::NotFound(format!(
                        "step set '{}' has no step '{which}' (give a name or a number from 1 to {})",
                        set.name,
                        set.steps.len()
                    ))
                })?]
            }
        };
        out.push((set, chosen));
    }
    Ok(out)
}
