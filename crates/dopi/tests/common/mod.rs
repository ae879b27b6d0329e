//! Helpers shared by dopi's process tests: a temporary world (store, logs, a work directory)
//! where dopi runs, its sshd test nodes, and dopi processes that are killed by pid when a test
//! ends (the harnesses themselves are dop-testbed's).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use dop_testbed::process::{text as text_of, Running};
use dop_testbed::{Options, Testbed};

/// A temporary world: store, logs, a work directory the plan's commands write into.
pub struct World {
    dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        let w = World {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(w.work()).unwrap();
        w
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn work(&self) -> PathBuf {
        self.path().join("work")
    }
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dopi"));
        c.env("DOP_CONFIG", "/dev/null")
            .env("DOP_STORE_DIR", self.path().join("store"))
            .env("DOP_LOG_DIR", self.path().join("logs"))
            .args(args);
        c
    }
    pub fn dopi(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
    /// `dopi <args>` in the background, its output discarded; killed by pid when dropped.
    pub fn quietly(&self, args: &[&str]) -> Running {
        Running::spawn(
            self.command(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    }
    /// sshd test nodes in the world's directory `testbed`, stopped by pid when dropped.
    pub fn testbed(&self, options: &Options) -> Testbed {
        Testbed::start(&self.path().join("testbed"), options).expect("testbed")
    }
    /// Writes a plan (with `WORK` replaced by the work directory) and adds it.
    pub fn add(&self, name: &str, text: &str) {
        let file = self.path().join(format!("{name}.yaml"));
        std::fs::write(&file, text.replace("WORK", self.work().to_str().unwrap())).unwrap();
        let out = self.dopi(&["add", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    }
    pub fn show_json(&self, plan: &str) -> serde_json::Value {
        let out = self.dopi(&["show", plan, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
    /// A directory in the world that the test nodes' login can read and write: the nodes are
    /// this machine, and their login is another user when the tests run as root.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(self.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }
    /// How many lines a file in the work directory has (0 when missing).
    pub fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.work().join(file))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A plan whose nodes `n01`, `n02`… are the testbed's addresses, logging in with `key` (the
/// credential `login`), with `extra_nodes` and `steps` (YAML text) added.
pub fn plan(testbed: &dop_testbed::Testbed, key: &Path, extra_nodes: &str, steps: &str) -> String {
    let mut nodes = String::new();
    for (i, a) in testbed.addresses.iter().enumerate() {
        nodes.push_str(&format!(
            "  n{:02}: {{infrastructure: lab, fqdn: '{a}'}}\n",
            i + 1
        ));
    }
    nodes.push_str(extra_nodes);
    format!(
        "name: ssh
infrastructures: {{lab: {{type: baremetal}}}}
credentials:
  login: {{type: ssh_key, username: {user}, private_key: {{file: {key}}}}}
nodes:
{nodes}steps:
{steps}",
        user = testbed.user,
        key = key.display(),
    )
}

/// The message of the first command of a step set's first step on a node, from `show --json`.
pub fn node_message(show: &serde_json::Value, set: usize, node: &str) -> String {
    show["step_sets"][set]["steps"][0]["nodes"][node]["commands"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_string()
}
