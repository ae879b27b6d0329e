//! The client commands of the `dopc` binary: arguments, output, exit codes. Every call goes
//! through [`crate::client`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use dop_cli::shown::field_value;
use dop_cli::{print_json, EXIT_USAGE};
use serde::Serialize;

use crate::api::{
    Event, ExecOptions, ExecutionPage, MonitorDocument, NodeSync, PlanState, PlanStored,
    PlanUpload, ResetRequest, Status, SyncCounts, Task,
};
use crate::client::{Client, ClientConfig, ClientError};

/// Exit status: the execution was cancelled.
pub const EXIT_CANCELLED: u8 = 4;
/// Exit status: the server could not be reached (or TLS failed, or it timed out).
pub const EXIT_UNREACHABLE: u8 = 5;
/// Exit status: the token was refused.
pub const EXIT_UNAUTHORIZED: u8 = 6;

/// Where the server is and how to reach it (every client command).
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// The server [default: http://127.0.0.1:8780].
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "DOPC_URL",
        hide_env_values = true
    )]
    pub url: Option<String>,
    /// The API token (never printed).
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "DOPC_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for https:// instead of the system's.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "DOPC_CA",
        hide_env_values = true
    )]
    pub ca: Option<PathBuf>,
    /// Seconds one request may take [default: 30].
    #[arg(long, global = true, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Print JSON (the API's answer) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// A file with `url`, `token` and `ca` (TOML) for what the flags and environment leave
    /// unset [default: ~/.config/dop/dopc-client.toml when it exists].
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "DOPC_CLIENT_CONFIG",
        hide_env_values = true
    )]
    pub client_config: Option<PathBuf>,
}

/// `dopc-client.toml`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    url: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
    timeout: Option<u64>,
}

fn client_file(args: &ClientArgs) -> Result<ClientFile, ClientError> {
    let path = match &args.client_config {
        Some(p) => p.clone(),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".config/dop/dopc-client.toml"),
            None => return Ok(ClientFile::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.client_config.is_none() => {
            return Ok(ClientFile::default())
        }
        Err(e) => return Err(ClientError::Config(format!("{}: {e}", path.display()))),
    };
    let file: ClientFile = toml::from_str(&text)
        .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
    if file.token.is_some() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(ClientError::Config(format!(
                "{} holds a token but others can read it: chmod 600 it",
                path.display()
            )));
        }
    }
    Ok(file)
}

/// `dopc plan …`.
#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Add a plan file (includes are expanded here, before upload).
    Add {
        /// The plan file.
        file: PathBuf,
        /// Store it as the next iteration if the plan exists.
        #[arg(long)]
        force: bool,
    },
    /// Store a plan file as the next iteration of its plan; prints what changed.
    Update {
        /// The plan file (with --clear or --ignore also a stored plan's name: its latest
        /// iteration).
        file: PathBuf,
        /// Remove the plan's dopi step state, so every step is ready again.
        #[arg(long, short = 'c', conflicts_with = "ignore")]
        clear: bool,
        /// Steps whose definition changed keep their dopi state (done work is not run again).
        #[arg(long, short = 'i')]
        ignore: bool,
    },
    /// The stored plans.
    List,
    /// A stored plan's text (secrets masked).
    Get {
        /// The plan.
        name: String,
        /// An iteration (default: the latest).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Every iteration of a plan.
    Versions {
        /// The plan.
        name: String,
    },
    /// What changed between two iterations.
    Diff {
        /// The plan.
        name: String,
        /// From this iteration (default: the one before `--to`).
        #[arg(long)]
        from: Option<u64>,
        /// To this iteration (default: the latest).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Remove a plan and its state (refused while it has executions waiting or running, or
    /// deployed nodes).
    Delete {
        /// The plan.
        name: String,
    },
    /// Put failed (with --force: all) step state back to ready: every step set, one step set
    /// (--stepset) or one step (--step).
    Reset {
        /// The plan.
        name: String,
        /// Done work too.
        #[arg(long)]
        force: bool,
        /// Only this step set (default: every step set; with --step: `default`).
        #[arg(long, short = 's')]
        stepset: Option<String>,
        /// Only this step of the step set: its name, or its number from 1.
        #[arg(long)]
        step: Option<String>,
    },
    /// Per node: in sync, pending (plan changed), drifted (changed behind dopv's back, with
    /// the fields) or unknown (the provider could not be asked), as of the last refresh.
    Drift {
        /// The plan.
        name: String,
        /// Exit 2 when a node is not in sync (0: every node is).
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Show the plan's monitor (schedule, auto-sync policy, last findings), or set it with
    /// --interval (the whole setting is replaced), or go back to dopc.toml's with --clear.
    Monitor(MonitorArgs),
    /// The plan's combined dopv and dopi state.
    State {
        /// The plan.
        name: String,
        /// Print it again on every change (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
    },
}

/// `dopc plan monitor`.
#[derive(Args, Debug, Clone)]
pub struct MonitorArgs {
    /// The plan.
    pub name: String,
    /// Refresh every this many seconds (sets the monitor through the API).
    #[arg(long, value_name = "SECS", conflicts_with = "clear")]
    pub interval: Option<u64>,
    /// Queue a sync when a refresh finds drift or pending changes (default: report only).
    #[arg(long, requires = "interval")]
    pub auto_sync: bool,
    /// The auto-sync may destroy and redeploy.
    #[arg(long, requires = "auto_sync")]
    pub destructive: bool,
    /// The auto-sync may reboot.
    #[arg(long, requires = "auto_sync")]
    pub interruptive: bool,
    /// The auto-sync does not run the step set afterwards.
    #[arg(long, requires = "auto_sync")]
    pub no_run: bool,
    /// Switch the monitor off (overrides dopc.toml until --clear).
    #[arg(long, requires = "interval")]
    pub off: bool,
    /// Remove the API setting: dopc.toml's applies again.
    #[arg(long)]
    pub clear: bool,
}

impl MonitorArgs {
    /// The setting the flags ask for, if they ask for one.
    fn settings(&self) -> Option<crate::api::MonitorSettings> {
        Some(crate::api::MonitorSettings {
            enabled: !self.off,
            interval_secs: self.interval?,
            auto_sync: crate::api::AutoSync {
                enabled: self.auto_sync,
                destructive: self.destructive,
                interruptive: self.interruptive,
                run: !self.no_run,
            },
        })
    }
}

/// Options of a task (as the API's).
#[derive(Args, Debug, Clone, Default)]
pub struct TaskArgs {
    /// The plan.
    pub plan: String,
    /// dopi's step set (run, setup, sync: default `default`; reset: only this one, default
    /// every step set).
    #[arg(long, short = 's')]
    pub stepset: Option<String>,
    /// reset: only this step of the step set (--stepset, else `default`): its name, or its
    /// number from 1.
    #[arg(long)]
    pub step: Option<String>,
    /// Nodes to include: names or /regex/, comma-separated.
    #[arg(long)]
    pub nodes: Option<String>,
    /// Roles to include.
    #[arg(long)]
    pub roles: Option<String>,
    /// Nodes to leave out.
    #[arg(long)]
    pub exclude_nodes: Option<String>,
    /// Roles to leave out.
    #[arg(long)]
    pub exclude_roles: Option<String>,
    /// Show what would be done; change nothing.
    #[arg(long, short = 'n')]
    pub noop: bool,
    /// sync: also destroy and redeploy.
    #[arg(long)]
    pub destructive: bool,
    /// sync: also reboot.
    #[arg(long)]
    pub interruptive: bool,
    /// undeploy, teardown: delete data disks.
    #[arg(long)]
    pub rmdisk: bool,
    /// reset: done work too.
    #[arg(long)]
    pub force: bool,
    /// Stream the execution's log until it ends, and exit with its result.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

impl TaskArgs {
    fn options(&self) -> ExecOptions {
        ExecOptions {
            step_set: self.stepset.clone(),
            nodes: self.nodes.clone(),
            roles: self.roles.clone(),
            exclude_nodes: self.exclude_nodes.clone(),
            exclude_roles: self.exclude_roles.clone(),
            noop: self.noop,
            destructive: self.destructive,
            interruptive: self.interruptive,
            rmdisk: self.rmdisk,
            force: self.force,
            step: self.step.clone(),
            ..ExecOptions::default()
        }
    }
}

/// `dopc execution …`.
#[derive(Subcommand, Debug)]
pub enum ExecutionCommand {
    /// Executions, oldest first (with --limit: the newest N; page back with --before, forward
    /// with --since).
    List {
        /// Only this plan's.
        #[arg(long)]
        plan: Option<String>,
        /// Only those with this status (new, queued, running, done, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Only executions with a smaller id (the first id of the previous page).
        #[arg(long, value_name = "ID")]
        before: Option<u64>,
        /// Only executions with a larger id; with --limit, the oldest N after it.
        #[arg(long, value_name = "ID")]
        since: Option<u64>,
    },
    /// One execution.
    Get {
        /// The execution.
        id: u64,
    },
    /// An execution's log: whole, one node's, by level; --follow streams it live.
    Log {
        /// The execution.
        id: u64,
        /// One node's log.
        #[arg(long)]
        node: Option<String>,
        /// That level and above: debug, info, warn, error.
        #[arg(long)]
        level: Option<String>,
        /// Stream events live until the execution ends (resuming after disconnects), and exit
        /// with its result.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Remove a finished execution and its logs.
    Remove {
        /// The execution.
        id: u64,
    },
    /// Remove finished executions by status (and plan, age).
    Clear {
        /// Statuses to remove: done, failed, cancelled (repeatable).
        #[arg(long = "status", required = true)]
        statuses: Vec<String>,
        /// Only this plan's.
        #[arg(long)]
        plan: Option<String>,
        /// Only those finished at least this many seconds ago.
        #[arg(long)]
        age: Option<u64>,
    },
    /// Cancel: a waiting execution at once; a running one gracefully, then (again, or with
    /// --force) terminating its commands, then killing them.
    Cancel {
        /// The execution.
        id: u64,
        /// Terminate running commands now.
        #[arg(long)]
        force: bool,
    },
    /// dopv deploy.
    Deploy(TaskArgs),
    /// dopv undeploy.
    Undeploy(TaskArgs),
    /// dopi run.
    Run(TaskArgs),
    /// dopv deploy, then dopi run.
    Setup(TaskArgs),
    /// dopv undeploy, then dopi reset.
    Teardown(TaskArgs),
    /// dopv sync, then dopi run.
    Sync(TaskArgs),
    /// dopi reset.
    Reset(TaskArgs),
    /// dopv refresh: ask the providers how the nodes are and record it; change nothing.
    Refresh(TaskArgs),
}

/// Output streams and the client.
pub struct Session<'a> {
    /// The client.
    pub client: Client,
    /// Print JSON.
    pub json: bool,
    /// Results.
    pub out: &'a mut dyn Write,
    /// Messages.
    pub err: &'a mut dyn Write,
}

/// The client commands (of `dopc-client`, and the same under `dopc`).
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Ask the server whether it answers.
    Ping,
    /// The server's metrics (Prometheus text, as `/api/v1/metrics` serves them).
    Metrics,
    /// Plans on the server.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Executions on the server: start tasks, follow logs, cancel, clean up.
    #[command(subcommand)]
    Execution(ExecutionCommand),
}

/// Runs a client command to its end on a runtime of its own; returns the exit status.
pub fn run(
    args: &ClientArgs,
    command: &ClientCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let client = match client(args) {
        Ok(c) => c,
        Err(e) => return failed(err, &e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the runtime: {e}");
            return 1;
        }
    };
    let mut session = Session {
        client,
        json: args.json,
        out,
        err,
    };
    runtime.block_on(async {
        match command {
            ClientCommand::Ping => ping(&mut session).await,
            ClientCommand::Metrics => metrics(&mut session).await,
            ClientCommand::Plan(c) => plan(&mut session, c).await,
            ClientCommand::Execution(c) => execution(&mut session, c).await,
        }
    })
}

/// The client for the arguments: flags, then environment, then the client file, then the
/// defaults.
pub fn client(args: &ClientArgs) -> Result<Client, ClientError> {
    let file = client_file(args)?;
    Client::new(ClientConfig {
        url: args
            .url
            .clone()
            .or(file.url)
            .unwrap_or_else(|| ClientConfig::default().url),
        token: args.token.clone().or(file.token).filter(|t| !t.is_empty()),
        ca: args.ca.clone().or(file.ca),
        timeout: Duration::from_secs(args.timeout.or(file.timeout).unwrap_or(30).max(1)),
        retries: 3,
    })
}

/// The exit status for a client error, after saying it in one line.
pub fn failed(err: &mut dyn Write, e: &ClientError) -> u8 {
    let _ = writeln!(err, "error: {e}");
    if let ClientError::Api { findings, .. } = e {
        for finding in findings {
            let line = finding.line.map_or_else(|| "?".into(), |l| l.to_string());
            let _ = writeln!(err, "  {}: {} (line {line})", finding.path, finding.message);
        }
    }
    match e {
        ClientError::Unreachable { .. } | ClientError::Tls { .. } | ClientError::Timeout { .. } => {
            EXIT_UNREACHABLE
        }
        ClientError::Unauthorized(_) => EXIT_UNAUTHORIZED,
        ClientError::Config(_) => EXIT_USAGE,
        _ => 1,
    }
}

/// The answer as JSON with `--json`, else as `text` makes it for people.
fn show<T: serde::Serialize>(s: &mut Session<'_>, value: &T, text: impl FnOnce(&T) -> String) {
    if s.json {
        print_json(s.out, value);
    } else {
        let _ = write!(s.out, "{}", text(value));
    }
}

/// An event for people, as the log files show it.
pub fn event_line(e: &Event) -> String {
    let time = dop_core::time::rfc3339(e.time_ms);
    let level = e.level.to_string().to_uppercase();
    match &e.node {
        Some(n) => format!("{time} {level:<5} [{n}] {}\n", e.message),
        None => format!("{time} {level:<5} {}\n", e.message),
    }
}

fn status_code(status: Status) -> u8 {
    match status {
        Status::Done => 0,
        Status::Cancelled => EXIT_CANCELLED,
        _ => 1,
    }
}

/// Streams an execution's events to `out` until it ends; returns the exit status.
async fn follow(s: &mut Session<'_>, id: u64) -> u8 {
    let json = s.json;
    let out = &mut *s.out;
    let result = s
        .client
        .follow(id, 0, Duration::from_secs(120), |event| {
            if json {
                let _ = writeln!(out, "{}", serde_json::to_string(event).unwrap_or_default());
            } else {
                let _ = write!(out, "{}", event_line(event));
            }
            let _ = out.flush();
        })
        .await;
    match result {
        Ok(status) => {
            let _ = writeln!(s.err, "execution {id} {}", status.name());
            status_code(status)
        }
        Err(e) => failed(s.err, &e),
    }
}

fn execution_line(e: &crate::api::Execution) -> String {
    format!(
        "{:>5}  {:<10} {:<9} {:<20} {}{}\n",
        e.id,
        e.status.name(),
        e.task.name(),
        e.plan,
        e.created_at,
        e.error
            .as_ref()
            .map(|m| format!("  {m}"))
            .unwrap_or_default()
    )
}

/// The plan file's text with its includes expanded, and the plan's name; or, ready to print,
/// every finding (each an `error: …` block) and what happened.
fn plan_file(file: &std::path::Path) -> Result<(String, String), String> {
    let loaded = dop_core::load_file(file, &dop_core::LookupSettings::default());
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    match (loaded.expanded, loaded.plan) {
        (Some(expanded), Some(plan)) if errors.is_empty() => Ok((expanded.text, plan.name)),
        _ if !errors.is_empty() => Err(format!(
            "{}\nerror: {} is not valid; nothing was sent",
            errors.join("\n"),
            file.display()
        )),
        _ => Err(format!("error: {} cannot be read", file.display())),
    }
}

/// [`plan_file`], its problems written to standard error (`None`: nothing is to be sent).
fn read_plan_file(s: &mut Session<'_>, file: &std::path::Path) -> Option<(String, String)> {
    plan_file(file)
        .map_err(|message| {
            let _ = writeln!(s.err, "{message}");
        })
        .ok()
}

/// `dopc plan update` for people: what was stored, what changed, what the state got.
fn stored_text(v: &PlanStored) -> String {
    let mut t = format!(
        "{} plan '{}' (iteration {})\n",
        v.status.name(),
        v.name,
        v.iteration.number
    );
    if let Some(diff) = &v.diff {
        t.push_str(&format!(
            "{}\n",
            serde_json::to_string(&diff.changes).unwrap_or_default()
        ));
    }
    if let Some(state) = &v.state {
        t.push_str(&format!("{state}\n"));
    }
    t
}

/// `dopc ping`.
pub async fn ping(s: &mut Session<'_>) -> u8 {
    match s.client.ping().await {
        Ok(v) => {
            let url = s.client.url().to_string();
            show(s, &v, |_| format!("dopc at {url} answers\n"));
            0
        }
        Err(e) => failed(s.err, &e),
    }
}

/// `dopc metrics`: the text as served (also with `--json`: it is not JSON).
pub async fn metrics(s: &mut Session<'_>) -> u8 {
    match s.client.metrics().await {
        Ok(text) => {
            let _ = write!(s.out, "{text}");
            0
        }
        Err(e) => failed(s.err, &e),
    }
}

/// `dopc plan …`.
pub async fn plan(s: &mut Session<'_>, command: &PlanCommand) -> u8 {
    let mut status = 0;
    let result = match command {
        PlanCommand::Add { file, force } => {
            // Read and checked here; the name is the plan's own.
            let Some((text, _)) = read_plan_file(s, file) else {
                return 1;
            };
            s.client.add_plan(&text, *force).await.map(|v| {
                show(s, &v, |v| {
                    format!(
                        "{} plan '{}' as iteration {}\n",
                        v.status.name(),
                        v.name,
                        v.iteration.number
                    )
                });
            })
        }
        PlanCommand::Update {
            file,
            clear,
            ignore,
        } => {
            let (name, upload) = if (*clear || *ignore) && !file.exists() {
                // A stored plan's name, as the original took it: the state change alone.
                let name = file.to_string_lossy().into_owned();
                let upload = PlanUpload {
                    plan: Some(name.clone()),
                    ..PlanUpload::default()
                };
                (name, upload)
            } else {
                let Some((text, name)) = read_plan_file(s, file) else {
                    return 1;
                };
                (name, PlanUpload::text(&text, false))
            };
            let upload = PlanUpload {
                clear: *clear,
                ignore: *ignore,
                ..upload
            };
            s.client
                .update_plan(&name, &upload)
                .await
                .map(|v| show(s, &v, stored_text))
        }
        PlanCommand::List => s.client.plans().await.map(|v| {
            show(s, &v, |v| {
                v.plans
                    .iter()
                    .map(|p| {
                        format!(
                            "{:<24} iteration {:<4} {:>5} nodes  updated {}\n",
                            p.name, p.latest, p.nodes, p.updated_at
                        )
                    })
                    .collect()
            });
        }),
        PlanCommand::Get { name, version } => s.client.plan(name, *version).await.map(|v| {
            show(s, &v, |v| v.text.clone());
        }),
        PlanCommand::Versions { name } => s.client.versions(name).await.map(|v| {
            show(s, &v, |v| {
                v.versions
                    .iter()
                    .map(|i| {
                        format!(
                            "{:>4}  {}  {}  {} nodes\n",
                            i.number,
                            dop_core::time::rfc3339(i.time_ms),
                            i.hash.get(..12).unwrap_or(&i.hash),
                            i.nodes
                        )
                    })
                    .collect()
            });
        }),
        PlanCommand::Diff { name, from, to } => s.client.diff(name, *from, *to).await.map(|v| {
            show(s, &v, |v| {
                format!(
                    "iteration {} -> {}\n{}",
                    v.from,
                    v.to,
                    v.text.as_deref().unwrap_or("")
                )
            });
        }),
        PlanCommand::Delete { name } => s.client.delete_plan(name).await.map(|v| {
            show(s, &v, |_| format!("removed plan '{name}'\n"));
        }),
        PlanCommand::Reset {
            name,
            force,
            stepset,
            step,
        } => {
            let request = ResetRequest {
                force: *force,
                step_set: stepset.clone(),
                step: step.clone(),
            };
            s.client.reset(name, &request).await.map(|v| {
                show(s, &v, |v| {
                    format!("{} node record(s) put back to ready\n", v.reset)
                });
            })
        }
        PlanCommand::Drift {
            name,
            detailed_exitcode,
        } => s.client.state(name).await.map(|state| {
            if *detailed_exitcode && !state.all_in_sync() {
                status = 2;
            }
            show(s, &DriftReport::of(&state), drift_text);
        }),
        PlanCommand::Monitor(args) => {
            let answer = if args.clear {
                s.client.set_monitor(&args.name, None).await
            } else if let Some(settings) = args.settings() {
                s.client.set_monitor(&args.name, Some(&settings)).await
            } else {
                s.client.monitor(&args.name).await
            };
            answer.map(|v| show(s, &v, monitor_text))
        }
        PlanCommand::State { name, watch: false } => s.client.state(name).await.map(|v| {
            show(s, &v, state_text);
        }),
        PlanCommand::State { name, watch: true } => {
            let json = s.json;
            let out = &mut *s.out;
            s.client
                .watch_state(name, |v| {
                    if json {
                        let _ = writeln!(out, "{}", serde_json::to_string(v).unwrap_or_default());
                    } else {
                        let _ = writeln!(out, "{}", state_text(v));
                    }
                    out.flush().is_ok()
                })
                .await
        }
    };
    match result {
        Ok(()) => status,
        Err(e) => failed(s.err, &e),
    }
}

/// `dopc plan drift`: each node's standing, without the rest of the plan's state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftReport {
    /// The plan.
    pub plan: String,
    /// Its latest iteration.
    pub iteration: u64,
    /// How many nodes stand where.
    pub sync: SyncCounts,
    /// Per node.
    pub nodes: Vec<NodeDrift>,
}

/// One node of a [`DriftReport`]: its name next to its standing's fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeDrift {
    /// The node.
    pub name: String,
    /// In the newest plan iteration.
    pub in_plan: bool,
    /// Its standing.
    #[serde(flatten)]
    pub sync: NodeSync,
}

impl DriftReport {
    /// The drift part of a plan's state.
    pub fn of(state: &PlanState) -> DriftReport {
        DriftReport {
            plan: state.plan.clone(),
            iteration: state.iteration,
            sync: state.sync,
            nodes: state
                .nodes
                .iter()
                .map(|n| NodeDrift {
                    name: n.name.clone(),
                    in_plan: n.in_plan,
                    sync: n.sync.clone(),
                })
                .collect(),
        }
    }
}

/// `dopc plan drift` for people: one line per node, then its differing fields.
pub fn drift_text(report: &DriftReport) -> String {
    let c = report.sync;
    let mut t = format!(
        "plan '{}': iteration {}; {} in sync, {} pending, {} drifted, {} unknown\n",
        report.plan, report.iteration, c.in_sync, c.pending, c.drifted, c.unknown,
    );
    for n in &report.nodes {
        let mut notes = Vec::new();
        if let Some(reason) = n.sync.reason {
            notes.push(reason.name().to_string());
        }
        if !n.sync.held_back.is_empty() {
            let held: Vec<String> = n.sync.held_back.iter().map(ToString::to_string).collect();
            notes.push(format!("needs {}", held.join(" and ")));
        }
        if let Some(e) = &n.sync.read_error {
            notes.push(e.clone());
        }
        t.push_str(&format!(
            "  {:<28} {:<8} refreshed {:<20} {}\n",
            n.name,
            n.sync.state.name(),
            n.sync.refreshed_at.as_deref().unwrap_or("never"),
            notes.join("; ")
        ));
        for d in &n.sync.drift {
            t.push_str(&format!(
                "      drift {}: {} (deployed: {})\n",
                d.field,
                field_value(&d.field, &d.actual),
                field_value(&d.field, &d.expected)
            ));
        }
        if !n.sync.pending.is_empty() {
            t.push_str(&format!("      pending: {}\n", n.sync.pending.join(", ")));
        }
    }
    t
}

/// `dopc plan monitor` for people.
pub fn monitor_text(doc: &MonitorDocument) -> String {
    let plan = &doc.plan;
    let mut t = match &doc.settings {
        None => format!("plan '{plan}' is not monitored\n"),
        Some(set) => {
            let sync = &set.auto_sync;
            let policy = if sync.enabled {
                let mut allowed = vec!["in place"];
                if sync.interruptive {
                    allowed.push("reboot");
                }
                if sync.destructive {
                    allowed.push("destroy and redeploy");
                }
                format!(
                    "auto-sync on ({}){}",
                    allowed.join(", "),
                    if sync.run { ", then run" } else { "" }
                )
            } else {
                "auto-sync off: report only".to_string()
            };
            format!(
                "plan '{plan}': {} every {} s, {policy} (set in {})\n",
                if set.enabled {
                    "refresh"
                } else {
                    "off; would refresh"
                },
                set.interval_secs,
                doc.source.name()
            )
        }
    };
    let st = &doc.status;
    if let Some(verdict) = &st.verdict {
        t.push_str(&format!(
            "  last check {}: {verdict}\n",
            st.last_checked_at.as_deref().unwrap_or("")
        ));
    }
    if let Some(next) = &st.next_due_at {
        t.push_str(&format!("  next refresh due {next}\n"));
    }
    if st.skipped > 0 {
        t.push_str(&format!(
            "  {} refresh(es) skipped: one was still waiting or running\n",
            st.skipped
        ));
    }
    t
}

/// `null` where a value is unknown, as JSON shows it (the text output always did).
fn or_null<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

/// A plan state document for people.
pub fn state_text(state: &PlanState) -> String {
    let mut t = format!(
        "plan '{}': iteration {}, state serial {}\n",
        state.plan, state.iteration, state.serial
    );
    for n in &state.nodes {
        let power = n.actual.as_ref().and_then(|a| a.power);
        t.push_str(&format!(
            "  {:<28} {:<12} {:<4} generation {}\n",
            n.name,
            n.status.map_or("not deployed", |s| s.name()),
            power.map_or("-", |p| p.name()),
            or_null(n.generation)
        ));
    }
    for set in &state.step_sets {
        t.push_str(&format!(
            "  [{}] step set '{}'\n",
            set.state.name(),
            set.name
        ));
        for step in &set.steps {
            t.push_str(&format!("    [{}] {}\n", step.state.name(), step.name));
        }
    }
    t
}

/// `dopc execution …`.
pub async fn execution(s: &mut Session<'_>, command: &ExecutionCommand) -> u8 {
    let task = |t: Task, a: &TaskArgs| (t, a.clone());
    let (task, args) = match command {
        ExecutionCommand::Deploy(a) => task(Task::Deploy, a),
        ExecutionCommand::Undeploy(a) => task(Task::Undeploy, a),
        ExecutionCommand::Run(a) => task(Task::Run, a),
        ExecutionCommand::Setup(a) => task(Task::Setup, a),
        ExecutionCommand::Teardown(a) => task(Task::Teardown, a),
        ExecutionCommand::Sync(a) => task(Task::Sync, a),
        ExecutionCommand::Reset(a) => task(Task::Reset, a),
        ExecutionCommand::Refresh(a) => task(Task::Refresh, a),
        other => return execution_query(s, other).await,
    };
    let e = match s.client.execute(&args.plan, task, &args.options()).await {
        Ok(e) => e,
        Err(e) => return failed(s.err, &e),
    };
    if !args.follow {
        show(s, &e, |_| {
            format!(
                "execution {} ({} of '{}') is {}\n",
                e.id,
                task.name(),
                e.plan,
                e.status.name()
            )
        });
        return 0;
    }
    let _ = writeln!(
        s.err,
        "execution {} ({} of '{}'); following its log",
        e.id,
        task.name(),
        e.plan
    );
    follow(s, e.id).await
}

async fn execution_query(s: &mut Session<'_>, command: &ExecutionCommand) -> u8 {
    let parse_status = |t: &str| serde_json::from_value::<Status>(serde_json::Value::from(t));
    let result = match command {
        ExecutionCommand::List {
            plan,
            status,
            limit,
            before,
            since,
        } => {
            let status = match status.as_deref().map(parse_status).transpose() {
                Ok(st) => st,
                Err(_) => {
                    let _ = writeln!(s.err, "error: unknown status; use new, queued, running, done, failed or cancelled");
                    return EXIT_USAGE;
                }
            };
            let page = ExecutionPage {
                limit: *limit,
                before: *before,
                since: *since,
            };
            s.client
                .executions(plan.as_deref(), status, &page)
                .await
                .map(|list| {
                    show(s, &list, |_| list.iter().map(execution_line).collect());
                })
        }
        ExecutionCommand::Get { id } => s.client.execution(*id).await.map(|e| {
            show(s, &e, |_| execution_line(&e));
        }),
        ExecutionCommand::Log {
            id, follow: true, ..
        } => return follow(s, *id).await,
        ExecutionCommand::Log {
            id,
            node,
            level,
            follow: false,
        } => s
            .client
            .log(*id, node.as_deref(), level.as_deref())
            .await
            .map(|v| {
                show(s, &v, |v| v.log.clone());
            }),
        ExecutionCommand::Remove { id } => s.client.remove_execution(*id).await.map(|e| {
            show(s, &e, |_| format!("removed execution {}\n", e.id));
        }),
        ExecutionCommand::Clear {
            statuses,
            plan,
            age,
        } => {
            let parsed: Result<Vec<Status>, _> = statuses.iter().map(|t| parse_status(t)).collect();
            let Ok(statuses) = parsed else {
                let _ = writeln!(
                    s.err,
                    "error: unknown status; use done, failed or cancelled"
                );
                return EXIT_USAGE;
            };
            s.client
                .clear(&statuses, plan.as_deref(), *age)
                .await
                .map(|list| {
                    show(s, &list, |_| {
                        format!("removed {} execution(s)\n", list.len())
                    });
                })
        }
        ExecutionCommand::Cancel { id, force } => s.client.cancel(*id, *force).await.map(|e| {
            show(s, &e, |_| {
                format!(
                    "execution {}: {} (cancel requests: {})\n",
                    e.id,
                    e.status.name(),
                    e.cancel_requests
                )
            });
        }),
        _ => Ok(()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => failed(s.err, &e),
    }
}
