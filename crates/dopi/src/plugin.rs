//! The plugin interface: a plugin checks its own parameters (so `validate` can name bad ones
//! with their plan path) and runs a command for one node. Local plugins live in `plugins/`;
//! the SSH plugins implement the same trait.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dop_core::plan::Node;
use serde_json::{Map, Value};
use tokio::sync::watch;

use dop_run::logs::NodeLog;
use dop_run::Stop;

/// The options of a command: its own keys over the plugin defaults in force.
pub type CommandOptions = Map<String, Value>;

/// A problem with a plugin parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamProblem {
    /// The parameter (empty for the command as a whole).
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// A warning (unknown key) rather than an error.
    pub warning: bool,
}

impl ParamProblem {
    /// An error about `key`.
    pub fn error(key: &str, message: impl Into<String>) -> ParamProblem {
        ParamProblem {
            key: key.to_string(),
            message: message.into(),
            warning: false,
        }
    }
}

/// Everything a plugin needs to run one command on one node.
pub struct CommandContext<'a> {
    /// The plan's name.
    pub plan: &'a str,
    /// The node.
    pub node: &'a Node,
    /// The step's name.
    pub step: &'a str,
    /// The effective options.
    pub options: &'a CommandOptions,
    /// When the command must be stopped.
    pub timeout: Duration,
    /// The node's log.
    pub log: Arc<NodeLog>,
    /// The run's stop requests.
    pub stop: watch::Receiver<Stop>,
    /// The plan's credentials.
    pub credentials: &'a [dop_core::plan::Credential],
    /// The plan's nodes (a command may run on another node than the one it is for).
    pub nodes: &'a [Node],
    /// The run's SSH connections.
    pub ssh: Arc<crate::ssh::SshPool>,
    /// Where nodes listen (what dopv recorded, the infrastructures' SSH ports).
    pub reach: &'a Reach,
    /// The limits of the programs a command starts on this host (`dop.conf`).
    pub limits: dop_core::ProgramLimits,
}

/// Where the plan's nodes are reached: the address and port dopv recorded when it deployed
/// them, else the infrastructure's `ssh_port`.
#[derive(Clone, Debug, Default)]
pub struct Reach {
    /// dopv's deployed nodes.
    pub deployed: std::collections::BTreeMap<String, dop_run::deployment::Deployed>,
    /// `ssh_port` by infrastructure.
    pub ports: std::collections::HashMap<String, u16>,
}

impl Reach {
    /// The view for a plan and dopv's nodes.
    pub fn new(
        plan: &dop_core::Plan,
        deployed: std::collections::BTreeMap<String, dop_run::deployment::Deployed>,
    ) -> Reach {
        Reach {
            deployed,
            ports: plan
                .infrastructures
                .iter()
                .filter_map(|i| Some((i.name.clone(), i.ssh_port?)))
                .collect(),
        }
    }

    /// The address dopv recorded for the node, and its SSH port (dopv's, else the
    /// infrastructure's).
    pub fn endpoint(&self, node: &Node) -> (Option<String>, Option<u16>) {
        let ssh = self.deployed.get(&node.name).and_then(|d| d.ssh.as_ref());
        (
            ssh.map(|s| s.address.clone()),
            ssh.map(|s| s.port)
                .or_else(|| self.ports.get(&node.infrastructure).copied()),
        )
    }
}

impl CommandContext<'_> {
    /// The same context with another timeout (what is left of it, for a command that runs
    /// several programs).
    pub fn with_timeout(&self, timeout: Duration) -> CommandContext<'_> {
        CommandContext {
            plan: self.plan,
            node: self.node,
            step: self.step,
            options: self.options,
            timeout,
            log: self.log.clone(),
            stop: self.stop.clone(),
            credentials: self.credentials,
            nodes: self.nodes,
            ssh: self.ssh.clone(),
            reach: self.reach,
            limits: self.limits,
        }
    }
}

/// How a command ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutcome {
    /// It succeeded.
    pub success: bool,
    /// The process's exit status, if there was a process and it exited.
    pub exit_status: Option<i32>,
    /// The last lines of output.
    pub output_tail: Vec<String>,
    /// Why it failed (or a note).
    pub message: Option<String>,
    /// A stop signal interrupted it: it goes back to ready, not failed.
    pub interrupted: bool,
}

impl CommandOutcome {
    /// A failure with its reason.
    pub fn failed(message: impl Into<String>) -> CommandOutcome {
        CommandOutcome {
            message: Some(message.into()),
            ..CommandOutcome::default()
        }
    }
}

/// A plugin.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// Its name as plans write it (`custom`, `ssh/custom`).
    fn name(&self) -> &'static str;
    /// The problems of these options (only the keys given; required keys are checked on the
    /// effective options with `required`).
    fn check(&self, options: &CommandOptions) -> Vec<ParamProblem>;
    /// Keys that must be present in the effective options.
    fn required(&self) -> &'static [&'static str] {
        &[]
    }
    /// The `plugin_timeout` when the command sets none, in seconds.
    fn default_timeout(&self) -> u64 {
        dop_core::plan::DEFAULT_PLUGIN_TIMEOUT.unsigned_abs()
    }
    /// What the command would do, for `--noop`.
    fn describe(&self, options: &CommandOptions) -> String;
    /// Runs the command.
    async fn run(&self, ctx: &CommandContext<'_>) -> CommandOutcome;
}

/// Plugins of the original dopi that this dopi does not run (yet): plans that use them stay
/// valid (with a warning), and `run` refuses a step set that needs one before it starts.
pub const NOT_YET_AVAILABLE: [&str; 9] = [
    "winrm/cmd",
    "winrm/powershell",
    "winrm/file_exists",
    "winrm/file_contains",
    "winrm/file_replace",
    "winrm/wait_for_login",
    "winrm/reboot",
    "winrm/puppet_agent_run",
    "mco/rpc",
];

/// The plugins dopi knows, by name.
#[derive(Clone)]
pub struct Registry {
    plugins: BTreeMap<&'static str, Arc<dyn Plugin>>,
}

impl Registry {
    /// The local plugins: `custom`, `dummy`, `noop`.
    pub fn local() -> Registry {
        let mut r = Registry {
            plugins: BTreeMap::new(),
        };
        r.add(Arc::new(crate::plugins::custom::Custom));
        r.add(Arc::new(crate::plugins::dummy::Dummy { name: "dummy" }));
        r.add(Arc::new(crate::plugins::dummy::Dummy { name: "noop" }));
        r.add(Arc::new(crate::plugins::ssh_custom::SshCustom));
        r.add(Arc::new(crate::plugins::ssh_more::FileExists));
        r.add(Arc::new(crate::plugins::ssh_more::FileContains));
        r.add(Arc::new(crate::plugins::ssh_more::WaitForLogin));
        r.add(Arc::new(crate::plugins::ssh_more::FileDeploy));
        r.add(Arc::new(crate::plugins::ssh_more::FileReplace));
        r.add(Arc::new(crate::plugins::ssh_more::Reboot));
        r.add(Arc::new(crate::plugins::puppet::PuppetAgentRun));
        r
    }

    /// Adds (or replaces) a plugin.
    pub fn add(&mut self, plugin: Arc<dyn Plugin>) {
        self.plugins.insert(plugin.name(), plugin);
    }

    /// The plugin called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.plugins.get(name)
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.keys().copied().collect()
    }
}

/// Shared readers of plugin parameters.
pub mod params {
    use super::{CommandOptions, ParamProblem};
    use serde_json::Value;

    /// Warns about keys the plugin does not know (common keys are always known).
    pub fn unknown_keys(options: &CommandOptions, known: &[&str]) -> Vec<ParamProblem> {
        const COMMON: [&str; 2] = ["credentials", "credential"];
        options
            .keys()
            .filter(|k| !known.contains(&k.as_str()) && !COMMON.contains(&k.as_str()))
            .map(|k| ParamProblem {
                key: k.clone(),
                message: format!("unknown parameter '{k}' for this plugin; it is ignored"),
                warning: true,
            })
            .collect()
    }

    /// The text of a scalar.
    pub fn scalar_text(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null => Some(String::new()),
            _ => None,
        }
    }

    /// `arguments`: a string, a list or a mapping (`key value key value`), flattened and
    /// joined with spaces as the original did.
    pub fn arguments(v: Option<&Value>) -> Result<String, String> {
        Ok(match v {
            None => String::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| arguments(Some(i)))
                .collect::<Result<Vec<_>, _>>()?
                .join(" "),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, val)| Ok(format!("{k} {}", arguments(Some(val))?)))
                .collect::<Result<Vec<_>, String>>()?
                .join(" "),
            Some(other) => scalar_text(other).unwrap_or_default(),
        })
    }

    /// `expect_exit_codes`: a number, a list of numbers, or `all`. `None` means all.
    pub fn exit_codes(v: Option<&Value>, default: &[i32]) -> Result<Option<Vec<i32>>, String> {
        match v {
            None => Ok(Some(default.to_vec())),
            Some(Value::String(s)) if matches!(s.as_str(), "all" | "All" | "ALL") => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(|n| Some(vec![n]))
                .ok_or_else(|| format!("{n} is not an exit code")),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| format!("{i} is not an exit code"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(format!(
                "'expect_exit_codes' must be a number, a list of numbers or all, not {other}"
            )),
        }
    }

    /// `parse_output`: `{error: [regex…], warning: [regex…]}`.
    pub fn output_patterns(
        v: Option<&Value>,
    ) -> Result<(Vec<regex::Regex>, Vec<regex::Regex>), String> {
        let Some(v) = v else {
            return Ok((Vec::new(), Vec::new()));
        };
        let Value::Object(map) = v else {
            return Err(
                "'parse_output' must be a mapping with 'error' and/or 'warning' lists".into(),
            );
        };
        let mut lists = (Vec::new(), Vec::new());
        for (key, list) in map {
            let target = match key.as_str() {
                "error" => &mut lists.0,
                "warning" => &mut lists.1,
                other => {
                    return Err(format!(
                        "'parse_output' has an unknown key '{other}'; use error and warning"
                    ))
                }
            };
            let Value::Array(items) = list else {
                return Err(format!(
                    "'parse_output.{key}' must be a list of regular expressions"
                ));
            };
            for item in items {
                let Some(text) = item.as_str() else {
                    return Err(format!("'parse_output.{key}' entries must be strings"));
                };
                target.push(regex::Regex::new(text).map_err(|e| {
                    // The regex crate's message ends with a line saying what is wrong.
                    let reason = e.to_string();
                    let reason = reason.lines().last().unwrap_or_default();
                    let reason = reason.trim_start_matches("error: ");
                    format!("'parse_output.{key}': '{text}' is not a valid regular expression: {reason}")
                })?);
            }
        }
        Ok(lists)
    }

    /// `env`: a mapping of variable to scalar.
    pub fn env(v: Option<&Value>) -> Result<Vec<(String, String)>, String> {
        let Some(v) = v else { return Ok(Vec::new()) };
        let Value::Object(map) = v else {
            return Err("'env' must be a mapping of variable names to values".into());
        };
        map.iter()
            .map(|(k, val)| {
                // The name goes into `export NAME=…` in front of a remote command: anything but
                // a shell variable name would be run as shell text.
                let mut chars = k.chars();
                let is_name = chars
                    .next()
                    .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                    && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
                if !is_name {
                    return Err(format!(
                        "'env.{k}' is not a variable name: use letters, digits and '_', not \
                         starting with a digit"
                    ));
                }
                scalar_text(val)
                    .map(|t| (k.clone(), t))
                    .ok_or_else(|| format!("'env.{k}' must be a string or number"))
            })
            .collect()
    }
}
