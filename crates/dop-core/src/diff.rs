//! Structural differences between two plans, keyed by name: nodes, infrastructures,
//! credentials, step sets and steps are matched by name (never by position, so inserting a node
//! does not "change" every node after it), and each change lists the fields that differ.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::plan::{Credential, Plan};

/// What a diff shows in place of a secret written in the plan: never its value.
pub const SECRET_SHOWN: &str = "(secret)";
/// What a diff shows in place of a secret whose value changed: neither the old nor the new one.
pub const SECRET_CHANGED: &str = "(changed)";

/// The fields of a credential that hold a secret (a content source).
const SECRET_FIELDS: [&str; 3] = ["password", "keytab", "private_key"];

/// What happened to a named part of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = PlanChangeKind))]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Only in the new plan.
    Added,
    /// Only in the old plan.
    Removed,
    /// In both, with different content.
    Changed,
}

/// One field that differs, as a JSON pointer into the part (`/interfaces/0/ip`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = PlanFieldChange))]
pub struct FieldChange {
    /// JSON pointer of the field inside the part; empty for the whole part.
    pub path: String,
    /// The old value (absent when the field was added).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub old: Option<Json>,
    /// The new value (absent when the field was removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub new: Option<Json>,
}

/// A named part that was added, removed or changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = PlanChange))]
pub struct Change {
    /// Added, removed or changed.
    pub kind: ChangeKind,
    /// Its name (`set/step` for steps; a repeated step name gets `#2`, `#3`).
    pub name: String,
    /// The fields that differ (for changes only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

/// Everything that differs between two plans.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanDiff {
    /// Plan-level settings: name, run options, hooks.
    pub plan: Vec<FieldChange>,
    /// Infrastructures by name.
    pub infrastructures: Vec<Change>,
    /// Credentials by name.
    pub credentials: Vec<Change>,
    /// Nodes by name.
    pub nodes: Vec<Change>,
    /// Step sets by name: added, removed, or changed when their step order differs.
    pub step_sets: Vec<Change>,
    /// Steps by `set/step`.
    pub steps: Vec<Change>,
    /// The configuration, by JSON pointer.
    pub configuration: Vec<FieldChange>,
}

impl PlanDiff {
    /// Computes what changed from `old` to `new`.
    pub fn between(old: &Plan, new: &Plan) -> PlanDiff {
        let plan_fields = |p: &Plan| {
            serde_json::json!({
                "name": p.name,
                "run_options": p.run_options,
                "hooks": p.hooks,
            })
        };
        let mut step_sets = compare(step_orders(old), step_orders(new));
        // A step set "changes" when its step order does: show the whole order, old and new,
        // rather than a patch of list positions.
        for change in &mut step_sets {
            if change.kind == ChangeKind::Changed {
                let order = |p: &Plan| {
                    step_orders(p)
                        .into_iter()
                        .find(|(n, _)| *n == change.name)
                        .map(|(_, v)| v["steps"].clone())
                };
                change.fields = vec![FieldChange {
                    path: "/steps".to_string(),
                    old: order(old),
                    new: order(new),
                }];
            }
        }
        PlanDiff {
            plan: fields(&plan_fields(old), &plan_fields(new)),
            infrastructures: compare(
                keyed(
                    old.infrastructures
                        .iter()
                        .map(|i| (i.name.clone(), to_json(i))),
                ),
                keyed(
                    new.infrastructures
                        .iter()
                        .map(|i| (i.name.clone(), to_json(i))),
                ),
            ),
            credentials: compare(
                keyed(
                    old.credentials
                        .iter()
                        .map(|c| (c.name.clone(), masked_credential(c, None))),
                ),
                keyed(new.credentials.iter().map(|c| {
                    let before = old.credentials.iter().find(|o| o.name == c.name);
                    (c.name.clone(), masked_credential(c, before))
                })),
            ),
            nodes: compare(
                keyed(old.nodes.iter().map(|n| (n.name.clone(), to_json(n)))),
                keyed(new.nodes.iter().map(|n| (n.name.clone(), to_json(n)))),
            ),
            step_sets,
            steps: compare(steps(old), steps(new)),
            configuration: fields(&old.configuration, &new.configuration),
        }
    }

    /// True when the plans are the same.
    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
            && self.infrastructures.is_empty()
            && self.credentials.is_empty()
            && self.nodes.is_empty()
            && self.step_sets.is_empty()
            && self.steps.is_empty()
            && self.configuration.is_empty()
    }
}

/// A part of a plan as JSON (serialising these types cannot fail).
fn to_json(value: &impl Serialize) -> Json {
    serde_json::to_value(value).unwrap_or(Json::Null)
}

/// A credential as JSON with every secret written in the plan replaced: by [`SECRET_SHOWN`],
/// or on the new side (`before` is the old plan's credential of that name) by
/// [`SECRET_CHANGED`] when the value differs from the old one, so that a password change is
/// seen without either password. A `file` path or an `exec` program is not the secret and is
/// shown as it is.
fn masked_credential(c: &Credential, before: Option<&Credential>) -> Json {
    let mut json = to_json(c);
    let old_json = before.map(to_json);
    for field in SECRET_FIELDS {
        let pointer = format!("/{field}/literal");
        let Some(value) = json.pointer_mut(&pointer) else {
            continue;
        };
        let changed = old_json
            .as_ref()
            .and_then(|o| o.pointer(&pointer))
            .is_some_and(|old| old != value);
        *value = Json::from(if changed {
            SECRET_CHANGED
        } else {
            SECRET_SHOWN
        });
    }
    json
}

/// Each step set with the keys of its steps in order.
fn step_orders(p: &Plan) -> Vec<(String, Json)> {
    p.step_sets
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                serde_json::json!({ "steps": s.step_keys() }),
            )
        })
        .collect()
}

/// Every step, keyed `set/step`.
fn steps(p: &Plan) -> Vec<(String, Json)> {
    p.step_sets
        .iter()
        .flat_map(|s| {
            s.step_keys()
                .into_iter()
                .zip(&s.steps)
                .map(move |(key, step)| (format!("{}/{key}", s.name), to_json(step)))
        })
        .collect()
}

/// Gives repeated names a `#2`, `#3` suffix so every entry has a unique key.
fn keyed(items: impl Iterator<Item = (String, Json)>) -> Vec<(String, Json)> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    items
        .map(|(name, value)| {
            let count = seen.entry(name.clone()).or_insert(0);
            *count += 1;
            let key = if *count == 1 {
                name
            } else {
                format!("{name}#{count}")
            };
            (key, value)
        })
        .collect()
}

/// Matches entries by key: removed in old order, then added and changed in new order.
fn compare(old: Vec<(String, Json)>, new: Vec<(String, Json)>) -> Vec<Change> {
    let new_index: std::collections::HashMap<&str, &Json> =
        new.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let old_index: std::collections::HashMap<&str, &Json> =
        old.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out: Vec<Change> = old
        .iter()
        .filter(|(k, _)| !new_index.contains_key(k.as_str()))
        .map(|(k, _)| Change {
            kind: ChangeKind::Removed,
            name: k.clone(),
            fields: Vec::new(),
        })
        .collect();
    for (key, value) in &new {
        match old_index.get(key.as_str()) {
            None => out.push(Change {
                kind: ChangeKind::Added,
                name: key.clone(),
                fields: Vec::new(),
            }),
            Some(old_value) if *old_value != value => out.push(Change {
                kind: ChangeKind::Changed,
                name: key.clone(),
                fields: fields(old_value, value),
            }),
            Some(_) => {}
        }
    }
    out
}

/// The fields that differ between two JSON values, from a JSON patch.
fn fields(old: &Json, new: &Json) -> Vec<FieldChange> {
    json_patch::diff(old, new)
        .0
        .into_iter()
        .map(|op| {
            let path = |p: &json_patch::jsonptr::PointerBuf| p.to_string();
            match op {
                json_patch::PatchOperation::Add(a) => FieldChange {
                    old: None,
                    new: Some(a.value),
                    path: path(&a.path),
                },
                json_patch::PatchOperation::Remove(r) => FieldChange {
                    old: old.pointer(&r.path.to_string()).cloned(),
                    new: None,
                    path: path(&r.path),
                },
                json_patch::PatchOperation::Replace(r) => FieldChange {
                    old: old.pointer(&r.path.to_string()).cloned(),
                    new: Some(r.value),
                    path: path(&r.path),
                },
                other => FieldChange {
                    path: other.to_string(),
                    old: None,
                    new: None,
                },
            }
        })
        .collect()
}

impl fmt::Display for PlanDiff {
    /// Terraform-like: `+` added, `-` removed, `~` changed, with the changed fields below.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no changes");
        }
        let write_fields = |f: &mut fmt::Formatter<'_>, fields: &[FieldChange]| {
            for field in fields {
                let show =
                    |v: &Option<Json>| v.as_ref().map_or("(none)".to_string(), Json::to_string);
                writeln!(
                    f,
                    "    {}: {} -> {}",
                    field.path,
                    show(&field.old),
                    show(&field.new)
                )?;
            }
            Ok(())
        };
        if !self.plan.is_empty() {
            writeln!(f, "~ plan settings")?;
            write_fields(f, &self.plan)?;
        }
        for (what, changes) in [
            ("infrastructure", &self.infrastructures),
            ("credential", &self.credentials),
            ("node", &self.nodes),
            ("step set", &self.step_sets),
            ("step", &self.steps),
        ] {
            for change in changes {
                let sign = match change.kind {
                    ChangeKind::Added => '+',
                    ChangeKind::Removed => '-',
                    ChangeKind::Changed => '~',
                };
                writeln!(f, "{sign} {what} {}", change.name)?;
                write_fields(f, &change.fields)?;
            }
        }
        if !self.configuration.is_empty() {
            writeln!(f, "~ configuration")?;
            write_fields(f, &self.configuration)?;
        }
        Ok(())
    }
}
