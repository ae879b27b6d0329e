//! What the infrastructure test beds ([`libvirt`](crate::libvirt),
//! [`openstack`](crate::openstack) and [`vsphere`](crate::vsphere)) share: where a bed's
//! directory is, and reading the `testbed.json` that `cargo xtask … up` writes there.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The file `cargo xtask … up` writes in a bed's directory once it is ready (and `down`
/// removes first): what the tests read.
pub const TESTBED_JSON: &str = "testbed.json";

/// A bed's directory: `$env` when set, else `default`; a relative path is taken from the
/// workspace root (tests run in their crate's directory, xtask wherever it was called).
pub fn dir(env: &str, default: &str) -> PathBuf {
    let dir = match std::env::var_os(env) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(default),
    };
    if dir.is_absolute() {
        dir
    } else {
        crate::workspace_root()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(dir)
    }
}

/// The text of `<dir>/testbed.json`, or why there is none: `none` starts the sentence ("no
/// libvirt testbed"), `up` is the command that brings the bed up.
pub fn read_testbed_json(dir: &Path, none: &str, up: &str) -> Result<String, String> {
    let path = dir.join(TESTBED_JSON);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("{none} ({} missing): run `{up}`", path.display()))
        }
        Err(e) => Err(format!("{none}: {}: {e}", path.display())),
    }
}

/// The string `key` of a `testbed.json`.
pub fn string(v: &Value, key: &str) -> Result<String, String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("testbed.json: no string '{key}'"))
}
