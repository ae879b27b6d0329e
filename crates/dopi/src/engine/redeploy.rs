//! Nodes dopv redeployed since dopi last ran on them: their recorded host keys are
//! forgotten (a new machine has a new key) and their step state is refused, reset or kept.

use std::collections::{BTreeMap, HashMap};

use dop_core::{EventKind, Level, NodeFacts, Plan, Resolver};
use dop_run::deployment::Deployed;
use dop_run::logs::ExecutionLog;
use dop_store::{App, StateSession, StoreError};

use super::{node_of, Redeployed, RunError, RunOptions};
use crate::plugin::Reach;

/// Brings the records in line with dopv's deployments; returns where the nodes are reached
/// and the host keys still trusted.
pub(super) fn reconcile(
    state: &StateSession,
    plan: &Plan,
    opts: &RunOptions,
    log: &ExecutionLog,
) -> Result<(Reach, HashMap<String, String>), RunError> {
    let deployed = dop_run::deployment::deployed(&state.read(App::Dopv)?);
    redeployments(state, plan, opts, &deployed, log)?;
    let known = recorded_host_keys(state)?;
    Ok((Reach::new(plan, deployed), known))
}

/// Handles nodes dopv redeployed since dopi wrote their state: their host keys are forgotten
/// (a new machine has a new key), and their step state is refused, reset or kept as
/// `opts.redeployed` says.
fn redeployments(
    state: &StateSession,
    plan: &Plan,
    opts: &RunOptions,
    deployed: &BTreeMap<String, Deployed>,
    log: &ExecutionLog,
) -> Result<(), RunError> {
    let generation_of = |node: &str| deployed.get(node).map(|d| d.generation);
    let resolver = Resolver::new(plan, &opts.settings)?;
    let selected: std::collections::HashSet<&str> = opts
        .filter
        .select(&resolver)
        .nodes
        .into_iter()
        .map(|i| resolver.name(i))
        .collect();
    let records = state.read(App::Dopi)?;
    let mut stale: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut stale_keys = Vec::new();
    for (key, value) in &records.records {
        let node = node_of(key);
        let (Some(old), Some(new)) = (value["generation"].as_u64(), generation_of(node)) else {
            continue;
        };
        if old != new && selected.contains(node) {
            stale.insert(node.to_string(), (old, new));
            stale_keys.push((key.clone(), value.clone(), new));
        }
    }
    if stale.is_empty() {
        return forget_redeployed_host_keys(state, deployed, log, opts.noop);
    }
    let listed: Vec<String> = stale
        .iter()
        .map(|(n, (old, new))| format!("{n} (generation {old} → {new})"))
        .collect();
    match opts.redeployed {
        Redeployed::Refuse => return Err(RunError::Redeployed { nodes: listed }),
        _ if opts.noop => {}
        Redeployed::Reset | Redeployed::Ignore => {
            let reset = opts.redeployed == Redeployed::Reset;
            let changes = stale_keys
                .into_iter()
                .map(|(key, mut value, new)| {
                    if reset {
                        (key, None)
                    } else {
                        value["generation"] = serde_json::json!(new);
                        (key, Some(value))
                    }
                })
                .collect();
            state.write(App::Dopi, changes)?;
            for line in &listed {
                log.event(
                    Level::Warn,
                    EventKind::Message,
                    None,
                    None,
                    format!(
                        "redeployed by dopv: {line}; its step state was {}",
                        if reset {
                            "reset"
                        } else {
                            "kept (--redeployed ignore)"
                        }
                    ),
                    serde_json::Map::new(),
                );
            }
        }
    }
    forget_redeployed_host_keys(state, deployed, log, opts.noop)
}

/// Forgets host keys recorded under an older dopv generation of their node.
fn forget_redeployed_host_keys(
    state: &StateSession,
    deployed: &BTreeMap<String, Deployed>,
    log: &ExecutionLog,
    noop: bool,
) -> Result<(), RunError> {
    let hosts = state.read(App::Hosts)?;
    let mut forget = Vec::new();
    for (node, value) in &hosts.records {
        let (Some(old), Some(d)) = (value["generation"].as_u64(), deployed.get(node)) else {
            continue;
        };
        if old != d.generation {
            forget.push((node.clone(), None));
            log.event(
                Level::Info,
                EventKind::Message,
                Some(node),
                None,
                format!(
                    "dopv redeployed the node (generation {old} → {}): its old SSH host key is forgotten",
                    d.generation
                ),
                serde_json::Map::new(),
            );
        }
    }
    if !forget.is_empty() && !noop {
        state.write(App::Hosts, forget)?;
    }
    Ok(())
}

/// The host keys recorded for the plan's nodes.
fn recorded_host_keys(state: &StateSession) -> Result<HashMap<String, String>, StoreError> {
    Ok(state
        .read(App::Hosts)?
        .records
        .into_iter()
        .filter_map(|(node, v)| Some((node, v["fingerprint"].as_str()?.to_string())))
        .collect())
}
