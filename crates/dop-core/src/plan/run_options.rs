//! Run options shared by the plan, infrastructures and steps: `max_in_flight`, `max_per_role`,
//! `canary_host`.

use serde::{Deserialize, Serialize};

use super::check::{boolean, field, integer};
use crate::diagnostic::{join, Collector};
use crate::yaml::Yaml;

/// Concurrency and canary settings. Unset values fall back to the enclosing level, then to the
/// tool's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Concurrency {
    /// How many nodes run at once; `-1` one per node, `0` sequentially in the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<i64>,
    /// How many nodes of one role run at once; `0` and `-1` ignore roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_role: Option<i64>,
    /// Run one node first, and the rest only if it succeeded. Unlike the original, a step may
    /// set `false` to turn off a plan-level `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_host: Option<bool>,
}

/// The keys this module reads, for unknown-key checks.
pub(crate) const KEYS: [&str; 3] = ["max_in_flight", "max_per_role", "canary_host"];

impl Concurrency {
    /// Reads the run options from a mapping.
    pub(crate) fn parse(c: &mut Collector<'_>, map: &Yaml, path: &str) -> Concurrency {
        let mut limit = |key: &str| {
            let v = field(map, key)?;
            let p = join(path, key);
            let n = integer(c, v, &p, key)?;
            if n < -1 {
                c.error(v, &p, format!("{key} must be -1 or greater, not {n}"));
                return None;
            }
            Some(n)
        };
        let max_in_flight = limit("max_in_flight");
        let max_per_role = limit("max_per_role");
        let canary_host = field(map, "canary_host")
            .and_then(|v| boolean(c, v, &join(path, "canary_host"), "canary_host"));
        Concurrency {
            max_in_flight,
            max_per_role,
            canary_host,
        }
    }

    /// These options with unset values taken from `outer`.
    pub fn or(&self, outer: &Concurrency) -> Concurrency {
        Concurrency {
            max_in_flight: self.max_in_flight.or(outer.max_in_flight),
            max_per_role: self.max_per_role.or(outer.max_per_role),
            canary_host: self.canary_host.or(outer.canary_host),
        }
    }
}
