//! Execution logs: `<log_dir>/<plan>/<execution_id>/all.log`, one `<node>.log` per node, and
//! `events.jsonl` (one JSON event a line, numbered), which dopc will serve as they are. dopi and
//! dopv write them the same way.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use dop_core::time::{now_ms, rfc3339};
use dop_core::{Event, EventKind, Level};

use crate::mask::Masker;

struct Files {
    all: File,
    events: File,
    seq: u64,
    /// The current step's progress, for the status line on a terminal.
    progress: crate::progress::StepProgress,
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

/// Event lines a live reader may fall behind before it must re-read the file.
pub const LIVE_BACKLOG: usize = 1024;
/// Node log files an execution keeps open at once. A run over 10 000 nodes must not hold a
/// file per node (the process's open files are limited, and its connections need them): beyond
/// this, the file opened longest ago is closed, and opened again (to append) when its node
/// writes again.
pub const OPEN_NODE_FILES: usize = 256;

/// The logs of one execution.
pub struct ExecutionLog {
    dir: PathBuf,
    /// The execution's id (its directory name).
    pub id: String,
    files: Mutex<Files>,
    nodes: Mutex<HashMap<String, Arc<NodeLog>>>,
    /// The append handle on `all.log` the nodes' lines share (an append of a whole line is
    /// one write, and writes to a file opened for appending do not interleave).
    all_for_nodes: Arc<File>,
    /// The node log files open now, in the order they were opened.
    open_node_files: Arc<OpenNodeFiles>,
    /// What to show on standard error.
    echo: Echo,
    masker: Arc<Masker>,
    /// Every event line as it is written, for live readers (a reader that lags re-reads
    /// `events.jsonl`).
    lines: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Sees every event as it is written (dopc's metrics): never lags, never drops one.
    observer: std::sync::OnceLock<Observer>,
    /// Set at the first write that failed (a full disk): said once, on standard error.
    lost: Arc<Lost>,
}

/// Whether writes to an execution's files failed. The run goes on (its state is what counts,
/// and that is in the store); the operator is told once, and the run's summary says it.
#[derive(Debug)]
struct Lost {
    dir: PathBuf,
    failed: std::sync::atomic::AtomicBool,
}

impl Lost {
    fn check(&self, written: std::io::Result<()>) {
        if let Err(e) = written {
            if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                eprintln!(
                    "warning: cannot write the execution log in {}: {e}; the run goes on and its \
                     state is recorded, but log lines are lost until there is room",
                    self.dir.display()
                );
            }
        }
    }
}

/// A function that sees every event of an execution log.
pub type Observer = Box<dyn Fn(&Event) + Send + Sync>;

impl std::fmt::Debug for ExecutionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionLog")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The log of one node in an execution; its lines also go to `all.log`.
pub struct NodeLog {
    node: String,
    path: PathBuf,
    verbose: bool,
    masker: Arc<Masker>,
    /// The node's output is inside a private key block (its lines are masked up to the end).
    in_private_key: Mutex<bool>,
    /// Open while the node writes (at most [`OPEN_NODE_FILES`] of an execution are).
    file: Mutex<Option<File>>,
    /// The execution's handle on `all.log` for node lines.
    all: Arc<File>,
    lost: Arc<Lost>,
    open_files: Arc<OpenNodeFiles>,
    me: Weak<NodeLog>,
}

/// Logs hold commands' output: readable by the owner and its group only (0640, in 0750
/// directories), whatever the umask.
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
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
        masker: Masker,
    ) -> std::io::Result<Arc<ExecutionLog>> {
        let dir = log_dir.join(plan).join(id);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(&dir)?;
        }
        let all_for_nodes = Arc::new(open_append(&dir.join("all.log"))?);
        let files = Files {
            all: open_append(&dir.join("all.log"))?,
            events: open_append(&dir.join("events.jsonl"))?,
            seq: 0,
            progress: crate::progress::StepProgress::default(),
        };
        Ok(Arc::new(ExecutionLog {
            id: id.to_string(),
            files: Mutex::new(files),
            nodes: Mutex::new(HashMap::new()),
            all_for_nodes,
            open_node_files: Arc::new(OpenNodeFiles::default()),
            echo,
            masker: Arc::new(masker),
            lines: tokio::sync::broadcast::channel(LIVE_BACKLOG).0,
            observer: std::sync::OnceLock::new(),
            lost: Arc::new(Lost {
                dir: dir.clone(),
                failed: std::sync::atomic::AtomicBool::new(false),
            }),
            dir,
        }))
    }

    /// Every event line (JSON, as in `events.jsonl`) written from now on. A receiver more than
    /// [`LIVE_BACKLOG`] lines behind is told it lagged; it catches up from the file.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.lines.subscribe()
    }

    /// The log a caller gave (`Some`), or a new execution's under `log_dir`.
    pub fn given_or_new(
        given: Option<&Arc<ExecutionLog>>,
        log_dir: &Path,
        plan: &str,
        echo: Echo,
        masker: impl FnOnce() -> Masker,
    ) -> std::io::Result<Arc<ExecutionLog>> {
        match given {
            Some(log) => Ok(log.clone()),
            None => ExecutionLog::create(log_dir, plan, &new_execution_id(), echo, masker()),
        }
    }

    /// The execution's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when a write to the execution's files failed (lines were lost).
    pub fn lost_lines(&self) -> bool {
        self.lost.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Calls `observer` with every event written from now on (set once; later calls are
    /// ignored and return false). It runs under the log's lock: it must not write to the log.
    pub fn observe(&self, observer: Observer) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// The secret masker of the execution.
    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    /// Records an event (numbered) in `events.jsonl` and `all.log`, and echoes it.
    pub fn event(
        &self,
        level: Level,
        kind: EventKind,
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
            level,
            kind,
            node: node.map(str::to_string),
            step: step.map(str::to_string),
            message: self.masker.mask(&message).into_owned(),
            fields,
        };
        let line = format_line(event.time_ms, level, node, &event.message);
        let json = serde_json::to_string(&event).unwrap_or_default();
        self.lost
            .check(files.events.write_all(format!("{json}\n").as_bytes()));
        let _ = self.lines.send(Arc::from(json));
        if let Some(observe) = self.observer.get() {
            observe(&event);
        }
        self.lost.check(files.all.write_all(line.as_bytes()));
        let shown = line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest);
        match self.echo {
            Echo::Quiet => {}
            Echo::Lines | Echo::Verbose => eprint!("{shown}"),
            Echo::Progress => {
                let update = files
                    .progress
                    .on_event(kind, level, node, step, &event.fields);
                if update && level != Level::Error {
                    eprint!("\r\x1b[2K  {}", files.progress.line());
                } else {
                    eprint!("\r\x1b[2K{shown}");
                }
            }
        }
    }

    /// [`ExecutionLog::event`] with the details as a JSON value (an object; anything else is
    /// no details).
    pub fn event_with(
        &self,
        level: Level,
        kind: EventKind,
        node: Option<&str>,
        step: Option<&str>,
        message: String,
        fields: serde_json::Value,
    ) {
        let fields = match fields {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        self.event(level, kind, node, step, message, fields);
    }

    /// The log of `node` (created on first use; its file is opened when it writes).
    pub fn node(self: &Arc<Self>, node: &str) -> Arc<NodeLog> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(node.to_string())
            .or_insert_with(|| {
                Arc::new_cyclic(|me| NodeLog {
                    node: node.to_string(),
                    path: self.dir.join(format!("{node}.log")),
                    verbose: self.echo == Echo::Verbose,
                    masker: self.masker.clone(),
                    in_private_key: Mutex::new(false),
                    file: Mutex::new(None),
                    all: self.all_for_nodes.clone(),
                    lost: self.lost.clone(),
                    open_files: self.open_node_files.clone(),
                    me: me.clone(),
                })
            })
            .clone()
    }
}

/// The node log files of an execution that are open, oldest first.
#[derive(Default)]
struct OpenNodeFiles {
    order: Mutex<VecDeque<Weak<NodeLog>>>,
}

impl OpenNodeFiles {
    /// Notes that `node` opened its file, and closes the files opened longest ago beyond
    /// [`OPEN_NODE_FILES`]. A file being written right now is left open (and looked at again
    /// with the next one opened): never waited for, so two nodes never wait for each other.
    fn opened(&self, node: Weak<NodeLog>) {
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        order.push_back(node);
        let mut busy = Vec::new();
        while order.len() > OPEN_NODE_FILES {
            let Some(oldest) = order.pop_front() else {
                break;
            };
            let Some(oldest) = oldest.upgrade() else {
                continue;
            };
            match oldest.file.try_lock() {
                Ok(mut file) => *file = None,
                Err(_) => busy.push(Arc::downgrade(&oldest)),
            };
        }
        for node in busy.into_iter().rev() {
            order.push_front(node);
        }
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.order
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|n| n.file.lock().unwrap().is_some())
            .count()
    }
}

fn format_line(time_ms: u64, level: Level, node: Option<&str>, message: &str) -> String {
    let level = level.to_string().to_uppercase();
    match node {
        Some(n) => format!("{} {level:<5} [{n}] {message}\n", rfc3339(time_ms)),
        None => format!("{} {level:<5} {message}\n", rfc3339(time_ms)),
    }
}

impl NodeLog {
    /// The execution's secret masker (shared with the execution's log).
    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    /// Writes a line (command output, details) to the node's file and to `all.log`.
    pub fn line(&self, text: &str) {
        let text = {
            let mut in_key = self
                .in_private_key
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.masker.mask_line(text, &mut in_key)
        };
        let line = format_line(now_ms(), Level::Debug, Some(&self.node), &text);
        if self.verbose {
            eprint!(
                "{}",
                line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest)
            );
        }
        let opened = {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            let opened = file.is_none();
            if opened {
                match open_append(&self.path) {
                    Ok(f) => *file = Some(f),
                    Err(e) => self.lost.check(Err(e)),
                }
            }
            if let Some(f) = file.as_mut() {
                self.lost.check(f.write_all(line.as_bytes()));
            }
            opened && file.is_some()
        };
        if opened {
            self.open_files.opened(self.me.clone());
        }
        self.lost.check((&*self.all).write_all(line.as_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_nodes_keep_few_files_open_and_lose_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let log =
            ExecutionLog::create(dir.path(), "p", "x", Echo::Quiet, Masker::default()).unwrap();
        let nodes: Vec<Arc<NodeLog>> = (0..1000).map(|i| log.node(&format!("n{i}"))).collect();
        // Every node writes, then every node again: each file is closed between its lines.
        for round in 0..2 {
            for node in &nodes {
                node.line(&format!("round {round}"));
            }
            assert!(log.open_node_files.count() <= OPEN_NODE_FILES);
        }
        for i in [0, 1, 500, 999] {
            let text = std::fs::read_to_string(log.dir().join(format!("n{i}.log"))).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "n{i}: {text}");
            assert!(lines[0].ends_with(&format!("[n{i}] round 0")), "{text}");
            assert!(lines[1].ends_with(&format!("[n{i}] round 1")), "{text}");
        }
        let all = std::fs::read_to_string(log.dir().join("all.log")).unwrap();
        assert_eq!(all.lines().count(), 2000);
        assert!(!log.lost_lines());
    }
}
