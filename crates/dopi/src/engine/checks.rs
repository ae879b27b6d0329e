//! Checking a plan's commands against the plugins: unknown plugins, bad parameters and
//! `run_on` targets, each with its place in the plan, for `dopi validate` and before a run.

use dop_core::plan::Command;
use dop_core::Plan;

use crate::plugin::Registry;

/// Checks every command of the plan against the registry: unknown plugins and bad parameters,
/// each with its plan path. Returns `(path, message, warning)`.
pub fn check_commands(plan: &Plan, registry: &Registry) -> Vec<(String, String, bool)> {
    let mut problems = Vec::new();
    for set in &plan.step_sets {
        let set_path = set.path();
        for (i, step) in set.steps.iter().enumerate() {
            let step_path = format!("{set_path}[{i}]");
            let field = if step.commands.len() == 1 {
                "command"
            } else {
                "commands"
            };
            for (j, cmd) in step.commands.iter().enumerate() {
                let path = format!("{step_path}.{field}[{j}]");
                check_command(cmd, &path, registry, plan, &mut problems);
            }
            for (j, d) in step.set_plugin_defaults.iter().enumerate() {
                let defaults_path = format!("{step_path}.set_plugin_defaults[{j}]");
                check_run_on(&d.options, &defaults_path, plan, &mut problems);
                for name in registry.names() {
                    if d.plugins.matches(name) {
                        let plugin = registry.get(name).expect("listed");
                        for p in plugin.check(&d.options).into_iter().filter(|p| !p.warning) {
                            problems.push((
                                format!("{step_path}.set_plugin_defaults[{j}].{}", p.key),
                                format!("{name}: {}", p.message),
                                false,
                            ));
                        }
                    }
                }
            }
        }
    }
    problems
}

/// `run_on` must name a node of the plan.
fn check_run_on(
    options: &crate::plugin::CommandOptions,
    path: &str,
    plan: &Plan,
    problems: &mut Vec<(String, String, bool)>,
) {
    if let Some(name) = options.get("run_on").and_then(serde_json::Value::as_str) {
        if !plan.nodes.iter().any(|n| n.name == name) {
            problems.push((
                format!("{path}.run_on"),
                format!("no node '{name}' in the plan to run the command on"),
                false,
            ));
        }
    }
}

fn check_command(
    cmd: &Command,
    path: &str,
    registry: &Registry,
    plan: &Plan,
    problems: &mut Vec<(String, String, bool)>,
) {
    check_run_on(&cmd.options, path, plan, problems);
    match registry.get(&cmd.plugin) {
        None if crate::plugin::NOT_YET_AVAILABLE.contains(&cmd.plugin.as_str()) => problems.push((
            format!("{path}.plugin"),
            format!(
                "the plugin '{}' is not available in this dopi yet (it runs: {}); `dopi run` refuses step sets that use it",
                cmd.plugin,
                registry.names().join(", ")
            ),
            true,
        )),
        None => problems.push((
            format!("{path}.plugin"),
            format!(
                "unknown plugin '{}'; dopi knows: {}",
                cmd.plugin,
                registry.names().join(", ")
            ),
            false,
        )),
        Some(plugin) => {
            for p in plugin.check(&cmd.options) {
                let at = if p.key.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}.{}", p.key)
                };
                problems.push((at, p.message, p.warning));
            }
        }
    }
    for (k, v) in cmd.verify_commands.iter().enumerate() {
        check_command(
            v,
            &format!("{path}.verify_commands[{k}]"),
            registry,
            plan,
            problems,
        );
    }
}

/// The problems that refuse a run of the step set at `set_path`: every error of the plan, and
/// the warnings about plugins this dopi lacks when the step set uses them (other step sets
/// may use them, and the plan still runs this one).
pub(super) fn refusals(plan: &Plan, set_path: &str, registry: &Registry) -> Vec<String> {
    let missing_here = |path: &str, message: &str| {
        path.starts_with(&format!("{set_path}[")) && message.contains("not available")
    };
    check_commands(plan, registry)
        .into_iter()
        .filter(|(path, message, warning)| !warning || missing_here(path, message))
        .map(|(path, message, _)| format!("  {path}: {message}"))
        .collect()
}
