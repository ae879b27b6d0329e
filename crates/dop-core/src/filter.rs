//! Node filters: which nodes a step (or a command line) selects by name, role and
//! configuration value, with excludes, in the original's order and "no include means all"
//! rule for command lines.

use serde::{Deserialize, Serialize};

use crate::diagnostic::{index, join, Collector};
use crate::pattern::{Pattern, PatternError, Selector};
use crate::yaml::{Value, Yaml};

/// A selector applied to the value of a configuration variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigSelector {
    /// The variable looked up for each node.
    pub variable: String,
    /// Matches any element of the (flattened) value.
    pub selector: Selector,
}

/// The six filter keys of a step, or the six node-selection flags of a command.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeFilter {
    /// Node names to include.
    #[serde(skip_serializing_if = "Selector::is_none")]
    pub nodes: Selector,
    /// Roles to include.
    #[serde(skip_serializing_if = "Selector::is_none")]
    pub roles: Selector,
    /// Configuration values to include.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes_by_config: Vec<ConfigSelector>,
    /// Node names to exclude.
    #[serde(skip_serializing_if = "Selector::is_none")]
    pub exclude_nodes: Selector,
    /// Roles to exclude.
    #[serde(skip_serializing_if = "Selector::is_none")]
    pub exclude_roles: Selector,
    /// Configuration values to exclude.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_nodes_by_config: Vec<ConfigSelector>,
}

/// What a node filter needs to know about each node.
pub trait NodeFacts {
    /// How many nodes there are.
    fn len(&self) -> usize;
    /// True when there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The name of node `i`.
    fn name(&self, i: usize) -> &str;
    /// The role of node `i`.
    fn role(&self, i: usize) -> &str;
    /// The value of a configuration variable for node `i`.
    fn config(&self, i: usize, variable: &str) -> Option<serde_json::Value>;
}

/// The result of applying a filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Indices of the selected nodes: include order, first occurrence kept, excludes removed.
    pub nodes: Vec<usize>,
    /// Patterns that matched no node, rendered like `nodes => 'web99'`.
    pub unmatched: Vec<String>,
}

impl NodeFilter {
    /// True when no include key selects anything.
    pub fn has_no_include(&self) -> bool {
        self.nodes.is_none() && self.roles.is_none() && self.nodes_by_config.is_empty()
    }

    /// Applies the filter to the nodes.
    pub fn select(&self, facts: &dyn NodeFacts) -> Selection {
        self.select_in(&mut Matches::new(facts))
    }

    /// Applies the filter to the nodes `matches` was made for, reusing what earlier filters
    /// found there: each distinct pattern is matched against the nodes once (the steps of a
    /// plan repeat their patterns and roles). The same selection as [`NodeFilter::select`].
    pub fn select_in(&self, matches: &mut Matches<'_>) -> Selection {
        let mut unmatched = Vec::new();
        let include = matches.collect(
            &self.nodes,
            &self.roles,
            &self.nodes_by_config,
            &mut unmatched,
            "",
        );
        let exclude = matches.collect(
            &self.exclude_nodes,
            &self.exclude_roles,
            &self.exclude_nodes_by_config,
            &mut unmatched,
            "exclude_",
        );
        let len = matches.facts.len();
        let mut excluded = vec![false; len];
        for i in exclude {
            excluded[i] = true;
        }
        let mut seen = vec![false; len];
        let nodes = include
            .into_iter()
            .filter(|&i| !excluded[i] && !std::mem::replace(&mut seen[i], true))
            .collect();
        Selection { nodes, unmatched }
    }
}

/// What a pattern is matched against.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Subject {
    Name,
    Role,
    Config(String),
}

/// The nodes each pattern matches, remembered for the filters applied to the same nodes after
/// it (see [`NodeFilter::select_in`]).
pub struct Matches<'f> {
    facts: &'f dyn NodeFacts,
    /// Per subject and pattern (regex or not, text): the matching nodes in node order.
    memo: std::collections::HashMap<(Subject, bool, String), Vec<usize>>,
}

impl<'f> Matches<'f> {
    /// Nothing matched yet.
    pub fn new(facts: &'f dyn NodeFacts) -> Matches<'f> {
        Matches {
            facts,
            memo: std::collections::HashMap::new(),
        }
    }

    /// The nodes `pattern` matches by `subject`, in node order.
    fn matching(&mut self, subject: &Subject, pattern: &Pattern) -> &[usize] {
        let text = match pattern {
            Pattern::Exact(s) => s.clone(),
            Pattern::Regex(re) => re.as_str().to_string(),
        };
        let key = (subject.clone(), matches!(pattern, Pattern::Regex(_)), text);
        let facts = self.facts;
        self.memo.entry(key).or_insert_with(|| {
            (0..facts.len())
                .filter(|&i| match subject {
                    Subject::Name => pattern.matches(facts.name(i)),
                    Subject::Role => pattern.matches(facts.role(i)),
                    Subject::Config(variable) => facts
                        .config(i, variable)
                        .is_some_and(|v| flatten(&v).iter().any(|s| pattern.matches(s))),
                })
                .collect()
        })
    }

    /// The nodes matched by one include (or exclude) group, in the order of keys and patterns.
    fn collect(
        &mut self,
        nodes: &Selector,
        roles: &Selector,
        by_config: &[ConfigSelector],
        unmatched: &mut Vec<String>,
        prefix: &str,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        let mut run =
            |this: &mut Self, selector: &Selector, key: String, subject: Subject| match selector {
                Selector::All => out.extend(0..this.facts.len()),
                Selector::List(patterns) => {
                    for pattern in patterns {
                        let found = this.matching(&subject, pattern);
                        if found.is_empty() {
                            unmatched.push(format!("{key} => '{pattern}'"));
                        }
                        out.extend_from_slice(found);
                    }
                }
            };
        run(self, nodes, format!("{prefix}nodes"), Subject::Name);
        run(self, roles, format!("{prefix}roles"), Subject::Role);
        for cs in by_config {
            run(
                self,
                &cs.selector,
                format!("{prefix}nodes_by_config '{}'", cs.variable),
                Subject::Config(cs.variable.clone()),
            );
        }
        out
    }
}

/// The scalar elements of a value, as text, with nested lists flattened.
fn flatten(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::Array(items) => items.iter().flat_map(flatten).collect(),
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Null | serde_json::Value::Object(_) => Vec::new(),
        other => vec![other.to_string()],
    }
}

/// Reads a pattern list: a name, `/regex/`, `all`, or a list of names and regexes.
pub(crate) fn parse_selector(
    c: &mut Collector<'_>,
    v: &Yaml,
    path: &str,
    key: &str,
) -> Option<Selector> {
    let pattern = |c: &mut Collector<'_>, item: &Yaml, p: &str| -> Option<Pattern> {
        // Numbers are names too (`123:` is a valid node name).
        let number = matches!(item.value, Value::Int(_)).then(|| item.key_text());
        let Some(text) = item.as_str_or_sym().or(number.as_deref()) else {
            c.error(
                item,
                p,
                format!("the pattern {} in '{key}' is not a string", item.describe()),
            );
            return None;
        };
        Pattern::parse(text)
            .map_err(|e| c.error(item, p, e.to_string()))
            .ok()
    };
    match &v.value {
        Value::Str(s) | Value::Sym(s) if Selector::is_all_keyword(s) => Some(Selector::All),
        Value::Str(_) | Value::Sym(_) | Value::Int(_) => {
            pattern(c, v, path).map(|p| Selector::List(vec![p]))
        }
        Value::Seq(items) => {
            let parsed: Vec<Option<Pattern>> = items
                .iter()
                .enumerate()
                .map(|(i, item)| pattern(c, item, &index(path, i)))
                .collect();
            parsed
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .map(Selector::List)
        }
        _ => {
            c.error(
                v,
                path,
                format!(
                    "'{key}' must be a name, a /regex/, a list of them or all, not {}",
                    v.describe()
                ),
            );
            None
        }
    }
}

fn parse_config_selectors(
    c: &mut Collector<'_>,
    v: &Yaml,
    path: &str,
    key: &str,
) -> Vec<ConfigSelector> {
    let Some(entries) = v.as_map() else {
        c.error(
            v,
            path,
            format!("'{key}' must be a mapping of configuration variable to patterns"),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (variable, patterns) in entries {
        let Some(name) = variable.as_str() else {
            c.error(
                variable,
                path,
                format!("the variable {} in '{key}' must be a string (symbols are never found in the configuration)", variable.describe()),
            );
            continue;
        };
        if let Some(selector) = parse_selector(c, patterns, &join(path, name), key) {
            out.push(ConfigSelector {
                variable: name.to_string(),
                selector,
            });
        }
    }
    out
}

/// Reads the six filter keys of a step.
pub(crate) fn parse_plan_filter(c: &mut Collector<'_>, v: &Yaml, path: &str) -> NodeFilter {
    let selector = |c: &mut Collector<'_>, key: &str| {
        v.get(key)
            .filter(|x| !x.is_null())
            .and_then(|x| parse_selector(c, x, &join(path, key), key))
            .unwrap_or_default()
    };
    let nodes = selector(c, "nodes");
    let roles = selector(c, "roles");
    let exclude_nodes = selector(c, "exclude_nodes");
    let exclude_roles = selector(c, "exclude_roles");
    let config = |c: &mut Collector<'_>, key: &str| {
        v.get(key)
            .filter(|x| !x.is_null())
            .map(|x| parse_config_selectors(c, x, &join(path, key), key))
            .unwrap_or_default()
    };
    let nodes_by_config = config(c, "nodes_by_config");
    let exclude_nodes_by_config = config(c, "exclude_nodes_by_config");
    NodeFilter {
        nodes,
        roles,
        nodes_by_config,
        exclude_nodes,
        exclude_roles,
        exclude_nodes_by_config,
    }
}

/// Why command-line node selection flags are not usable.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A bad pattern.
    #[error("{flag}: {source}")]
    Pattern {
        /// The flag.
        flag: &'static str,
        /// The pattern problem.
        source: PatternError,
    },
    /// The JSON of a `--*nodes-by-config` flag.
    #[error(
        "{flag}: {message}; expected a JSON object such as '{{\"role\": [\"web\", \"/db/\"]}}'"
    )]
    Json {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The raw values of the six command-line flags.
#[derive(Clone, Debug, Default)]
pub struct FilterFlags<'a> {
    /// `--nodes`.
    pub nodes: Option<&'a str>,
    /// `--roles`.
    pub roles: Option<&'a str>,
    /// `--exclude-nodes`.
    pub exclude_nodes: Option<&'a str>,
    /// `--exclude-roles`.
    pub exclude_roles: Option<&'a str>,
    /// `--nodes-by-config`.
    pub nodes_by_config: Option<&'a str>,
    /// `--exclude-nodes-by-config`.
    pub exclude_nodes_by_config: Option<&'a str>,
}

impl NodeFilter {
    /// The filter that selects every node (what no flag means on the command line; the
    /// `Default` filter selects none).
    pub fn all() -> NodeFilter {
        NodeFilter::from_flags(&FilterFlags::default()).expect("no flag, no pattern to fail")
    }

    /// Builds a filter from command-line flags. With no include flag, every node is included
    /// (so excludes alone mean "all except").
    pub fn from_flags(flags: &FilterFlags<'_>) -> Result<NodeFilter, FilterError> {
        let list = |flag: &'static str, v: Option<&str>| {
            v.map_or(Ok(Selector::default()), |s| {
                Selector::parse_cli_list(s).map_err(|source| FilterError::Pattern { flag, source })
            })
        };
        let json = |flag: &'static str, v: Option<&str>| {
            v.map_or(Ok(Vec::new()), |s| config_flag(flag, s))
        };
        let mut filter = NodeFilter {
            nodes: list("--nodes", flags.nodes)?,
            roles: list("--roles", flags.roles)?,
            nodes_by_config: json("--nodes-by-config", flags.nodes_by_config)?,
            exclude_nodes: list("--exclude-nodes", flags.exclude_nodes)?,
            exclude_roles: list("--exclude-roles", flags.exclude_roles)?,
            exclude_nodes_by_config: json(
                "--exclude-nodes-by-config",
                flags.exclude_nodes_by_config,
            )?,
        };
        if filter.has_no_include() {
            filter.nodes = Selector::All;
        }
        Ok(filter)
    }
}

fn config_flag(flag: &'static str, text: &str) -> Result<Vec<ConfigSelector>, FilterError> {
    let json_error = |message: String| FilterError::Json { flag, message };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| json_error(format!("not valid JSON ({e})")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(json_error("not a JSON object".to_string()));
    };
    let mut out = Vec::new();
    for (variable, patterns) in map {
        let texts: Vec<String> = match patterns {
            serde_json::Value::String(s) if Selector::is_all_keyword(&s) => {
                out.push(ConfigSelector {
                    variable,
                    selector: Selector::All,
                });
                continue;
            }
            serde_json::Value::String(s) => vec![s],
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    serde_json::Value::String(s) => Ok(s),
                    other => Err(json_error(format!(
                        "the pattern {other} for '{variable}' is not a string"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(json_error(format!(
                    "the value {other} for '{variable}' is not a string or a list of strings"
                )))
            }
        };
        let patterns = texts
            .iter()
            .map(|t| Pattern::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| FilterError::Pattern { flag, source })?;
        out.push(ConfigSelector {
            variable,
            selector: Selector::List(patterns),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Facts(Vec<(&'static str, &'static str, Option<serde_json::Value>)>);

    impl NodeFacts for Facts {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn name(&self, i: usize) -> &str {
            self.0[i].0
        }
        fn role(&self, i: usize) -> &str {
            self.0[i].1
        }
        fn config(&self, i: usize, variable: &str) -> Option<serde_json::Value> {
            (variable == "alias").then(|| self.0[i].2.clone()).flatten()
        }
    }

    fn facts() -> Facts {
        Facts(vec![
            ("a", "web", Some(serde_json::json!(["x", ["y"]]))),
            ("b", "db", None),
            ("c", "web", Some(serde_json::json!("z"))),
        ])
    }

    fn flags(nodes: Option<&'static str>, exclude_roles: Option<&'static str>) -> NodeFilter {
        NodeFilter::from_flags(&FilterFlags {
            nodes,
            exclude_roles,
            ..FilterFlags::default()
        })
        .unwrap()
    }

    #[test]
    fn include_order_is_kept_and_duplicates_dropped() {
        let s = flags(Some("c,a,/./"), None).select(&facts());
        assert_eq!(s.nodes, vec![2, 0, 1]);
    }

    #[test]
    fn no_include_means_all_and_excludes_apply() {
        let s = flags(None, Some("web")).select(&facts());
        assert_eq!(s.nodes, vec![1]);
    }

    #[test]
    fn unmatched_patterns_are_reported() {
        let s = flags(Some("a,zz"), None).select(&facts());
        assert_eq!(s.unmatched, vec!["nodes => 'zz'".to_string()]);
    }

    #[test]
    fn config_values_are_flattened() {
        let f = NodeFilter::from_flags(&FilterFlags {
            nodes_by_config: Some(r#"{"alias": ["y", "/^z$/"]}"#),
            ..FilterFlags::default()
        })
        .unwrap();
        assert_eq!(f.select(&facts()).nodes, vec![0, 2]);
    }

    /// The plain definition: every pattern against every node, in key and pattern order.
    fn reference(filter: &NodeFilter, facts: &dyn NodeFacts) -> Selection {
        let mut unmatched = Vec::new();
        let mut group = |nodes: &Selector, roles: &Selector, config: &[ConfigSelector], p: &str| {
            let mut out = Vec::new();
            let mut key =
                |selector: &Selector, key: String, hit: &dyn Fn(usize, &Pattern) -> bool| {
                    match selector {
                        Selector::All => out.extend(0..facts.len()),
                        Selector::List(patterns) => {
                            for pattern in patterns {
                                let found: Vec<usize> =
                                    (0..facts.len()).filter(|&i| hit(i, pattern)).collect();
                                if found.is_empty() {
                                    unmatched.push(format!("{key} => '{pattern}'"));
                                }
                                out.extend(found);
                            }
                        }
                    }
                };
            key(nodes, format!("{p}nodes"), &|i, pat| {
                pat.matches(facts.name(i))
            });
            key(roles, format!("{p}roles"), &|i, pat| {
                pat.matches(facts.role(i))
            });
            for cs in config {
                key(
                    &cs.selector,
                    format!("{p}nodes_by_config '{}'", cs.variable),
                    &|i, pat| {
                        facts
                            .config(i, &cs.variable)
                            .is_some_and(|v| flatten(&v).iter().any(|s| pat.matches(s)))
                    },
                );
            }
            out
        };
        let include = group(&filter.nodes, &filter.roles, &filter.nodes_by_config, "");
        let exclude = group(
            &filter.exclude_nodes,
            &filter.exclude_roles,
            &filter.exclude_nodes_by_config,
            "exclude_",
        );
        let mut nodes = Vec::new();
        for i in include {
            if !exclude.contains(&i) && !nodes.contains(&i) {
                nodes.push(i);
            }
        }
        Selection { nodes, unmatched }
    }

    #[test]
    fn filters_sharing_matches_select_what_each_selects_alone() {
        let all = |flags: FilterFlags<'static>| NodeFilter::from_flags(&flags).unwrap();
        // The same texts as names and roles, exact and as regexes, included and excluded,
        // matching and not, so that a remembered match can only be reused where it applies.
        let filters = [
            all(FilterFlags {
                nodes: Some("web,/web/,a"),
                ..FilterFlags::default()
            }),
            all(FilterFlags {
                roles: Some("web,/web/,a"),
                exclude_nodes: Some("/^c/"),
                ..FilterFlags::default()
            }),
            all(FilterFlags {
                nodes: Some("/^c/,/./"),
                exclude_roles: Some("/db/,a"),
                ..FilterFlags::default()
            }),
            all(FilterFlags {
                nodes_by_config: Some(r#"{"alias": ["web", "/^[xz]$/"]}"#),
                exclude_nodes_by_config: Some(r#"{"role": "web", "alias": "/y/"}"#),
                ..FilterFlags::default()
            }),
            all(FilterFlags {
                exclude_nodes: Some("a,/web/"),
                ..FilterFlags::default()
            }),
            all(FilterFlags {
                roles: Some("all"),
                nodes: Some("c,b,c"),
                exclude_roles: Some("web"),
                ..FilterFlags::default()
            }),
            NodeFilter::default(),
            all(FilterFlags {
                roles: Some("e"),
                ..FilterFlags::default()
            }),
            all(FilterFlags {
                roles: Some("/e/,e"),
                ..FilterFlags::default()
            }),
            all(FilterFlags {
                nodes: Some("web,/web/,a"),
                roles: Some("a,/web/,web"),
                ..FilterFlags::default()
            }),
        ];
        let facts = facts();
        let mut shared = Matches::new(&facts);
        for round in 0..2 {
            for (n, filter) in filters.iter().enumerate() {
                let expected = reference(filter, &facts);
                assert_eq!(
                    filter.select_in(&mut shared),
                    expected,
                    "filter {n}, round {round}"
                );
                assert_eq!(filter.select(&facts), expected, "filter {n} alone");
            }
        }
    }

    #[test]
    fn bad_json_is_a_clear_error() {
        let err = NodeFilter::from_flags(&FilterFlags {
            nodes_by_config: Some("{role: web}"),
            ..FilterFlags::default()
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--nodes-by-config: not valid JSON"),
            "{err}"
        );
    }
}
