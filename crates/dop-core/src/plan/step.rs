//! Step sets, steps, commands and plugin defaults.

use serde::{Deserialize, Serialize};

use super::check::{boolean, field, integer, warn_unknown_keys};
use super::run_options::{self, Concurrency};
use crate::diagnostic::{index, join, Collector};
use crate::filter::{self, NodeFilter};
use crate::pattern::Selector;
use crate::yaml::{Value, Yaml};

/// A named, ordered list of steps (`default` when `steps` is a plain list).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSet {
    /// The step set's name.
    pub name: String,
    /// The plan wrote `steps` as a plain list (this set is `default`); plan paths then read
    /// `steps[2]` rather than `steps.default[2]`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implicit: bool,
    /// Reset the set to ready when a run finished all of it successfully (for maintenance
    /// step sets run again and again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_reset: bool,
    /// The plan wrote the set as a mapping with `steps` (its steps are at
    /// `steps.<name>.steps[i]`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mapping: bool,
    /// Its steps, in order.
    pub steps: Vec<Step>,
}

/// One step: commands run on the nodes its filter selects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The step's name (numbers are taken as their text).
    pub name: String,
    /// Which nodes it runs on.
    #[serde(default)]
    pub filter: NodeFilter,
    /// The commands, run one after the other on each node.
    pub commands: Vec<Command>,
    /// Plugin defaults set from this step on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_plugin_defaults: Vec<PluginDefaults>,
    /// Plugin defaults removed from this step on.
    #[serde(default, skip_serializing_if = "DeletePluginDefaults::is_none")]
    pub delete_plugin_defaults: DeletePluginDefaults,
    /// Run options overriding the plan's.
    #[serde(default)]
    pub run_options: Concurrency,
}

/// A command: a plugin and the plugin's own options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The plugin name, e.g. `ssh/custom`.
    pub plugin: String,
    /// A title for logs (the plugin name unless set).
    pub title: String,
    /// Seconds before the command is stopped; unset: the plugin's default
    /// (`DEFAULT_PLUGIN_TIMEOUT`, longer for Puppet runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_timeout: Option<i64>,
    /// Run the verify commands after the command too.
    pub verify_after_run: bool,
    /// Commands that decide whether this one needs to run at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_commands: Vec<Command>,
    /// The remaining keys, for the plugin (symbol keys as their names).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// Default `plugin_timeout` of most plugins, in seconds.
pub const DEFAULT_PLUGIN_TIMEOUT: i64 = 300;

/// One `set_plugin_defaults` entry: options applied to the commands of matching plugins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginDefaults {
    /// Which plugins it applies to.
    pub plugins: Selector,
    /// The options.
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// `delete_plugin_defaults`: everything, or some keys of some plugins.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletePluginDefaults {
    /// Nothing is deleted.
    #[default]
    None,
    /// Every default of every plugin.
    All,
    /// Some keys of some plugins.
    Entries(Vec<DeleteEntry>),
}

impl StepSet {
    /// The keys of the steps, by which state and diffs find them: the step names, a repeated
    /// name with `#2`, `#3`.
    pub fn step_keys(&self) -> Vec<String> {
        let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        self.steps
            .iter()
            .map(|s| {
                let n = seen.entry(s.name.as_str()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    s.name.clone()
                } else {
                    format!("{}#{n}", s.name)
                }
            })
            .collect()
    }

    /// The plan path of the set's step list: `steps`, `steps.<name>` or `steps.<name>.steps`.
    pub fn path(&self) -> String {
        match (self.implicit, self.mapping) {
            (true, _) => "steps".to_string(),
            (false, false) => format!("steps.{}", self.name),
            (false, true) => format!("steps.{}.steps", self.name),
        }
    }
}

impl DeletePluginDefaults {
    fn is_none(&self) -> bool {
        *self == DeletePluginDefaults::None
    }
}

/// One `delete_plugin_defaults` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteEntry {
    /// Which plugins.
    pub plugins: Selector,
    /// Which keys (`None` for all of them).
    pub delete_keys: Option<Vec<String>>,
}

/// Reads `steps`: a list (one step set, `default`) or a mapping of step set name to list.
pub(crate) fn parse_step_sets(c: &mut Collector<'_>, v: &Yaml) -> Vec<StepSet> {
    match &v.value {
        Value::Null => Vec::new(),
        Value::Seq(_) => parse_step_set(c, "default", v, "steps")
            .map(|mut set| {
                set.implicit = true;
                set
            })
            .into_iter()
            .collect(),
        Value::Map(entries) => {
            if entries.is_empty() {
                c.error(
                    v,
                    "steps",
                    "the mapping of step sets in 'steps' must not be empty",
                );
            }
            let mut sets = Vec::new();
            for (key, list) in entries {
                let Some(name) = key.as_str() else {
                    c.error(
                        key,
                        "steps",
                        format!("step set names must be strings, not {}", key.describe()),
                    );
                    continue;
                };
                let p = join("steps", name);
                // A step set is a list of steps, or (new in dop) a mapping with its settings
                // and `steps`: `{auto_reset: true, steps: [...]}`.
                let (steps, auto_reset) = match &list.value {
                    Value::Seq(_) => (list, false),
                    Value::Map(_) => {
                        warn_unknown_keys(c, list, &p, &["steps", "auto_reset"]);
                        let auto_reset = field(list, "auto_reset")
                            .and_then(|a| boolean(c, a, &join(&p, "auto_reset"), "'auto_reset'"))
                            .unwrap_or(false);
                        match list.get("steps") {
                            Some(steps) if matches!(steps.value, Value::Seq(_)) => {
                                (steps, auto_reset)
                            }
                            other => {
                                c.error(
                                    other.unwrap_or(list),
                                    &join(&p, "steps"),
                                    "a step set written as a mapping needs 'steps', a list of steps",
                                );
                                continue;
                            }
                        }
                    }
                    _ => {
                        c.error(
                            list,
                            &p,
                            format!(
                                "a step set must be a list of steps (or a mapping with 'steps'), not {}",
                                list.describe()
                            ),
                        );
                        continue;
                    }
                };
                let path = if std::ptr::eq(steps, list) {
                    p.clone()
                } else {
                    join(&p, "steps")
                };
                sets.extend(parse_step_set(c, name, steps, &path).map(|mut set| {
                    set.auto_reset = auto_reset;
                    set.mapping = !std::ptr::eq(steps, list);
                    set
                }));
            }
            sets
        }
        _ => {
            c.error(
                v,
                "steps",
                "'steps' must be a list of steps or a mapping of step set names to lists",
            );
            Vec::new()
        }
    }
}

fn parse_step_set(c: &mut Collector<'_>, name: &str, v: &Yaml, path: &str) -> Option<StepSet> {
    let Value::Seq(items) = &v.value else {
        return None;
    };
    if items.is_empty() {
        c.error(v, path, format!("step set '{name}' has no steps"));
        return None;
    }
    let errors = c.error_count();
    let mut steps: Vec<Step> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        if item.as_map().is_none() {
            c.error(
                item,
                &p,
                format!("a step must be a mapping, not {}", item.describe()),
            );
            continue;
        }
        if let Some(step) = parse_step(c, item, &p) {
            if steps.iter().any(|s| s.name == step.name) {
                c.warn(
                    item.get("name").unwrap_or(item),
                    &join(&p, "name"),
                    format!("step set '{name}' already has a step named '{}'; state and diffs tell them apart by position", step.name),
                );
            }
            steps.push(step);
        }
    }
    (c.error_count() == errors).then(|| StepSet {
        name: name.to_string(),
        implicit: false,
        auto_reset: false,
        mapping: false,
        steps,
    })
}

const STEP_KEYS: [&str; 11] = [
    "name",
    "nodes",
    "roles",
    "nodes_by_config",
    "exclude_nodes",
    "exclude_roles",
    "exclude_nodes_by_config",
    "command",
    "commands",
    "set_plugin_defaults",
    "delete_plugin_defaults",
];

fn parse_step(c: &mut Collector<'_>, v: &Yaml, path: &str) -> Option<Step> {
    let known: Vec<&str> = STEP_KEYS
        .iter()
        .chain(run_options::KEYS.iter())
        .copied()
        .collect();
    warn_unknown_keys(c, v, path, &known);
    let errors = c.error_count();
    let name = match field(v, "name") {
        None => {
            c.error(v, &join(path, "name"), "every step needs a 'name'");
            None
        }
        Some(n) => match &n.value {
            Value::Str(s) | Value::Sym(s) => Some(s.clone()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => Some(n.key_text()),
            _ => {
                c.error(
                    n,
                    &join(path, "name"),
                    format!("a step name must be a string, not {}", n.describe()),
                );
                None
            }
        },
    };
    let filter = filter::parse_plan_filter(c, v, path);
    let commands = match (v.get("command"), v.get("commands")) {
        (Some(_), Some(second)) => {
            c.error(
                second,
                &join(path, "commands"),
                "use either 'command' or 'commands', not both",
            );
            None
        }
        (None, None) => {
            c.error(
                v,
                &join(path, "commands"),
                "the step needs 'commands' (or 'command')",
            );
            None
        }
        (Some(one), None) => parse_commands(c, one, &join(path, "command"), "command"),
        (None, Some(many)) => parse_commands(c, many, &join(path, "commands"), "commands"),
    };
    let set_plugin_defaults = field(v, "set_plugin_defaults")
        .map(|d| parse_set_defaults(c, d, &join(path, "set_plugin_defaults")))
        .unwrap_or_default();
    let delete_plugin_defaults = field(v, "delete_plugin_defaults")
        .map(|d| parse_delete_defaults(c, d, &join(path, "delete_plugin_defaults")))
        .unwrap_or_default();
    let run_options = Concurrency::parse(c, v, path);
    (c.error_count() == errors).then(|| Step {
        name: name.unwrap_or_default(),
        filter,
        commands: commands.unwrap_or_default(),
        set_plugin_defaults,
        delete_plugin_defaults,
        run_options,
    })
}

/// Reads a command or a list of commands (strings and mappings may be mixed).
fn parse_commands(c: &mut Collector<'_>, v: &Yaml, path: &str, what: &str) -> Option<Vec<Command>> {
    match &v.value {
        Value::Seq(items) => {
            if items.is_empty() {
                c.error(v, path, format!("'{what}' must not be an empty list"));
                return None;
            }
            let parsed: Vec<Option<Command>> = items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_command(c, item, &index(path, i)))
                .collect();
            parsed.into_iter().collect()
        }
        Value::Null => {
            c.error(v, path, format!("'{what}' must not be empty"));
            None
        }
        _ => parse_command(c, v, path).map(|cmd| vec![cmd]),
    }
}

const COMMAND_KEYS: [&str; 5] = [
    "plugin",
    "title",
    "plugin_timeout",
    "verify_after_run",
    "verify_commands",
];

fn parse_command(c: &mut Collector<'_>, v: &Yaml, path: &str) -> Option<Command> {
    let command = |plugin: String| Command {
        title: plugin.clone(),
        plugin,
        plugin_timeout: None,
        verify_after_run: false,
        verify_commands: Vec::new(),
        options: serde_json::Map::new(),
    };
    let entries = match &v.value {
        Value::Str(s) if s.is_empty() => {
            c.error(
                v,
                path,
                "a command cannot be an empty string; give a plugin name",
            );
            return None;
        }
        Value::Str(s) | Value::Sym(s) => return Some(command(s.clone())),
        Value::Map(entries) if entries.is_empty() => {
            c.error(
                v,
                path,
                "a command cannot be an empty mapping; it needs a 'plugin'",
            );
            return None;
        }
        Value::Map(entries) => entries,
        _ => {
            c.error(
                v,
                path,
                format!(
                    "a command must be a plugin name or a mapping with a 'plugin', not {}",
                    v.describe()
                ),
            );
            return None;
        }
    };
    let errors = c.error_count();
    let plugin = match v.get("plugin") {
        None => {
            c.error(
                v,
                &join(path, "plugin"),
                "the command mapping needs a 'plugin'",
            );
            None
        }
        Some(p) => match p.as_str() {
            Some(s) if !s.is_empty() => Some(s.to_string()),
            _ => {
                c.error(
                    p,
                    &join(path, "plugin"),
                    format!("'plugin' must be a plugin name, not {}", p.describe()),
                );
                None
            }
        },
    };
    let mut cmd = command(plugin.clone().unwrap_or_default());
    if let Some(t) = field(v, "title") {
        match t.as_str() {
            Some(s) => cmd.title = s.to_string(),
            None => c.error(
                t,
                &join(path, "title"),
                "the command title must be a string",
            ),
        }
    }
    if let Some(t) = field(v, "plugin_timeout") {
        let p = join(path, "plugin_timeout");
        match integer(c, t, &p, "'plugin_timeout'") {
            Some(n) if n <= 0 => c.error(
                t,
                &p,
                format!("'plugin_timeout' must be a positive number of seconds, not {n}"),
            ),
            Some(n) => cmd.plugin_timeout = Some(n),
            None => {}
        }
    }
    if let Some(b) = field(v, "verify_after_run") {
        if let Some(b) = boolean(c, b, &join(path, "verify_after_run"), "'verify_after_run'") {
            cmd.verify_after_run = b;
        }
    }
    if let Some(vc) = field(v, "verify_commands") {
        let p = join(path, "verify_commands");
        if matches!(
            vc.value,
            Value::Str(_) | Value::Sym(_) | Value::Map(_) | Value::Seq(_)
        ) {
            cmd.verify_commands = parse_commands(c, vc, &p, "verify_commands").unwrap_or_default();
        } else {
            c.error(
                vc,
                &p,
                "'verify_commands' must be a command or a list of commands",
            );
        }
    }
    for (key, value) in entries {
        let name = key.key_text();
        if !COMMAND_KEYS.contains(&name.as_str()) {
            cmd.options.insert(name, value.to_json());
        }
    }
    (c.error_count() == errors && plugin.is_some()).then_some(cmd)
}

/// The keys of a plugin-defaults entry other than `plugins`/`plugin` (and `delete_keys`).
fn options_of(v: &Yaml, skip: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    v.as_map()
        .unwrap_or_default()
        .iter()
        .filter(|(k, _)| !skip.contains(&k.key_text().as_str()))
        .map(|(k, val)| (k.key_text(), val.to_json()))
        .collect()
}

/// The `plugins` (alias `plugin`) selector of a plugin-defaults entry.
fn plugins_of(c: &mut Collector<'_>, v: &Yaml, path: &str) -> Option<Selector> {
    let (key, value) = match (v.get("plugins"), v.get("plugin")) {
        (Some(_), Some(p)) => {
            c.error(
                p,
                &join(path, "plugin"),
                "use either 'plugins' or 'plugin', not both",
            );
            return None;
        }
        (Some(p), None) => ("plugins", p),
        (None, Some(p)) => ("plugin", p),
        (None, None) => {
            c.error(
                v,
                &join(path, "plugins"),
                "the entry needs 'plugins': a plugin name, /regex/, list or all",
            );
            return None;
        }
    };
    filter::parse_selector(c, value, &join(path, key), key)
}

fn parse_set_defaults(c: &mut Collector<'_>, v: &Yaml, path: &str) -> Vec<PluginDefaults> {
    let Value::Seq(items) = &v.value else {
        c.error(v, path, "'set_plugin_defaults' must be a list of mappings");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        if item.as_map().is_none() {
            c.error(
                item,
                &p,
                "each entry of 'set_plugin_defaults' must be a mapping",
            );
            continue;
        }
        if let Some(plugins) = plugins_of(c, item, &p) {
            out.push(PluginDefaults {
                plugins,
                options: options_of(item, &["plugins", "plugin"]),
            });
        }
    }
    out
}

fn parse_delete_defaults(c: &mut Collector<'_>, v: &Yaml, path: &str) -> DeletePluginDefaults {
    if v.as_str_or_sym().is_some_and(Selector::is_all_keyword) {
        return DeletePluginDefaults::All;
    }
    let Value::Seq(items) = &v.value else {
        c.error(
            v,
            path,
            "'delete_plugin_defaults' must be 'all' or a list of mappings",
        );
        return DeletePluginDefaults::None;
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        if item.as_map().is_none() {
            c.error(
                item,
                &p,
                "each entry of 'delete_plugin_defaults' must be a mapping",
            );
            continue;
        }
        let plugins = plugins_of(c, item, &p);
        let keys = match (item.get("delete_keys"), item.get("delete_key")) {
            (Some(k), None) | (None, Some(k)) => Some(k),
            (Some(_), Some(k)) => {
                c.error(
                    k,
                    &join(&p, "delete_key"),
                    "use either 'delete_keys' or 'delete_key', not both",
                );
                None
            }
            (None, None) => {
                c.error(
                    item,
                    &join(&p, "delete_keys"),
                    "the entry needs 'delete_keys': a key, a list of keys or all",
                );
                None
            }
        };
        let delete_keys = keys.and_then(|k| match &k.value {
            Value::Str(s) | Value::Sym(s) if Selector::is_all_keyword(s) => Some(None),
            Value::Str(s) | Value::Sym(s) => Some(Some(vec![s.clone()])),
            Value::Seq(list) => {
                let names: Option<Vec<String>> = list
                    .iter()
                    .map(|x| x.as_str_or_sym().map(str::to_string))
                    .collect();
                if names.is_none() {
                    c.error(
                        k,
                        &join(&p, "delete_keys"),
                        "'delete_keys' entries must be strings or symbols",
                    );
                }
                names.map(Some)
            }
            _ => {
                c.error(
                    k,
                    &join(&p, "delete_keys"),
                    "'delete_keys' must be a key, a list of keys or all",
                );
                None
            }
        });
        if let (Some(plugins), Some(delete_keys)) = (plugins, delete_keys) {
            out.push(DeleteEntry {
                plugins,
                delete_keys,
            });
        }
    }
    DeletePluginDefaults::Entries(out)
}
