//! A dopv lab for dopv's tests (local, libvirt and OpenStack providers): the real `dopv`
//! binary run against a store of its own in a temporary directory (store, logs, the local
//! provider's nodes, a login key), writing plans, reading what `dopv` reports, logging in to
//! the nodes it made.
//!
//! The binary is passed in (`env!("CARGO_BIN_EXE_dopv")`): this crate does not depend on dopv,
//! so stopping the local provider's nodes (`dopv::providers::local::stop_all` on
//! [`DopvLab::local_dir`]) is the test's own drop. Processes a test starts with
//! [`DopvLab::command`] are stopped by pid when wrapped in [`Running`](crate::process::Running).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::process::text;

/// True when the local provider can make its nodes (namespaces need root); otherwise prints
/// why the test is skipped.
pub fn local_nodes_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: the local provider's namespaces need root");
    }
    root
}

/// A temporary directory for `dopv`: `store`, `logs`, `local` (the local provider's nodes),
/// `key` and `key.pub` (an ed25519 login key), `plan.yaml` (the plan last written).
pub struct DopvLab {
    bin: PathBuf,
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
}

impl DopvLab {
    /// A new lab for the dopv binary `bin`, with a fresh login key.
    pub fn new(bin: impl AsRef<Path>) -> DopvLab {
        let lab = DopvLab {
            bin: bin.as_ref().to_path_buf(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            config: None,
        };
        crate::generate_key(&lab.key(), "dopv-lab").expect("a login key");
        lab
    }

    /// The lab with dop's settings `text` (`dop.conf` in the lab) instead of none, e.g. a
    /// `hiera_dir` where a Puppet server reads the Hiera data.
    pub fn with_config(mut self, text: &str) -> DopvLab {
        let file = self.path().join("dop.conf");
        std::fs::write(&file, text).expect("dop.conf can be written");
        self.config = Some(file);
        self
    }

    /// The lab's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The private login key (`key.pub` beside it).
    pub fn key(&self) -> PathBuf {
        self.path().join("key")
    }

    /// The store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.path().join("store")
    }

    /// The log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.path().join("logs")
    }

    /// The local provider's directory (its nodes and disk pools).
    pub fn local_dir(&self) -> PathBuf {
        self.path().join("local")
    }

    /// `dopv <args>` on the lab's store, logs and local directory, with no configuration of
    /// the machine (only the lab's own settings, when it has them).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        let config = self.config.as_deref().unwrap_or(Path::new("/dev/null"));
        c.env("DOP_CONFIG", config)
            .env("DOP_STORE_DIR", self.store_dir())
            .env("DOP_LOG_DIR", self.log_dir())
            .env("DOP_LOCAL_DIR", self.local_dir())
            .args(args);
        c
    }

    /// Runs `dopv <args>` to its end.
    pub fn dopv(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("dopv runs")
    }

    /// Runs `dopv <args>` and expects the exit status `status` (else panics with its output).
    pub fn expect(&self, args: &[&str], status: i32) -> Output {
        let out = self.dopv(args);
        assert_eq!(
            out.status.code(),
            Some(status),
            "dopv {args:?}\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    /// Runs `dopv <args> --json`, expects `status` and returns what it printed.
    pub fn json(&self, args: &[&str], status: i32) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.expect(&all, status);
        serde_json::from_slice(&out.stdout).expect("dopv printed JSON")
    }

    /// Writes `text` to `plan.yaml` and adds or updates the plan (`dopv add --update`),
    /// expecting success.
    pub fn add_plan(&self, text: &str) {
        let file = self.path().join("plan.yaml");
        std::fs::write(&file, text).expect("plan.yaml can be written");
        self.expect(
            &["add", "--update", file.to_str().expect("a UTF-8 path")],
            0,
        );
    }

    /// The entry of `node` in `dopv show <plan> --json` (panics when it is not there).
    pub fn shown_node(&self, plan: &str, node: &str) -> Value {
        let shown = self.json(&["show", plan], 0);
        shown["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node"] == node))
            .unwrap_or_else(|| panic!("{node} not shown: {shown:#}"))
            .clone()
    }

    /// Runs `command` on a node over SSH as root with the lab's key (no host key checks),
    /// expecting success; returns its trimmed standard output.
    pub fn ssh(&self, address: &str, port: u16, command: &str) -> String {
        let out = Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["-o", "ConnectTimeout=10", "-i"])
            .arg(self.key())
            .args(["-p", &port.to_string(), &format!("root@{address}"), command])
            .output()
            .expect("ssh runs");
        assert!(
            out.status.success(),
            "ssh {address} {command}: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_string()
    }
}

/// The `(node, result)` of each outcome of a dopv report (`--json`), in the report's order.
pub fn results(report: &Value) -> Vec<(String, String)> {
    report["outcomes"]
        .as_array()
        .expect("a report with outcomes")
        .iter()
        .map(|o| (string(&o["node"]), string(&o["result"])))
        .collect()
}

/// The `(node, action, held back)` of each action of a dopv report or plan, in its order.
pub fn actions(report: &Value) -> Vec<(String, String, Vec<String>)> {
    report["actions"]
        .as_array()
        .expect("a report with actions")
        .iter()
        .map(|a| {
            (
                string(&a["node"]),
                string(&a["action"]),
                a["held_back"]
                    .as_array()
                    .map(|h| h.iter().map(string).collect())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The error of `node`'s outcome in a dopv report (empty when it has none).
pub fn error_of(report: &Value, node: &str) -> String {
    report["outcomes"]
        .as_array()
        .expect("a report with outcomes")
        .iter()
        .find(|o| o["node"] == node)
        .and_then(|o| o["error"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// A JSON string's text (panics on anything else: a report of another shape).
fn string(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("a string, not {v}"))
        .to_string()
}
