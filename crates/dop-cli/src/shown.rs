//! Values of a node's fields (a change's from and to, a drift's actual and expected) as
//! people read them: sizes as plans write them (`192M`, `20G`) rather than bytes, data disks
//! as `name size` each. The JSON outputs keep the values as they are.

use dop_core::DataSize;
use serde_json::Value;

/// `value` of the node field `field` (`memory`, `disks`, `cores`, …) for people.
pub fn field_value(field: &str, value: &Value) -> String {
    match (field, value) {
        ("memory" | "storage", v) => size(v),
        ("disks", Value::Array(disks)) if disks.is_empty() => "(no disks)".into(),
        ("disks", Value::Array(disks)) => disks
            .iter()
            .map(
                |d| match (d.get("name").and_then(Value::as_str), d.get("size")) {
                    (Some(name), Some(bytes)) => format!("{name} {}", size(bytes)),
                    _ => plain(d),
                },
            )
            .collect::<Vec<_>>()
            .join(", "),
        (_, v) => plain(v),
    }
}

/// Any value: `(none)` for null, a string without quotes, the rest as JSON.
pub fn plain(value: &Value) -> String {
    match value {
        Value::Null => "(none)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A number of bytes as a size (`192M`); anything else as [`plain`].
fn size(value: &Value) -> String {
    match value.as_u64() {
        Some(bytes) => DataSize(bytes).to_string(),
        None => plain(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_read_as_plans_write_them() {
        let mib: u64 = 1024 * 1024;
        assert_eq!(field_value("memory", &json!(192 * mib)), "192M");
        assert_eq!(field_value("storage", &json!(20 * 1024 * mib)), "20G");
        assert_eq!(field_value("memory", &json!(1000)), "1000 bytes");
        assert_eq!(field_value("memory", &Value::Null), "(none)");
        assert_eq!(
            field_value(
                "disks",
                &json!([{"name": "data", "size": 256 * mib}, {"name": "logs", "size": 2048 * mib}])
            ),
            "data 256M, logs 2G"
        );
        assert_eq!(field_value("disks", &json!([])), "(no disks)");
        // Other fields, and numbers that are no size, are left as they are.
        assert_eq!(field_value("cores", &json!(4)), "4");
        assert_eq!(field_value("image", &json!("debian-12")), "debian-12");
        assert_eq!(field_value("tags", &json!(["a"])), "[\"a\"]");
    }
}
