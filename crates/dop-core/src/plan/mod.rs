//! The plan model and the reader that builds it from a YAML tree, reporting every problem.

mod check;
pub(crate) mod credential;
mod hooks;
pub(crate) mod infrastructure;
mod jump;
pub(crate) mod node;
pub(crate) mod run_options;
pub(crate) mod step;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use credential::{
    check_login_name, ContentError, ContentSource, Credential, CredentialKind, SecretLimits,
};
pub use hooks::Hooks;
pub use infrastructure::{AffinityGroup, Gateway, Infrastructure, Network, ProviderKind};
pub use jump::{host_port, JumpHost};
pub use node::{
    check_fqdn, DataDisk, Dns, InfrastructureProperties, Interface, IpSetting, Node, Sizing,
    FLAVORS,
};
pub use run_options::Concurrency;
pub use step::{
    Command, DeleteEntry, DeletePluginDefaults, PluginDefaults, Step, StepSet,
    DEFAULT_PLUGIN_TIMEOUT,
};

use self::check::{field, mapping, warn_unknown_keys};
use crate::configuration::{LookupSettings, Resolver};
use crate::diagnostic::{join, Collector};
use crate::yaml::{Value, Yaml};

/// Most nodes one generated entry (`web{i}` with a `range`) may produce.
pub const MAX_GENERATED_NODES: u64 = 100_000;

/// A validated plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The plan's name: letters, digits, `_` and `-`.
    pub name: String,
    /// Plan-wide run options.
    #[serde(default)]
    pub run_options: Concurrency,
    /// Infrastructures, in plan order.
    pub infrastructures: Vec<Infrastructure>,
    /// Credentials, in plan order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
    /// Hooks.
    #[serde(default)]
    pub hooks: Hooks,
    /// Nodes in plan order, generated nodes in place of their template.
    pub nodes: Vec<Node>,
    /// Step sets in plan order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_sets: Vec<StepSet>,
    /// The free-form configuration (served to Puppet as Hiera data). Keys written as Ruby
    /// symbols keep their colon (`:role`), so lookups do not find them, as before.
    #[serde(default)]
    pub configuration: serde_json::Value,
}

impl Plan {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The infrastructure called `name`.
    pub fn infrastructure(&self, name: &str) -> Option<&Infrastructure> {
        self.infrastructures.iter().find(|i| i.name == name)
    }

    /// The step set called `name`.
    pub fn step_set(&self, name: &str) -> Option<&StepSet> {
        self.step_sets.iter().find(|s| s.name == name)
    }

    /// The credential called `name`.
    pub fn credential(&self, name: &str) -> Option<&Credential> {
        self.credentials.iter().find(|c| c.name == name)
    }

    /// Counts for a one-line summary.
    pub fn summary(&self) -> PlanSummary {
        PlanSummary {
            name: self.name.clone(),
            infrastructures: self.infrastructures.len(),
            nodes: self.nodes.len(),
            step_sets: self.step_sets.len(),
            steps: self.step_sets.iter().map(|s| s.steps.len()).sum(),
        }
    }
}

/// Counts of a plan's parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    /// The plan's name.
    pub name: String,
    /// Infrastructures.
    pub infrastructures: usize,
    /// Nodes, after generation.
    pub nodes: usize,
    /// Step sets.
    pub step_sets: usize,
    /// Steps in all step sets.
    pub steps: usize,
}

impl std::fmt::Display for PlanSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        write!(
            f,
            "plan '{}' is valid: {}, {}, {}",
            self.name,
            plural(self.nodes, "node"),
            plural(self.step_sets, "step set"),
            plural(self.steps, "step"),
        )
    }
}

/// Checks a plan name: 1 to 255 bytes of ASCII letters, digits, `_` and `-`, over the whole
/// string (the original's line anchors let `"ok\n../x"` through).
pub fn check_plan_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!(
            "the plan name must be 1 to 255 characters long, not {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "the plan name '{}' may only contain letters, digits, '_' and '-'",
            name.escape_debug()
        ));
    }
    Ok(())
}

const TOP_KEYS: [&str; 10] = [
    "name",
    "max_in_flight",
    "max_per_role",
    "canary_host",
    "infrastructures",
    "nodes",
    "steps",
    "configuration",
    "credentials",
    "hooks",
];

/// Reads a plan from its YAML tree. `fallback_name` (the file name stem) is used when the plan
/// has no `name`. Returns the plan only when there were no errors.
pub(crate) fn parse_plan(
    c: &mut Collector<'_>,
    root: &Yaml,
    fallback_name: Option<&str>,
    settings: &LookupSettings,
) -> Option<Plan> {
    mapping(c, root, "", "a plan")?;
    warn_unknown_keys(c, root, "", &TOP_KEYS);

    let name = parse_name(c, root, fallback_name);
    let run_options = Concurrency::parse(c, root, "");

    let credential_entries = named_entries(c, root, "credentials", false);
    let credential_names: Vec<&str> = credential_entries.iter().map(|(n, _)| n.as_str()).collect();
    let credentials: Vec<Credential> = credential_entries
        .iter()
        .filter_map(|(n, v)| credential::parse(c, n, v, &join("credentials", n)))
        .collect();

    let infra_entries = named_entries(c, root, "infrastructures", true);
    let infrastructures: Vec<Infrastructure> = infra_entries
        .iter()
        .filter_map(|(n, v)| {
            infrastructure::parse(c, n, v, &join("infrastructures", n), &credential_names)
        })
        .collect();
    for infra in &infrastructures {
        let api_credential = infra
            .credentials
            .as_deref()
            .and_then(|n| credentials.iter().find(|c| c.name == n));
        if let Some(cred) =
            api_credential.filter(|c| !matches!(c.kind, CredentialKind::UsernamePassword { .. }))
        {
            if let Some((_, v)) = infra_entries.iter().find(|(n, _)| *n == infra.name) {
                c.warn(
                    v.get("credentials").unwrap_or(v),
                    &join(&join("infrastructures", &infra.name), "credentials"),
                    format!("provider APIs log in with a username_password credential; '{}' is of another type", cred.name),
                );
            }
        }
    }

    let ctx = node::NodeContext {
        infrastructure_names: infra_entries.iter().map(|(n, _)| n.as_str()).collect(),
        infrastructures: &infrastructures,
        credential_names,
        credentials: &credentials,
    };
    let nodes = parse_nodes(c, root, &ctx);

    let step_sets = root
        .get("steps")
        .map(|s| step::parse_step_sets(c, s))
        .unwrap_or_default();
    let configuration = match root.get("configuration") {
        None
        | Some(Yaml {
            value: Value::Null, ..
        }) => serde_json::Value::Object(Default::default()),
        Some(v) if v.as_map().is_some() => configuration_json(c, v, "configuration"),
        Some(v) => {
            c.error(
                v,
                "configuration",
                format!("'configuration' must be a mapping, not {}", v.describe()),
            );
            serde_json::Value::Null
        }
    };
    let hooks = match root.get("hooks") {
        Some(h) => hooks::parse(c, h, "hooks"),
        None => Hooks::default(),
    };

    if c.error_count() > 0 {
        return None;
    }
    let plan = Plan {
        name: name?,
        run_options,
        infrastructures,
        credentials,
        hooks,
        nodes,
        step_sets,
        configuration,
    };
    warn_steps_without_nodes(c, root, &plan, settings);
    // The site's Hiera may have refused the roles.
    (c.error_count() == 0).then_some(plan)
}

fn parse_name(c: &mut Collector<'_>, root: &Yaml, fallback: Option<&str>) -> Option<String> {
    match field(root, "name") {
        Some(v) => {
            let Some(name) = v.as_str() else {
                c.error(
                    v,
                    "name",
                    format!("the plan name must be a string, not {}", v.describe()),
                );
                return None;
            };
            check_plan_name(name)
                .map_err(|e| c.error(v, "name", e))
                .ok()?;
            Some(name.to_string())
        }
        None => match fallback.filter(|f| check_plan_name(f).is_ok()) {
            Some(f) => {
                c.warn(
                    root,
                    "name",
                    format!("the plan has no 'name'; using '{f}' from the file name"),
                );
                Some(f.to_string())
            }
            None => {
                c.error(
                    root,
                    "name",
                    "the plan needs a 'name' (letters, digits, '_' and '-')",
                );
                None
            }
        },
    }
}

/// The entries of a top-level mapping keyed by name (`nodes`, `infrastructures`,
/// `credentials`), values checked to be mappings.
fn named_entries<'y>(
    c: &mut Collector<'_>,
    root: &'y Yaml,
    key: &str,
    required: bool,
) -> Vec<(String, &'y Yaml)> {
    let Some(v) = field(root, key) else {
        if required {
            c.error(root, key, format!("the plan needs '{key}'"));
        } else if let Some(null) = root.get(key) {
            c.warn(null, key, format!("'{key}' is empty"));
        }
        return Vec::new();
    };
    let Some(entries) = mapping(c, v, key, &format!("'{key}'")) else {
        return Vec::new();
    };
    if entries.is_empty() && required {
        c.error(v, key, format!("'{key}' must not be empty"));
    }
    let mut out = Vec::with_capacity(entries.len());
    // The names taken so far, so that a large `nodes` mapping is checked in linear time.
    let mut taken: std::collections::HashSet<String> =
        std::collections::HashSet::with_capacity(entries.len());
    for (k, value) in entries {
        let name = match &k.value {
            Value::Str(_) | Value::Sym(_) | Value::Int(_) => k.key_text(),
            _ => {
                c.error(
                    k,
                    key,
                    format!("names in '{key}' must be strings, not {}", k.describe()),
                );
                continue;
            }
        };
        if value.as_map().is_none() {
            c.error(
                value,
                &join(key, &name),
                format!("'{name}' must be a mapping, not {}", value.describe()),
            );
            continue;
        }
        // `web01`, `:web01` and (for numbers) `1` and `'1'` are one name: say so instead of
        // letting one definition silently replace the other.
        if !taken.insert(name.clone()) {
            c.error(
                k,
                &join(key, &name),
                format!("'{name}' is defined twice in '{key}'"),
            );
            continue;
        }
        out.push((name, value));
    }
    out
}

fn parse_nodes(c: &mut Collector<'_>, root: &Yaml, ctx: &node::NodeContext<'_>) -> Vec<Node> {
    let mut nodes = Vec::new();
    // Where each node name was first defined, to report duplicates with both places.
    let mut defined_at: HashMap<String, String> = HashMap::new();
    for (key, body) in named_entries(c, root, "nodes", true) {
        let path = join("nodes", &key);
        if let Err(e) = check_node_name(&key) {
            c.error(body, &path, e);
            continue;
        }
        let generated = key.contains("{i}");
        let range = if generated {
            parse_range(c, body, &path)
        } else {
            None
        };
        let Some(template) = node::parse(c, &key, body, &path, ctx) else {
            continue;
        };
        let explicit_fqdn = field(body, "fqdn").is_some();
        let names: Vec<String> = match (generated, range) {
            (false, _) => vec![key.clone()],
            (true, None) => continue,
            (true, Some((first, last, digits))) => (first..=last)
                .map(|i| key.replace("{i}", &format!("{i:0digits$}")))
                .collect(),
        };
        if !explicit_fqdn {
            // Generated names differ only in digits: the first bad one speaks for all.
            if let Some(e) = names.iter().find_map(|n| check_fqdn(n).err()) {
                c.error(body, &path, e);
                continue;
            }
        } else if names.len() > 1 {
            c.warn(
                body.get("fqdn").unwrap_or(body),
                &join(&path, "fqdn"),
                format!(
                    "all {} generated nodes share the fqdn '{}'",
                    names.len(),
                    template.fqdn
                ),
            );
        }
        // The last name takes the template itself: one clone less per node (every node of a
        // plan without generated entries).
        let count = names.len();
        let mut template = Some(template);
        for (k, name) in names.into_iter().enumerate() {
            if let Some(first) = defined_at.get(&name) {
                c.error(
                    body,
                    &path,
                    format!("the node name '{name}' is already defined by {first}"),
                );
                continue;
            }
            let origin = if generated {
                format!("{path} (generated)")
            } else {
                path.clone()
            };
            defined_at.insert(name.clone(), origin);
            let Some(mut n) = (if k + 1 == count {
                template.take()
            } else {
                template.clone()
            }) else {
                continue;
            };
            if !explicit_fqdn {
                n.fqdn.clone_from(&name);
            }
            n.name = name;
            nodes.push(n);
        }
    }
    nodes
}

/// Node names name per-node log files and state entries: no `/`, NUL, `.` or `..`, at most
/// 255 bytes. (The original had no such rule; a name with an explicit `fqdn` could be any text.)
fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
    {
        return Err(format!(
            "the node name '{}' cannot be used: node names name log files, so they must be 1 to \
             255 bytes without '/' and not '.' or '..'",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// Reads `range` (a string with exactly two numbers, the first smaller) and `digits`.
fn parse_range(c: &mut Collector<'_>, body: &Yaml, path: &str) -> Option<(u64, u64, usize)> {
    let range_path = join(path, "range");
    let Some(r) = field(body, "range") else {
        c.error(
            body,
            &range_path,
            "a node name with {i} needs a 'range', e.g. range: 1..10",
        );
        return None;
    };
    let Some(text) = r.as_str() else {
        c.error(
            r,
            &range_path,
            format!(
                "'range' must be a string such as '1..10', not {}",
                r.describe()
            ),
        );
        return None;
    };
    let numbers: Vec<&str> = text
        .split(|ch: char| !ch.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    let bounds = match numbers.as_slice() {
        [a, b] => a.parse::<u64>().ok().zip(b.parse::<u64>().ok()),
        _ => None,
    };
    let Some((first, last)) = bounds else {
        c.error(
            r,
            &range_path,
            format!("'range' must contain exactly two numbers, e.g. '1..10', not '{text}'"),
        );
        return None;
    };
    if first >= last {
        c.error(
            r,
            &range_path,
            format!("the first number of 'range' must be smaller than the second, not '{text}'"),
        );
        return None;
    }
    if last - first >= MAX_GENERATED_NODES {
        c.error(
            r,
            &range_path,
            format!("'range' '{text}' would generate more than {MAX_GENERATED_NODES} nodes"),
        );
        return None;
    }
    let digits = match field(body, "digits") {
        None => 2,
        Some(d) => match d.value {
            Value::Int(n) if (1..=20).contains(&n) => usize::try_from(n).unwrap_or(2),
            Value::Int(n) => {
                c.error(
                    d,
                    &join(path, "digits"),
                    format!("'digits' must be between 1 and 20, not {n}"),
                );
                return None;
            }
            _ => {
                c.error(
                    d,
                    &join(path, "digits"),
                    format!("'digits' must be a number, not {}", d.describe()),
                );
                return None;
            }
        },
    };
    Some((first, last, digits))
}

/// Converts `configuration` to JSON, keeping symbol keys recognisable (`:role`) and warning
/// about them: the original never found them in lookups.
fn configuration_json(c: &mut Collector<'_>, v: &Yaml, path: &str) -> serde_json::Value {
    match &v.value {
        Value::Map(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (k, val) in entries {
                let key = match &k.value {
                    Value::Sym(s) => {
                        c.warn(k, &join(path, &format!(":{s}")), format!("the key ':{s}' is a Ruby symbol and is never found by lookups; write '{s}'"));
                        format!(":{s}")
                    }
                    _ => k.key_text(),
                };
                let child = join(path, &key);
                map.insert(key, configuration_json(c, val, &child));
            }
            serde_json::Value::Object(map)
        }
        Value::Seq(items) => serde_json::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| configuration_json(c, item, &crate::diagnostic::index(path, i)))
                .collect(),
        ),
        _ => v.to_json(),
    }
}

/// Warns about step patterns that select no node: usually a typo, and a run would skip it.
fn warn_steps_without_nodes(
    c: &mut Collector<'_>,
    root: &Yaml,
    plan: &Plan,
    settings: &LookupSettings,
) {
    let resolver = match Resolver::new(plan, settings) {
        Ok(r) => r,
        Err(e) => {
            let at = root.get("nodes").unwrap_or(root);
            c.error(
                at,
                "nodes",
                format!("the nodes' roles cannot be resolved through the site's Hiera: {e}"),
            );
            return;
        }
    };
    // Steps repeat their patterns and roles: each is matched against the nodes once.
    let mut matches = crate::filter::Matches::new(&resolver);
    for set in &plan.step_sets {
        let steps = root.get("steps");
        let set_yaml = match (set.implicit, set.mapping) {
            (true, _) => steps,
            (false, false) => steps.and_then(|s| s.get(&set.name)),
            (false, true) => steps
                .and_then(|s| s.get(&set.name))
                .and_then(|s| s.get("steps")),
        };
        let set_path = set.path();
        for (i, step) in set.steps.iter().enumerate() {
            let at = match set_yaml.map(|s| &s.value) {
                Some(Value::Seq(items)) => items.get(i),
                _ => None,
            };
            let Some(at) = at else { continue };
            let path = crate::diagnostic::index(&set_path, i);
            let selection = step.filter.select_in(&mut matches);
            for pattern in &selection.unmatched {
                c.warn(
                    at,
                    &path,
                    format!("step '{}': {pattern} does not match any node", step.name),
                );
            }
            if selection.nodes.is_empty() && selection.unmatched.is_empty() {
                let why = if step.filter.has_no_include() {
                    "give nodes, roles or nodes_by_config"
                } else {
                    "its excludes remove every node it includes"
                };
                c.warn(
                    at,
                    &path,
                    format!("step '{}' selects no node ({why})", step.name),
                );
            }
        }
    }
}
