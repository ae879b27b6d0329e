//! Who may do what: the roles a token has, the plans it may see, and the one table of every
//! authenticated endpoint with the role it needs. `docs/api.md` shows [`markdown_table`] (a
//! test keeps the two equal) and the server tests walk [`ENDPOINTS`] with every role.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use dop_core::{Pattern, PatternError};
use serde::{Deserialize, Serialize};

/// What a token may do. Each role may do everything the ones before it may.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Only `GET /metrics`: for a Prometheus scraper, which can read no plan and start nothing.
    Metrics,
    /// Plans (secrets masked), state, logs, executions, monitors and metrics.
    Read,
    /// Read, and start, cancel and reset executions.
    Operate,
    /// Everything: plans, monitor settings, the execution history. Tokens of earlier versions,
    /// which had no role, read as admin (they could do everything).
    #[default]
    Admin,
}

impl Role {
    /// Every role, from the least to the most allowed.
    pub const ALL: [Role; 4] = [Role::Metrics, Role::Read, Role::Operate, Role::Admin];

    /// Its name, as `--role` and the tokens document spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Metrics => "metrics",
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that `{:<8}` lines up `token list`.
        f.pad(self.name())
    }
}

/// A role name that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown role '{0}': use metrics, read, operate or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == text)
            .ok_or_else(|| UnknownRole(text.to_string()))
    }
}

/// The plans a token may see: all, or those a pattern of its list matches (an exact name or a
/// `/regex/`, as node patterns in plans). A plan outside it is answered as a missing one.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// `None`: every plan.
    patterns: Option<Arc<[Pattern]>>,
}

impl Scope {
    /// Every plan.
    pub fn all() -> Scope {
        Scope::default()
    }

    /// The plans matching one of `patterns`; an empty list means every plan.
    pub fn of(patterns: &[String]) -> Result<Scope, PatternError> {
        if patterns.is_empty() {
            return Ok(Scope::all());
        }
        let parsed = patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Scope {
            patterns: Some(parsed.into()),
        })
    }

    /// No plan at all (for a stored scope that no longer parses: refusing is safer than all).
    pub fn nothing() -> Scope {
        Scope {
            patterns: Some(Arc::from(Vec::new())),
        }
    }

    /// True when it is every plan.
    pub fn is_all(&self) -> bool {
        self.patterns.is_none()
    }

    /// Whether the token may see the plan `name`.
    pub fn allows(&self, name: &str) -> bool {
        self.patterns
            .as_ref()
            .is_none_or(|list| list.iter().any(|p| p.matches(name)))
    }
}

/// One authenticated endpoint and the least role that may call it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The HTTP method, upper case.
    pub method: &'static str,
    /// The path under `/api/v1`, with `{name}` (a plan) and `{id}` (an execution) as routed.
    pub path: &'static str,
    /// The least role needed.
    pub role: Role,
}

const fn endpoint(method: &'static str, path: &'static str, role: Role) -> Endpoint {
    Endpoint { method, path, role }
}

/// Every endpoint but `GET /ping` (which needs no token), in the order of `docs/api.md`.
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint("GET", "/plans", Role::Read),
    endpoint("POST", "/plans", Role::Admin),
    endpoint("PUT", "/plans", Role::Admin),
    endpoint("GET", "/plans/{name}", Role::Read),
    endpoint("PUT", "/plans/{name}", Role::Admin),
    endpoint("DELETE", "/plans/{name}", Role::Admin),
    endpoint("GET", "/plans/{name}/versions", Role::Read),
    endpoint("GET", "/plans/{name}/diff", Role::Read),
    endpoint("PUT", "/plans/{name}/reset", Role::Operate),
    endpoint("GET", "/plans/{name}/state", Role::Read),
    endpoint("GET", "/plans/{name}/state/stream", Role::Read),
    endpoint("GET", "/plans/{name}/monitor", Role::Read),
    endpoint("PUT", "/plans/{name}/monitor", Role::Admin),
    endpoint("DELETE", "/plans/{name}/monitor", Role::Admin),
    endpoint("GET", "/executions", Role::Read),
    endpoint("POST", "/executions", Role::Operate),
    endpoint("DELETE", "/executions", Role::Admin),
    endpoint("GET", "/executions/{id}", Role::Read),
    endpoint("DELETE", "/executions/{id}", Role::Admin),
    endpoint("POST", "/executions/{id}/cancel", Role::Operate),
    endpoint("GET", "/executions/{id}/log", Role::Read),
    endpoint("GET", "/executions/{id}/log/stream", Role::Read),
    endpoint("GET", "/metrics", Role::Metrics),
];

/// The least role for a routed endpoint (`path` as routed, with or without `/api/v1`).
/// `None` for a route the table lacks: the caller then asks for admin (closed, not open).
pub fn required_role(method: &str, path: &str) -> Option<Role> {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    ENDPOINTS
        .iter()
        .find(|e| e.method == method && e.path == path)
        .map(|e| e.role)
}

/// The table of `docs/api.md`: every endpoint and the roles that may call it.
pub fn markdown_table() -> String {
    let mut text =
        String::from("| endpoint | metrics | read | operate | admin |\n|---|---|---|---|---|\n");
    text.push_str("| `GET /ping` (no token needed) | yes | yes | yes | yes |\n");
    for e in ENDPOINTS {
        let cells: Vec<&str> = Role::ALL
            .iter()
            .map(|r| if *r >= e.role { "yes" } else { "no" })
            .collect();
        text.push_str(&format!(
            "| `{} {}` | {} |\n",
            e.method,
            e.path,
            cells.join(" | ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_from_metrics_to_admin_and_read_back_from_their_names() {
        assert!(Role::Metrics < Role::Read && Role::Read < Role::Operate);
        assert!(Role::Operate < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_value(role).unwrap(), role.name());
        }
        assert_eq!(
            "root".parse::<Role>().unwrap_err().to_string(),
            "unknown role 'root': use metrics, read, operate or admin"
        );
    }

    #[test]
    fn a_scope_allows_exact_names_and_regexes_and_an_empty_list_everything() {
        let scope = Scope::of(&["db".into(), "/^web-/".into()]).unwrap();
        assert!(scope.allows("db") && scope.allows("web-1"));
        assert!(!scope.allows("db2") && !scope.allows("xweb-1"));
        assert!(Scope::of(&[]).unwrap().allows("anything"));
        assert!(!Scope::nothing().allows("db"));
        let bad = Scope::of(&["/(/".into()]).unwrap_err();
        assert!(bad.to_string().contains("'/(/'"), "{bad}");
    }

    #[test]
    fn every_endpoint_is_in_the_table_once_and_unknown_ones_have_no_role() {
        for e in ENDPOINTS {
            let same = ENDPOINTS
                .iter()
                .filter(|o| o.method == e.method && o.path == e.path)
                .count();
            assert_eq!(same, 1, "{} {}", e.method, e.path);
            assert_eq!(
                required_role(e.method, &format!("/api/v1{}", e.path)),
                Some(e.role)
            );
        }
        assert_eq!(required_role("GET", "/api/v1/tokens"), None);
    }

    #[test]
    fn the_table_in_docs_api_md_is_the_one_in_the_code() {
        let doc = include_str!("../../../docs/api.md");
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/api.md must contain the table of roles exactly as the code has it:\n{table}"
        );
    }
}
