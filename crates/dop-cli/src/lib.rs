//! Command-line pieces shared by the dop binaries (`dopi`, `dopv`, `dopc`, `dopc-client`,
//! `dop-puppet-autosign`): exit codes, the global flags and logging set-up, the node-selection
//! flags, the `validate`, `plan-nodes` and `completion` commands, so every tool reads plans,
//! filters nodes and fails the same way. With the feature `store`, the commands on the plan
//! store ([`store`]: `plan add|update|…`, `import-store`, `hiera`) and on the execution logs
//! ([`logs`]: `logs prune`). [`shown`] writes node fields for people.
//!
//! The libraries below (dop-core, dop-store, dop-run) know nothing of clap; this crate is the
//! one place the binaries' shared flags are spelled.

#[cfg(feature = "store")]
pub mod logs;
pub mod shown;
#[cfg(feature = "store")]
pub mod store;

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use dop_core::{load_file, Loaded};
use dop_core::{Config, ConfigError, Environment, Level};
use dop_core::{FilterError, FilterFlags, NodeFacts, NodeFilter};
use dop_core::{LookupSettings, Resolver};

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: the plan is invalid or the command failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: the command line is wrong (sysexits' `EX_USAGE`). Not clap's default 2, which
/// `--detailed-exitcode` uses for "changes pending": a mistyped flag must not read as that.
pub const EXIT_USAGE: u8 = 64;
/// What `--version` prints after the tool's name: the version, the git commit and the build
/// profile it was built from (`0.1.0 (commit 1a2b3c4d5e6f, release build)`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DOP_GIT_COMMIT"),
    ", ",
    env!("DOP_BUILD_PROFILE"),
    " build)"
);

/// Exit status: the plan is locked by another process (or the store is busy); try again later.
pub const EXIT_LOCKED: u8 = 3;

/// The node-selection flags. With no include flag every node is selected, so excludes alone
/// mean "all except". Lists are comma-separated; a `/regex/` may contain commas.
#[derive(Args, Clone, Debug, Default)]
pub struct NodeFilterArgs {
    /// Nodes to include: names or /regex/, comma-separated; `all` alone selects every node.
    #[arg(long, value_name = "LIST", alias = "node")]
    pub nodes: Option<String>,
    /// Roles to include: names or /regex/, comma-separated.
    #[arg(long, value_name = "LIST", alias = "role")]
    pub roles: Option<String>,
    /// Nodes to leave out: names or /regex/, comma-separated.
    #[arg(long, value_name = "LIST", alias = "exclude_nodes")]
    pub exclude_nodes: Option<String>,
    /// Roles to leave out: names or /regex/, comma-separated.
    #[arg(long, value_name = "LIST", alias = "exclude_roles")]
    pub exclude_roles: Option<String>,
    /// Include nodes by configuration value: JSON such as '{"role": ["web", "/db/"]}'.
    #[arg(long, value_name = "JSON", alias = "nodes_by_config")]
    pub nodes_by_config: Option<String>,
    /// Leave out nodes by configuration value: JSON such as '{"env": "test"}'.
    #[arg(long, value_name = "JSON", alias = "exclude_nodes_by_config")]
    pub exclude_nodes_by_config: Option<String>,
}

impl NodeFilterArgs {
    /// The filter the flags describe.
    pub fn to_filter(&self) -> Result<NodeFilter, FilterError> {
        NodeFilter::from_flags(&FilterFlags {
            nodes: self.nodes.as_deref(),
            roles: self.roles.as_deref(),
            exclude_nodes: self.exclude_nodes.as_deref(),
            exclude_roles: self.exclude_roles.as_deref(),
            nodes_by_config: self.nodes_by_config.as_deref(),
            exclude_nodes_by_config: self.exclude_nodes_by_config.as_deref(),
        })
    }
}

/// Options every command of every tool takes.
#[derive(Args, Clone, Debug, Default)]
pub struct GlobalArgs {
    /// The configuration file (default: /etc/dop/dop.conf for root, else
    /// ~/.config/dop/dop.conf, when it exists).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "DOP_CONFIG",
        hide_env_values = true
    )]
    pub config: Option<PathBuf>,
    /// The plan store directory [default: /var/lib/dop for root, else ~/.local/share/dop].
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "DOP_STORE_DIR",
        hide_env_values = true,
        alias = "plan_store_dir"
    )]
    pub store_dir: Option<PathBuf>,
    /// Keep the store in this PostgreSQL database instead of sled in the store directory
    /// (postgres://USER:PASSWORD@HOST:PORT/DATABASE) [default: `store_url` in dop.conf, else
    /// none].
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "DOP_STORE_URL",
        hide_env_values = true
    )]
    pub store_url: Option<String>,
    /// Where execution logs go [default: /var/log/dop for root, else ~/.local/state/dop/log].
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "DOP_LOG_DIR",
        hide_env_values = true,
        alias = "log_dir"
    )]
    pub log_dir: Option<PathBuf>,
    /// Diagnostics on standard error from this level up: error, warn, info, debug (connection
    /// attempts, retries, provider API calls) or trace [default: `verbosity` in dop.conf, else
    /// info]. Never written into the run logs.
    #[arg(
        long,
        global = true,
        value_name = "LEVEL",
        env = "DOP_LOG",
        hide_env_values = true
    )]
    pub verbosity: Option<Level>,
}

impl GlobalArgs {
    /// The settings: defaults, configuration file, environment, these flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(&Environment::of_process(), self.config.as_deref())?;
        if let Some(dir) = &self.store_dir {
            config.store_dir.clone_from(dir);
        }
        if let Some(url) = self.store_url.as_ref().filter(|u| !u.is_empty()) {
            config.store_url = Some(url.clone());
        }
        if let Some(dir) = &self.log_dir {
            config.log_dir.clone_from(dir);
        }
        if let Some(level) = self.verbosity {
            config.verbosity = level;
        }
        Ok(config)
    }
}

/// How roles are found: the configuration variable and the default.
#[derive(Args, Clone, Debug, Default)]
pub struct LookupArgs {
    /// The configuration variable that holds a node's role [default: role, or dop.conf's].
    #[arg(long, value_name = "NAME", alias = "role_variable")]
    pub role_variable: Option<String>,
    /// The role of nodes that have none in the configuration [default: dop.conf's, else `-`].
    #[arg(long, value_name = "ROLE", alias = "role_default")]
    pub role_default: Option<String>,
    /// The site's Hiera 5 configuration, asked for roles before the plan's configuration
    /// [default: dop.conf's `hiera_yaml`, else none].
    #[arg(long, value_name = "FILE", alias = "hiera_yaml")]
    pub hiera_yaml: Option<PathBuf>,
    /// Look no roles up: every node has the default role (the original's --no-use_hiera).
    #[arg(long, alias = "no-use_hiera")]
    pub no_use_hiera: bool,
    /// Feed the nodes' facts from the facts directory into the site Hiera's interpolations.
    #[arg(long, alias = "load_facts")]
    pub load_facts: bool,
    /// The Puppet facts cache, `<fqdn>.yaml` per node [default: dop.conf's `facts_dir`, else
    /// /var/lib/puppet/yaml/facts for root, ~/.puppet/var/yaml/facts otherwise].
    #[arg(long, value_name = "DIR", alias = "facts_dir")]
    pub facts_dir: Option<PathBuf>,
}

impl LookupArgs {
    /// The lookup settings: these flags over the configuration's.
    pub fn settings(&self, config: &Config) -> LookupSettings {
        let mut settings = config.lookup.clone();
        if let Some(v) = &self.role_variable {
            settings.role_variable.clone_from(v);
        }
        if let Some(d) = &self.role_default {
            settings.role_default = Some(d.clone());
        }
        if let Some(f) = &self.hiera_yaml {
            settings.hiera_yaml = Some(f.clone());
        }
        if self.no_use_hiera {
            settings.use_hiera = false;
        }
        if self.load_facts {
            settings.load_facts = true;
        }
        if let Some(d) = &self.facts_dir {
            settings.facts_dir = Some(d.clone());
        }
        settings
    }
}

/// `validate PLANFILE`: check a plan and report every problem.
#[derive(Args, Clone, Debug)]
pub struct ValidateArgs {
    /// The plan file (includes are expanded).
    #[arg(value_name = "PLANFILE")]
    pub plan_file: PathBuf,
    /// Print the findings as a JSON array of {file, path, line, column, message, severity}.
    #[arg(long)]
    pub json: bool,
    /// Treat warnings as errors.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lookup: LookupArgs,
}

/// `plan-nodes PLANFILE [filters]`: list the nodes a filter selects, without running anything.
#[derive(Args, Clone, Debug)]
pub struct PlanNodesArgs {
    /// The plan file.
    #[arg(value_name = "PLANFILE")]
    pub plan_file: PathBuf,
    /// Print the nodes as a JSON array of {name, fqdn, role, infrastructure}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub filter: NodeFilterArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lookup: LookupArgs,
}

/// Runs `validate`, writing the report to `out` and findings to `err`; returns the exit status.
pub fn validate(
    args: &ValidateArgs,
    config: &Config,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    validate_with(args, config, &|_| Vec::new(), out, err)
}

/// A tool's own checks of a valid plan (dopi: plugins and their parameters), as findings.
pub type PlanCheck<'a> = &'a dyn Fn(&dop_core::Plan) -> Vec<dop_core::Diagnostic>;

/// Runs `validate` with a tool's own checks added to the plan's.
pub fn validate_with(
    args: &ValidateArgs,
    config: &Config,
    check: PlanCheck<'_>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let mut loaded = load_file(&args.plan_file, &args.lookup.settings(config));
    add_checks(&mut loaded, &args.plan_file, check);
    let failed = !loaded.is_valid() || (args.strict && loaded.warnings().next().is_some());
    let status = if failed { EXIT_FAILURE } else { EXIT_OK };
    if args.json {
        print_json(out, &loaded.diagnostics);
        return status;
    }
    report_findings(&loaded, err);
    match &loaded.plan {
        Some(plan) if !failed => {
            let _ = writeln!(out, "{}", plan.summary());
        }
        _ => {
            let errors = loaded.errors().count();
            let warnings = loaded.warnings().count();
            let _ = writeln!(
                err,
                "error: {} is not valid: {errors} error{}, {warnings} warning{}",
                args.plan_file.display(),
                if errors == 1 { "" } else { "s" },
                if warnings == 1 { "" } else { "s" },
            );
        }
    }
    status
}

/// Adds a tool's findings about a valid plan; errors among them make it invalid.
pub fn add_checks(loaded: &mut Loaded, file: &std::path::Path, check: PlanCheck<'_>) {
    let Some(plan) = &loaded.plan else { return };
    let mut found = check(plan);
    for d in &mut found {
        d.file.get_or_insert_with(|| file.to_path_buf());
    }
    if found.iter().any(dop_core::Diagnostic::is_error) {
        loaded.plan = None;
    }
    loaded.diagnostics.extend(found);
    loaded.diagnostics.sort_by_key(|d| d.severity);
}

/// Writes every finding, one blank line apart.
fn report_findings(loaded: &Loaded, err: &mut dyn Write) {
    for d in &loaded.diagnostics {
        let _ = writeln!(err, "{d}\n");
    }
}

/// One line of `plan-nodes --json`.
#[derive(Serialize)]
struct SelectedNode<'a> {
    name: &'a str,
    fqdn: &'a str,
    role: &'a str,
    infrastructure: &'a str,
}

/// Runs `plan-nodes`; returns the exit status.
pub fn plan_nodes(
    args: &PlanNodesArgs,
    config: &Config,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let filter = match args.filter.to_filter() {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_USAGE;
        }
    };
    let settings = args.lookup.settings(config);
    let loaded = load_file(&args.plan_file, &settings);
    let Some(plan) = &loaded.plan else {
        for d in loaded.errors() {
            let _ = writeln!(err, "{d}\n");
        }
        let _ = writeln!(
            err,
            "error: {} is not valid; run `validate` for details",
            args.plan_file.display()
        );
        return EXIT_FAILURE;
    };
    let resolver = match Resolver::new(plan, &settings) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let selection = filter.select(&resolver);
    for pattern in &selection.unmatched {
        let _ = writeln!(err, "warning: {pattern} does not match any node");
    }
    let nodes: Vec<SelectedNode<'_>> = selection
        .nodes
        .iter()
        .map(|&i| SelectedNode {
            name: &plan.nodes[i].name,
            fqdn: &plan.nodes[i].fqdn,
            role: resolver.role(i),
            infrastructure: &plan.nodes[i].infrastructure,
        })
        .collect();
    if args.json {
        print_json(out, &nodes);
    } else if !nodes.is_empty() {
        let wn = nodes.iter().map(|n| n.name.len()).max().unwrap_or(0).max(4);
        let wr = nodes.iter().map(|n| n.role.len()).max().unwrap_or(0).max(4);
        let _ = writeln!(out, "{:wn$}  {:wr$}  INFRASTRUCTURE", "NODE", "ROLE");
        for n in &nodes {
            let _ = writeln!(out, "{:wn$}  {:wr$}  {}", n.name, n.role, n.infrastructure);
        }
    } else {
        let _ = writeln!(err, "no node matches the filter");
    }
    EXIT_OK
}

/// `completion SHELL`: the shell completion script of a tool, for installs from source (the
/// packages install it).
#[derive(clap::Args, Debug, Clone)]
pub struct CompletionArgs {
    /// The shell: bash, zsh, fish, elvish or powershell. Example: `dopi completion bash >
    /// /etc/bash_completion.d/dopi`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Prints the completion script of the tool whose command line is `C`.
pub fn completion<C: clap::CommandFactory>(args: &CompletionArgs, out: &mut dyn Write) -> u8 {
    let mut command = C::command();
    let name = command.get_name().to_string();
    // Into a buffer first: clap_complete panics when its writer fails (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    match out.write_all(&script) {
        Ok(()) => EXIT_OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(_) => EXIT_FAILURE,
    }
}

/// Parses the command line of a tool. `--help` and `--version` print and exit 0; a wrong
/// command line prints clap's message and exits [`EXIT_USAGE`].
pub fn parse<C: clap::Parser>() -> C {
    parse_from(std::env::args_os())
}

/// [`parse`] from given arguments (the first is the program's name).
pub fn parse_from<C, I, T>(args: I) -> C
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match C::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to standard output and are not errors.
            let status = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            std::process::exit(i32::from(status))
        }
    }
}

/// Sends the tools' `tracing` diagnostics to standard error from `level` up, in colour only
/// on a terminal without `NO_COLOR` or `TERM=dumb`. The first call wins (a library may call
/// it again).
pub fn init_diagnostics(level: Level) {
    let max = match level {
        Level::Error => tracing::Level::ERROR,
        Level::Warn => tracing::Level::WARN,
        Level::Info => tracing::Level::INFO,
        Level::Debug => tracing::Level::DEBUG,
        Level::Trace => tracing::Level::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour(&std::io::stderr()))
        .with_max_level(max)
        .try_init();
}

/// Whether `stream` is a terminal that can redraw a line in place (not `TERM=dumb`).
pub fn redraws(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// Whether to colour what goes to `stream`: a terminal that [`redraws`], and `NO_COLOR`
/// unset (or empty).
pub fn colour(stream: &impl std::io::IsTerminal) -> bool {
    redraws(stream) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Prints a value as pretty JSON and a newline: the `--json` output of every command.
pub fn print_json(out: &mut dyn Write, value: &impl Serialize) {
    let _ = serde_json::to_writer_pretty(&mut *out, value);
    let _ = writeln!(out);
}

/// The body of every binary's `main`: loads the settings (or reports why not), then runs the
/// command with standard output and standard error, and turns its status into the exit code.
pub fn main_with(
    global: &GlobalArgs,
    command: impl FnOnce(&Config, &mut dyn Write, &mut dyn Write) -> u8,
) -> std::process::ExitCode {
    // Not locked for the whole run: other threads (progress lines) write to stderr too.
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let status = match global.load() {
        Ok(config) => {
            init_diagnostics(config.verbosity);
            command(&config, &mut out, &mut err)
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_FAILURE
        }
    };
    std::process::ExitCode::from(status)
}
