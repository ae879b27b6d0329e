//! Hooks: programs dopv runs around creating, updating and destroying a node.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::credential::is_executable;
use crate::diagnostic::{index, join, Collector};
use crate::yaml::{Value, Yaml};

/// The plan's hooks; each list runs in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    /// Before a node is created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_create_vm: Vec<String>,
    /// After a node was created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_create_vm: Vec<String>,
    /// Before a node is changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_update_vm: Vec<String>,
    /// After a node was changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_update_vm: Vec<String>,
    /// Before a node is destroyed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_destroy_vm: Vec<String>,
    /// After a node was destroyed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_destroy_vm: Vec<String>,
}

const NAMES: [&str; 6] = [
    "pre_create_vm",
    "post_create_vm",
    "pre_update_vm",
    "post_update_vm",
    "pre_destroy_vm",
    "post_destroy_vm",
];

/// Reads `hooks`: a non-empty mapping from hook name to a non-empty list of executable files.
/// Relative paths are checked against the current directory, as the original did.
pub(crate) fn parse(c: &mut Collector<'_>, v: &Yaml, path: &str) -> Hooks {
    let mut hooks = Hooks::default();
    let entries = match v.as_map() {
        Some(e) if !e.is_empty() => e,
        _ => {
            c.error(v, path, "hooks, if given, must be a non-empty mapping");
            return hooks;
        }
    };
    for (key, list) in entries {
        let name = key.key_text();
        let p = join(path, &name);
        let slot = match name.as_str() {
            "pre_create_vm" => &mut hooks.pre_create_vm,
            "post_create_vm" => &mut hooks.post_create_vm,
            "pre_update_vm" => &mut hooks.pre_update_vm,
            "post_update_vm" => &mut hooks.post_update_vm,
            "pre_destroy_vm" => &mut hooks.pre_destroy_vm,
            "post_destroy_vm" => &mut hooks.post_destroy_vm,
            _ => {
                c.error(
                    key,
                    &p,
                    format!(
                        "invalid hook name '{name}': use one of {}",
                        NAMES.join(", ")
                    ),
                );
                continue;
            }
        };
        let Value::Seq(items) = &list.value else {
            c.error(list, &p, "a hook must be a non-empty list of programs");
            continue;
        };
        if items.is_empty() {
            c.error(list, &p, "a hook must be a non-empty list of programs");
        }
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(program) if is_executable(Path::new(program)) => {
                    slot.push(program.to_string())
                }
                Some(program) => c.error(
                    item,
                    &index(&p, i),
                    format!("the hook {program} is not an executable file"),
                ),
                None => c.error(item, &index(&p, i), "each hook must be a path to a program"),
            }
        }
    }
    hooks
}
