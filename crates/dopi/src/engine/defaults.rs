//! Plugin defaults: what `set_plugin_defaults` and `delete_plugin_defaults` leave in force
//! for each node as the steps go, and a command's options over them.

use std::collections::{BTreeMap, HashMap};

use dop_core::plan::{Command, DeletePluginDefaults, Step};

use crate::plugin::{CommandOptions, Registry};

/// Per node, per plugin name: the defaults in force.
pub(super) type Defaults = HashMap<String, BTreeMap<String, CommandOptions>>;

/// Applies a step's plugin-default changes to the nodes it selects.
pub(super) fn apply_defaults(
    defaults: &mut Defaults,
    step: &Step,
    nodes: &[String],
    registry: &Registry,
) {
    for node in nodes {
        let per_plugin = defaults.entry(node.clone()).or_default();
        match &step.delete_plugin_defaults {
            DeletePluginDefaults::None => {}
            DeletePluginDefaults::All => per_plugin.clear(),
            DeletePluginDefaults::Entries(entries) => {
                for e in entries {
                    for name in registry.names() {
                        if !e.plugins.matches(name) {
                            continue;
                        }
                        match &e.delete_keys {
                            None => {
                                per_plugin.remove(name);
                            }
                            Some(keys) => {
                                if let Some(o) = per_plugin.get_mut(name) {
                                    for k in keys {
                                        o.remove(k.trim_start_matches(':'));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        for d in &step.set_plugin_defaults {
            for name in registry.names() {
                if d.plugins.matches(name) {
                    let o = per_plugin.entry(name.to_string()).or_default();
                    for (k, v) in &d.options {
                        o.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
}

/// The command's options over the defaults of its plugin for the node (shallow, as before).
pub(super) fn effective(defaults: &Defaults, node: &str, cmd: &Command) -> CommandOptions {
    let mut o = defaults
        .get(node)
        .and_then(|p| p.get(&cmd.plugin))
        .cloned()
        .unwrap_or_default();
    for (k, v) in &cmd.options {
        o.insert(k.clone(), v.clone());
    }
    o
}
