//! Execution logs: `<log_dir>/<plan>/<execution_id>/all.log`, one `<node>.log` per node, and
//! `events.jsonl` (one JSON event a line, numbered), which dopc will serve as they are. dopi and
//! dopv write them the same way.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// The logs of one execution.
pub struct ExecutionLog {
    dir: PathBuf,
    /// The execution's id (its directory name).
    pub id: String,
    files: Mutex<Files>,
    nodes: Mutex<HashMap<String, Arc<NodeLog>>>,
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
    verbose: bool,
    masker: Arc<Masker>,
    file: Mutex<Option<File>>,
    /// Its own append handle on `all.log` (appends of whole lines do not interleave).
    all: Mutex<Option<File>>,
    lost: Arc<Lost>,
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

    /// The log of `node` (created on first use).
    pub fn node(self: &Arc<Self>, node: &str) -> Arc<NodeLog> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(node.to_string())
            .or_insert_with(|| {
                let opened = |path: PathBuf| {
                    let file = open_append(&path);
                    match file {
                        Ok(f) => Some(f),
                        Err(e) => {
                            self.lost.check(Err(e));
                            None
                        }
                    }
                };
                let file = opened(self.dir.join(format!("{node}.log")));
                let all = opened(self.dir.join("all.log"));
                Arc::new(NodeLog {
                    node: node.to_string(),
                    verbose: self.echo == Echo::Verbose,
                    masker: self.masker.clone(),
                    file: Mutex::new(file),
                    all: Mutex::new(all),
                    lost: self.lost.clone(),
                })
            })
            .clone()
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
    /// Writes a line (command output, details) to the node's file and to `all.log`.
    pub fn line(&self, text: &str) {
        let text = self.masker.mask(text);
        let line = format_line(now_ms(), Level::Debug, Some(&self.node), &text);
        if self.verbose {
            eprint!(
                "{}",
                line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest)
            );
        }
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            self.lost.check(f.write_all(line.as_bytes()));
        }
        if let Some(f) = self.all.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            self.lost.check(f.write_all(line.as_bytes()));
        }
    }
}
