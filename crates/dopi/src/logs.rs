//! Execution logs: `<log_dir>/<plan>/<execution_id>/all.log`, one `<node>.log` per node, and
//! `events.jsonl` (one JSON event a line, numbered), which dopc will serve as they are.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dop_store::{now_ms, rfc3339};
use serde::{Deserialize, Serialize};

/// One event of an execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the execution, from 1, without gaps.
    pub seq: u64,
    /// When, in milliseconds since the epoch.
    pub time_ms: u64,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// What happened: `run_started`, `step_started`, `command_started`, `command_finished`,
    /// `step_finished`, `run_finished`, `message`.
    pub kind: String,
    /// The node, for node events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The step, for step and command events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// A human-readable line.
    pub message: String,
    /// Details (state, exit status, duration …).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

struct Files {
    all: File,
    events: File,
    seq: u64,
    /// Commands running and finished in the current step, for the progress line.
    running: usize,
    finished: usize,
    failed: usize,
}

/// What a run shows on standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Echo {
    /// Nothing (the logs still get everything).
    Quiet,
    /// One line per event.
    #[default]
    Lines,
    /// One line per event and every output line of every command.
    Verbose,
    /// On a terminal: step lines, and one status line updated in place for the commands.
    Progress,
}

/// The logs of one execution.
pub struct ExecutionLog {
    dir: PathBuf,
    /// The execution's id (its directory name).
    pub id: String,
    files: Mutex<Files>,
    nodes: Mutex<HashMap<String, Arc<NodeLog>>>,
    /// What to show on standard error.
    echo: Echo,
}

/// The log of one node in an execution; its lines also go to `all.log`.
pub struct NodeLog {
    node: String,
    verbose: bool,
    file: Mutex<Option<File>>,
    /// Its own append handle on `all.log` (appends of whole lines do not interleave).
    all: Mutex<Option<File>>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A new execution id: UTC time and process id, e.g. `20261125T163000Z-4242`.
pub fn new_execution_id() -> String {
    let t = rfc3339(now_ms()).replace(['-', ':'], "");
    format!("{t}-{}", std::process::id())
}

impl ExecutionLog {
    /// Creates the execution's directory and files.
    pub fn create(
        log_dir: &Path,
        plan: &str,
        id: &str,
        echo: Echo,
    ) -> std::io::Result<Arc<ExecutionLog>> {
        let dir = log_dir.join(plan).join(id);
        std::fs::create_dir_all(&dir)?;
        let files = Files {
            all: open_append(&dir.join("all.log"))?,
            events: open_append(&dir.join("events.jsonl"))?,
            seq: 0,
            running: 0,
            finished: 0,
            failed: 0,
        };
        Ok(Arc::new(ExecutionLog {
            dir,
            id: id.to_string(),
            files: Mutex::new(files),
            nodes: Mutex::new(HashMap::new()),
            echo,
        }))
    }

    /// The execution's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records an event (numbered) in `events.jsonl` and `all.log`, and echoes it.
    pub fn event(
        &self,
        level: &str,
        kind: &str,
        node: Option<&str>,
        step: Option<&str>,
        message: String,
        fields: serde_json::Map<String, serde_json::Value>,
    ) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.seq += 1;
        let event = Event {
            seq: files.seq,
            time_ms: now_ms(),
            level: level.to_string(),
            kind: kind.to_string(),
            node: node.map(str::to_string),
            step: step.map(str::to_string),
            message,
            fields,
        };
        let line = format_line(event.time_ms, level, node, &event.message);
        let _ = serde_json::to_writer(&mut files.events, &event);
        let _ = files.events.write_all(b"\n");
        let _ = files.all.write_all(line.as_bytes());
        let shown = line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest);
        match self.echo {
            Echo::Quiet => {}
            Echo::Lines | Echo::Verbose => eprint!("{shown}"),
            Echo::Progress => {
                match kind {
                    "step_started" => (files.running, files.finished, files.failed) = (0, 0, 0),
                    "command_started" => files.running += 1,
                    "command_finished" => {
                        files.running = files.running.saturating_sub(1);
                        files.finished += 1;
                        files.failed += usize::from(level == "error");
                    }
                    _ => {}
                }
                if kind.starts_with("command_") && level != "error" {
                    eprint!(
                        "\r\x1b[2K  {} command(s) finished, {} running, {} failed",
                        files.finished, files.running, files.failed
                    );
                } else {
                    eprint!("\r\x1b[2K{shown}");
                }
            }
        }
    }

    /// The log of `node` (created on first use).
    pub fn node(self: &Arc<Self>, node: &str) -> Arc<NodeLog> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(node.to_string())
            .or_insert_with(|| {
                let file = open_append(&self.dir.join(format!("{node}.log"))).ok();
                let all = open_append(&self.dir.join("all.log")).ok();
                Arc::new(NodeLog {
                    node: node.to_string(),
                    verbose: self.echo == Echo::Verbose,
                    file: Mutex::new(file),
                    all: Mutex::new(all),
                })
            })
            .clone()
    }
}

fn format_line(time_ms: u64, level: &str, node: Option<&str>, message: &str) -> String {
    let level = level.to_uppercase();
    match node {
        Some(n) => format!("{} {level:<5} [{n}] {message}\n", rfc3339(time_ms)),
        None => format!("{} {level:<5} {message}\n", rfc3339(time_ms)),
    }
}

impl NodeLog {
    /// Writes a line (command output, details) to the node's file and to `all.log`.
    pub fn line(&self, text: &str) {
        let line = format_line(now_ms(), "debug", Some(&self.node), text);
        if self.verbose {
            eprint!(
                "{}",
                line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest)
            );
        }
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
        if let Some(f) = self.all.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }
}
