//! Node configuration lookup and roles, from the plan's `configuration` mapping.
//!
//! The mapping's top level mirrors a Hiera hierarchy: for the level `nodes/%{::clientcert}` the
//! variable is looked up in `configuration.nodes.<fqdn>`. This is the in-plan lookup the
//! original used to validate plans before they were stored; serving the data to Puppet is the
//! Hiera integration's job.
//!
//! With `hiera_yaml` set, a node's role is first looked up through the site's own Hiera 5
//! configuration (`crate::hiera`), as the original's real Hiera lookup did; the plan's
//! `configuration` and then `role_default` follow when it finds none.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::hiera::{HieraError, SiteHiera};

use crate::filter::NodeFacts;
use crate::plan::{Node, Plan};

/// How roles and configuration are looked up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupSettings {
    /// The configuration variable that holds a node's role.
    pub role_variable: String,
    /// The role of nodes whose lookup finds none.
    pub role_default: Option<String>,
    /// Hierarchy levels, most specific first; `%{::fqdn}`, `%{::clientcert}`,
    /// `%{::hostname}`, `%{::domain}` and `%{::role}` are interpolated (`%{name}` works too).
    pub hierarchy: Vec<String>,
    /// `use_hiera`: look roles up at all. `false` (the original's `--no-use_hiera`): every
    /// node has `role_default` (or `-`).
    #[serde(default = "yes")]
    pub use_hiera: bool,
    /// `hiera_yaml`: the site's Hiera 5 configuration, asked for roles before the plan's
    /// `configuration`. `None`: the plan's `configuration` only.
    #[serde(default)]
    pub hiera_yaml: Option<PathBuf>,
    /// `load_facts`: the nodes' facts from `facts_dir` feed the site Hiera's interpolations.
    #[serde(default)]
    pub load_facts: bool,
    /// `facts_dir`: the Puppet facts cache (`<fqdn>.yaml`); `None`: dop.conf's default.
    #[serde(default)]
    pub facts_dir: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl Default for LookupSettings {
    fn default() -> LookupSettings {
        LookupSettings {
            role_variable: "role".to_string(),
            role_default: None,
            hierarchy: vec![
                "nodes/%{::clientcert}".to_string(),
                "roles/%{::role}".to_string(),
                "defaults".to_string(),
            ],
            use_hiera: true,
            hiera_yaml: None,
            load_facts: false,
            facts_dir: None,
        }
    }
}

/// The role of nodes for which none is found and no default is set.
pub const NO_ROLE: &str = "-";

/// Interpolates a hierarchy level. `None` when the level must be skipped: it interpolates to
/// nothing, or to a path with an empty segment (Hiera's rule).
fn interpolate(level: &str, node: &Node, role: Option<&str>) -> Option<String> {
    let mut out = String::with_capacity(level.len());
    let mut rest = level;
    while let Some(start) = rest.find("%{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}')?;
        let name = after[..end].trim_start_matches("::");
        let value = match name {
            "fqdn" | "clientcert" => node.fqdn.as_str(),
            "hostname" => node.hostname(),
            "domain" => node.domainname(),
            "role" => role.unwrap_or(""),
            _ => "",
        };
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    let skip = out.is_empty() || out.starts_with('/') || out.ends_with('/') || out.contains("//");
    (!skip).then_some(out)
}

/// Looks `variable` up in `configuration` through the hierarchy. The first value that is
/// neither null nor `false` wins; a `false` that nothing beats is returned.
fn lookup<'c>(
    configuration: &'c serde_json::Value,
    settings: &LookupSettings,
    node: &Node,
    role: Option<&str>,
    variable: &str,
) -> Option<&'c serde_json::Value> {
    let mut found_false = None;
    for level in &settings.hierarchy {
        let Some(source) = interpolate(level, node, role) else {
            continue;
        };
        let scope = source
            .split('/')
            .try_fold(configuration, |value, segment| value.get(segment));
        match scope
            .and_then(|s| s.as_object())
            .and_then(|s| s.get(variable))
        {
            None | Some(serde_json::Value::Null) => {}
            Some(f @ serde_json::Value::Bool(false)) => found_false = found_false.or(Some(f)),
            Some(v) => return Some(v),
        }
    }
    found_false
}

/// A plan's nodes with their roles resolved once, for filters and display.
pub struct Resolver<'p> {
    plan: &'p Plan,
    settings: &'p LookupSettings,
    roles: Vec<String>,
}

/// A found role value as text; `None` for what the original treated as no role (false,
/// null).
fn role_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(false) | serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

impl<'p> Resolver<'p> {
    /// Resolves every node's role: the site's Hiera (`hiera_yaml`), then the plan's
    /// `configuration`, then `role_default`, then [`NO_ROLE`]. Fails when the site's Hiera
    /// cannot be evaluated (a file that does not parse, a backend or function dop cannot
    /// evaluate): a role guessed past it could differ from the one Puppet gives the node.
    pub fn new(plan: &'p Plan, settings: &'p LookupSettings) -> Result<Resolver<'p>, HieraError> {
        let mut site = match (&settings.hiera_yaml, settings.use_hiera) {
            (Some(file), true) => Some(SiteHiera::load(
                file,
                settings
                    .load_facts
                    .then_some(settings.facts_dir.as_deref())
                    .flatten(),
            )?),
            _ => None,
        };
        let mut roles = Vec::with_capacity(plan.nodes.len());
        for node in &plan.nodes {
            let external = match &mut site {
                Some(site) => site
                    .lookup(node, &settings.role_variable)?
                    .as_ref()
                    .and_then(role_text),
                None => None,
            };
            let role = external
                .or_else(|| {
                    settings
                        .use_hiera
                        .then(|| {
                            lookup(
                                &plan.configuration,
                                settings,
                                node,
                                None,
                                &settings.role_variable,
                            )
                        })
                        .flatten()
                        .and_then(role_text)
                })
                .or_else(|| settings.role_default.clone())
                .unwrap_or_else(|| NO_ROLE.to_string());
            roles.push(role);
        }
        Ok(Resolver {
            plan,
            settings,
            roles,
        })
    }

    /// The plan.
    pub fn plan(&self) -> &'p Plan {
        self.plan
    }

    /// The value of a configuration variable for a node, looked up with its role known.
    pub fn config_of(&self, i: usize, variable: &str) -> Option<&'p serde_json::Value> {
        let node = self.plan.nodes.get(i)?;
        lookup(
            &self.plan.configuration,
            self.settings,
            node,
            Some(&self.roles[i]),
            variable,
        )
    }
}

/// One hierarchy level of a node, as Hiera would read it from the plan's `configuration`.
#[derive(Clone, Debug, PartialEq)]
pub struct HieraLevel<'p> {
    /// The hierarchy level as configured (`roles/%{::role}`).
    pub level: &'p str,
    /// The level interpolated for the node (`roles/web`): the path walked in `configuration`.
    pub source: String,
    /// What is there (any YAML value; Hiera needs a mapping).
    pub data: &'p serde_json::Value,
}

impl<'p> Resolver<'p> {
    /// The hierarchy levels that exist in the plan's `configuration` for node `i`, most
    /// specific first, with the node's role known (`%{::role}` interpolated).
    pub fn levels(&self, i: usize) -> Vec<HieraLevel<'p>> {
        let Some(node) = self.plan.nodes.get(i) else {
            return Vec::new();
        };
        self.settings
            .hierarchy
            .iter()
            .filter_map(|level| {
                let source = interpolate(level, node, Some(&self.roles[i]))?;
                let data = source
                    .split('/')
                    .try_fold(&self.plan.configuration, |value, segment| {
                        value.get(segment)
                    })?;
                Some(HieraLevel {
                    level: level.as_str(),
                    source,
                    data,
                })
            })
            .collect()
    }
}

impl NodeFacts for Resolver<'_> {
    fn len(&self) -> usize {
        self.plan.nodes.len()
    }

    fn name(&self, i: usize) -> &str {
        &self.plan.nodes[i].name
    }

    fn role(&self, i: usize) -> &str {
        &self.roles[i]
    }

    fn config(&self, i: usize, variable: &str) -> Option<serde_json::Value> {
        self.config_of(i, variable).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_str;

    const PLAN: &str = "
name: roles
infrastructures: {lab: {type: baremetal}}
nodes:
  web01.example.com: {infrastructure: lab}
  db01.example.com: {infrastructure: lab}
  odd01.example.com: {infrastructure: lab}
configuration:
  nodes:
    db01.example.com: {role: db, backup: false}
    odd01.example.com: {role: false}
  roles:
    db: {port: 5432, backup: true}
    base: {port: 80}
  defaults: {role: base, backup: false, port: 1}
";

    fn plan() -> Plan {
        load_str(PLAN, None, &LookupSettings::default())
            .plan
            .expect("valid")
    }

    #[test]
    fn a_nodes_levels_are_the_hierarchy_interpolated_with_its_role() {
        let plan = plan();
        let settings = LookupSettings::default();
        let resolver = Resolver::new(&plan, &settings).unwrap();
        let sources = |i: usize| -> Vec<String> {
            resolver.levels(i).into_iter().map(|l| l.source).collect()
        };
        assert_eq!(
            sources(0),
            ["roles/base", "defaults"],
            "web01: no node entry"
        );
        assert_eq!(
            sources(1),
            ["nodes/db01.example.com", "roles/db", "defaults"]
        );
        // odd01's `role: false` is beaten by the defaults' role (as Hiera's lookup does).
        assert_eq!(
            sources(2),
            ["nodes/odd01.example.com", "roles/base", "defaults"]
        );
        assert_eq!(resolver.levels(1)[1].data["port"], 5432);
    }

    #[test]
    fn roles_come_from_the_most_specific_level() {
        let plan = plan();
        let settings = LookupSettings::default();
        let r = Resolver::new(&plan, &settings).unwrap();
        assert_eq!((r.role(0), r.role(1)), ("base", "db"));
        // `false` at the node level does not stop the search; the default wins.
        assert_eq!(r.role(2), "base");
    }

    #[test]
    fn other_variables_see_the_role_level() {
        let plan = plan();
        let settings = LookupSettings::default();
        let r = Resolver::new(&plan, &settings).unwrap();
        assert_eq!(r.config_of(1, "port"), Some(&serde_json::json!(5432)));
        assert_eq!(r.config_of(0, "port"), Some(&serde_json::json!(80)));
        // A node-level `false` is beaten by a truthy role-level value...
        assert_eq!(r.config_of(1, "backup"), Some(&serde_json::json!(true)));
        // ...and is returned when nothing beats it.
        assert_eq!(r.config_of(0, "backup"), Some(&serde_json::json!(false)));
        assert_eq!(r.config_of(0, "missing"), None);
    }

    #[test]
    fn role_default_and_no_role() {
        let plan = plan();
        let bare = LookupSettings {
            role_variable: "nothing_here".into(),
            ..LookupSettings::default()
        };
        assert_eq!(Resolver::new(&plan, &bare).unwrap().role(0), NO_ROLE);
        let with_default = LookupSettings {
            role_default: Some("fallback".into()),
            ..bare
        };
        assert_eq!(
            Resolver::new(&plan, &with_default).unwrap().role(0),
            "fallback"
        );
    }

    #[test]
    fn levels_with_empty_segments_are_skipped() {
        let plan = plan();
        let node = &plan.nodes[0];
        assert_eq!(interpolate("roles/%{::role}", node, None), None);
        assert_eq!(
            interpolate("roles/%{::role}", node, Some("web")).as_deref(),
            Some("roles/web")
        );
        assert_eq!(
            interpolate("nodes/%{clientcert}", node, None).as_deref(),
            Some("nodes/web01.example.com")
        );
        assert_eq!(
            interpolate("%{::domain}/%{::hostname}", node, None).as_deref(),
            Some("example.com/web01")
        );
        assert_eq!(interpolate("x/%{::unknown}", node, None), None);
    }
}
