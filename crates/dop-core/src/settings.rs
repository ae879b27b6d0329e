//! Global settings every tool shares: where the store and logs live, how roles are found, log
//! levels. Read from `dop.conf` (YAML), with environment variables and flags on top.
//!
//! Precedence, highest first: command-line flag, environment variable (`DOP_STORE_DIR`,
//! `DOP_LOG_DIR`), configuration file, built-in default. Defaults differ for root (system
//! paths) and other users (XDG paths).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::configuration::LookupSettings;
use crate::yaml::{self, Value, Yaml};

/// A log level, with the original's names accepted (`FATAL`, `UNKNOWN` mean error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Failures.
    Error,
    /// Things that are probably wrong.
    Warn,
    /// What is happening.
    Info,
    /// Details.
    Debug,
    /// Everything.
    Trace,
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Level, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "error" | "fatal" | "unknown" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => {
                return Err(format!(
                    "unknown log level '{s}': use error, warn, info, debug or trace"
                ))
            }
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        })
    }
}

/// The settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The plan store directory (`--store-dir`, `DOP_STORE_DIR`).
    pub store_dir: PathBuf,
    /// The PostgreSQL database holding the store instead of sled in `store_dir`
    /// (`store_url: postgres://USER:PASSWORD@HOST:PORT/DATABASE`, `DOP_STORE_URL`,
    /// `--store-url`); `None`: sled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_url: Option<String>,
    /// The log directory (`--log-dir`, `DOP_LOG_DIR`).
    pub log_dir: PathBuf,
    /// The level of the diagnostics on standard error (connections, retries, provider API
    /// calls): `verbosity` in dop.conf, `--verbosity` or `DOP_LOG` (see `GlobalArgs`). The
    /// run logs are not filtered by it: they keep every event, in their stable format.
    pub verbosity: Level,
    /// The configuration variable holding a node's role, and the default role.
    pub lookup: LookupSettings,
    /// Seconds to wait for a node to answer a connection check.
    pub connection_check_timeout: u64,
    /// SSH connections to nodes a run keeps open at once (`max_ssh_connections`; `None`: dopi's
    /// default, 1024, within a third of the open files the process may have).
    pub max_ssh_connections: Option<usize>,
    /// Where the Hiera data for Puppet is written (`hiera_dir`; default `<store_dir>/hiera`).
    pub hiera_dir: Option<PathBuf>,
    /// How long the programs a run starts on this host may take and how much they may say.
    pub limits: ProgramLimits,
}

/// The limits of the programs a run starts on the dopi/dopv host: dopv's hooks, the
/// `content.exec` programs of `file_deploy`, and (for their output) dopi's local commands,
/// whose time limit is the command's own `plugin_timeout`. Nothing a plan starts here runs or
/// writes without an end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramLimits {
    /// Seconds a hook program may run before it is stopped with its process group
    /// (`hook_timeout`).
    pub hook_timeout: u64,
    /// Seconds a `content.exec` program may run (`content_exec_timeout`).
    pub content_exec_timeout: u64,
    /// Bytes of output (both streams together) a hook or local command logs, and the most a
    /// `content.exec` program may give (`max_program_output`).
    pub max_output: u64,
}

impl ProgramLimits {
    /// Ten minutes for a hook.
    pub const HOOK_TIMEOUT: u64 = 600;
    /// A minute for a `content.exec` program.
    pub const CONTENT_EXEC_TIMEOUT: u64 = 60;
    /// 16 MiB of output.
    pub const MAX_OUTPUT: u64 = 16 * 1024 * 1024;

    /// How long a hook may run.
    pub fn hook_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.hook_timeout)
    }

    /// How long a `content.exec` program may run.
    pub fn content_exec_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.content_exec_timeout)
    }
}

impl Default for ProgramLimits {
    fn default() -> ProgramLimits {
        ProgramLimits {
            hook_timeout: ProgramLimits::HOOK_TIMEOUT,
            content_exec_timeout: ProgramLimits::CONTENT_EXEC_TIMEOUT,
            max_output: ProgramLimits::MAX_OUTPUT,
        }
    }
}

/// Facts about the process the defaults depend on.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// Running as root.
    pub root: bool,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `$XDG_DATA_HOME`.
    pub xdg_data_home: Option<PathBuf>,
    /// `$XDG_STATE_HOME`.
    pub xdg_state_home: Option<PathBuf>,
    /// `$DOP_STORE_DIR`.
    pub store_dir: Option<PathBuf>,
    /// `$DOP_STORE_URL`.
    pub store_url: Option<String>,
    /// `$DOP_LOG_DIR`.
    pub log_dir: Option<PathBuf>,
}

impl Environment {
    /// Reads the environment of this process. Root is recognised by the owner of
    /// `/proc/self` (the effective user).
    pub fn of_process() -> Environment {
        use std::os::unix::fs::MetadataExt;
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Environment {
            root: std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0),
            home: var("HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            xdg_data_home: var("XDG_DATA_HOME"),
            xdg_state_home: var("XDG_STATE_HOME"),
            store_dir: var("DOP_STORE_DIR"),
            store_url: std::env::var("DOP_STORE_URL")
                .ok()
                .filter(|v| !v.is_empty()),
            log_dir: var("DOP_LOG_DIR"),
        }
    }

    fn xdg(&self, explicit: &Option<PathBuf>, fallback: &str) -> PathBuf {
        explicit
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(fallback)))
            .unwrap_or_else(|| PathBuf::from(fallback))
    }

    /// The configuration file read when none is named: `/etc/dop/dop.conf` for root, else
    /// `$XDG_CONFIG_HOME/dop/dop.conf`.
    pub fn default_config_file(&self) -> PathBuf {
        if self.root {
            PathBuf::from("/etc/dop/dop.conf")
        } else {
            self.xdg(&self.xdg_config_home, ".config")
                .join("dop/dop.conf")
        }
    }
}

/// Why the configuration file is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("cannot read {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A setting is wrong.
    #[error("{}:{line}: {message}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Its line.
        line: u32,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Where the Hiera data for Puppet goes: `hiera_dir`, or `<store_dir>/hiera`.
    pub fn hiera_dir(&self) -> PathBuf {
        self.hiera_dir
            .clone()
            .unwrap_or_else(|| self.store_dir.join("hiera"))
    }

    /// The built-in defaults.
    pub fn defaults(env: &Environment) -> Config {
        let (store_dir, log_dir) = if env.root {
            (PathBuf::from("/var/lib/dop"), PathBuf::from("/var/log/dop"))
        } else {
            (
                env.xdg(&env.xdg_data_home, ".local/share").join("dop"),
                env.xdg(&env.xdg_state_home, ".local/state").join("dop/log"),
            )
        };
        // The original's facts cache: Puppet's for root, the user's otherwise.
        let facts_dir = if env.root {
            PathBuf::from("/var/lib/puppet/yaml/facts")
        } else {
            env.xdg(&None, ".puppet/var/yaml/facts")
        };
        Config {
            store_dir,
            store_url: None,
            log_dir,
            verbosity: Level::Info,
            lookup: LookupSettings {
                facts_dir: Some(facts_dir),
                ..LookupSettings::default()
            },
            connection_check_timeout: 5,
            max_ssh_connections: None,
            hiera_dir: None,
            limits: ProgramLimits::default(),
        }
    }

    /// The settings for this process: defaults, then the configuration file (`file`, or the
    /// default one if it exists), then the environment.
    pub fn load(env: &Environment, file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = Config::defaults(env);
        let default_file = env.default_config_file();
        let file = match file {
            Some(f) => Some(f.to_path_buf()),
            None => default_file.exists().then_some(default_file),
        };
        if let Some(file) = file {
            let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                file: file.clone(),
                source,
            })?;
            config.apply_file(&file, &text)?;
        }
        if let Some(dir) = &env.store_dir {
            config.store_dir.clone_from(dir);
        }
        if let Some(url) = &env.store_url {
            config.store_url = Some(url.clone());
        }
        if let Some(dir) = &env.log_dir {
            config.log_dir.clone_from(dir);
        }
        Ok(config)
    }

    /// Applies the settings of a configuration file: a YAML mapping whose keys are the global
    /// option names, with dashes or underscores, optionally written as `:symbols` (as the
    /// original's GLI files were).
    fn apply_file(&mut self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let invalid = |line: u32, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            line,
            message,
        };
        let doc =
            yaml::parse(text).map_err(|e| invalid(e.mark.map_or(0, |m| m.line), e.message))?;
        let entries = match &doc.root.value {
            Value::Null => return Ok(()),
            Value::Map(entries) => entries,
            _ => {
                return Err(invalid(
                    1,
                    "the configuration must be a mapping of settings".into(),
                ))
            }
        };
        for (key, value) in entries {
            let name = key.key_text().replace('-', "_");
            let line = key.mark.line;
            let text = |v: &Yaml| match &v.value {
                Value::Str(s) | Value::Sym(s) => Ok(s.clone()),
                Value::Int(i) => Ok(i.to_string()),
                _ => Err(invalid(line, format!("'{name}' must be a string"))),
            };
            let level = |v: &Yaml| text(v)?.parse::<Level>().map_err(|e| invalid(line, e));
            let boolean = |v: &Yaml| match v.value {
                Value::Bool(b) => Ok(b),
                _ => Err(invalid(line, format!("'{name}' must be true or false"))),
            };
            let seconds = |v: &Yaml| match v.value {
                Value::Int(n) if n > 0 => Ok(n.unsigned_abs()),
                _ => Err(invalid(
                    line,
                    format!("'{name}' must be a positive number of seconds"),
                )),
            };
            match name.as_str() {
                "store_dir" | "plan_store_dir" => self.store_dir = PathBuf::from(text(value)?),
                "store_url" => {
                    let url = text(value)?;
                    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                        return Err(invalid(
                            line,
                            "'store_url' must be a PostgreSQL URL \
                             (postgres://USER:PASSWORD@HOST:PORT/DATABASE); remove it to keep \
                             the store in store_dir"
                                .into(),
                        ));
                    }
                    self.store_url = Some(url);
                }
                "log_dir" => self.log_dir = PathBuf::from(text(value)?),
                "hiera_dir" => self.hiera_dir = Some(PathBuf::from(text(value)?)),
                // The original's level of its log files. dop's run logs keep every event (the
                // resume and the server's live stream depend on it), so a level there would
                // either lie or lose events: refused, with the way to the diagnostics.
                "log_level" => {
                    return Err(invalid(
                        line,
                        "'log_level' is not used by dop: the run logs keep every event; for \
                         diagnostics on standard error set 'verbosity' (or DOP_LOG, or \
                         --verbosity); remove this line"
                            .into(),
                    ))
                }
                "verbosity" => self.verbosity = level(value)?,
                "role_variable" => self.lookup.role_variable = text(value)?,
                "role_default" => self.lookup.role_default = Some(text(value)?),
                "connection_check_timeout" => match value.value {
                    Value::Int(n) if n > 0 => self.connection_check_timeout = n.unsigned_abs(),
                    _ => {
                        return Err(invalid(
                            line,
                            "'connection_check_timeout' must be a positive number of seconds"
                                .into(),
                        ))
                    }
                },
                "max_ssh_connections" => match value.value {
                    Value::Int(n) if n > 0 => {
                        self.max_ssh_connections = usize::try_from(n.unsigned_abs()).ok()
                    }
                    _ => {
                        return Err(invalid(
                            line,
                            "'max_ssh_connections' must be a positive number of connections".into(),
                        ))
                    }
                },
                "hook_timeout" => self.limits.hook_timeout = seconds(value)?,
                "content_exec_timeout" => self.limits.content_exec_timeout = seconds(value)?,
                "max_program_output" => {
                    self.limits.max_output = match &value.value {
                        Value::Int(n) if *n > 0 => Ok(n.unsigned_abs()),
                        Value::Str(s) => crate::DataSize::parse(s).map(|d| d.bytes()),
                        _ => Err(crate::DataSizeError::Type(key.key_text())),
                    }
                    .map_err(|e| {
                        invalid(
                            line,
                            format!(
                                "'max_program_output' must be a number of bytes or a size \
                                 such as 16M: {e}"
                            ),
                        )
                    })?
                }
                "use_hiera" => self.lookup.use_hiera = boolean(value)?,
                "hiera_yaml" => self.lookup.hiera_yaml = Some(PathBuf::from(text(value)?)),
                "load_facts" => self.lookup.load_facts = boolean(value)?,
                "facts_dir" => self.lookup.facts_dir = Some(PathBuf::from(text(value)?)),
                // Settings of the original that dop does not use (MCollective, tracing).
                "trace" | "mco_config" | "mco_dopi_logger" | "config_file" => {}
                _ => {
                    return Err(invalid(
                        line,
                        format!("unknown setting '{}'", key.key_text()),
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Environment {
        Environment {
            home: Some(PathBuf::from("/home/op")),
            ..Environment::default()
        }
    }

    #[test]
    fn defaults_depend_on_root() {
        let root = Config::defaults(&Environment {
            root: true,
            ..Environment::default()
        });
        assert_eq!(root.store_dir, Path::new("/var/lib/dop"));
        assert_eq!(root.log_dir, Path::new("/var/log/dop"));
        let op = Config::defaults(&user());
        assert_eq!(op.store_dir, Path::new("/home/op/.local/share/dop"));
        assert_eq!(op.log_dir, Path::new("/home/op/.local/state/dop/log"));
        let xdg = Config::defaults(&Environment {
            xdg_data_home: Some(PathBuf::from("/data")),
            ..user()
        });
        assert_eq!(xdg.store_dir, Path::new("/data/dop"));
        assert_eq!(
            user().default_config_file(),
            Path::new("/home/op/.config/dop/dop.conf")
        );
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dop.conf");
        std::fs::write(&file, ":plan_store_dir: /srv/store\nlog-dir: /srv/log\n:verbosity: WARN\nrole_default: base\n").unwrap();
        let config = Config::load(&user(), Some(&file)).unwrap();
        assert_eq!(config.store_dir, Path::new("/srv/store"));
        assert_eq!(config.log_dir, Path::new("/srv/log"));
        assert_eq!(config.verbosity, Level::Warn);
        assert_eq!(config.lookup.role_default.as_deref(), Some("base"));
        let env = Environment {
            store_dir: Some(PathBuf::from("/env/store")),
            ..user()
        };
        assert_eq!(
            Config::load(&env, Some(&file)).unwrap().store_dir,
            Path::new("/env/store")
        );
    }

    #[test]
    fn the_store_url_comes_from_the_file_then_the_environment_and_must_be_postgresql() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dop.conf");
        std::fs::write(&file, "store_url: postgres://dop:pw@db:5432/dop\n").unwrap();
        let config = Config::load(&user(), Some(&file)).unwrap();
        assert_eq!(
            config.store_url.as_deref(),
            Some("postgres://dop:pw@db:5432/dop")
        );
        assert_eq!(Config::load(&user(), None).unwrap().store_url, None);
        let env = Environment {
            store_url: Some("postgres://other@db2/dop".into()),
            ..user()
        };
        assert_eq!(
            Config::load(&env, Some(&file))
                .unwrap()
                .store_url
                .as_deref(),
            Some("postgres://other@db2/dop")
        );
        std::fs::write(&file, "store_url: /var/lib/dop\n").unwrap();
        let err = Config::load(&user(), Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains(":1: 'store_url' must be a PostgreSQL URL"),
            "{err}"
        );
    }

    #[test]
    fn the_hiera_dir_defaults_to_the_store_and_the_shipped_file_parses() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dop.conf");
        std::fs::write(&file, "store_dir: /srv/store\n").unwrap();
        let config = Config::load(&user(), Some(&file)).unwrap();
        assert_eq!(config.hiera_dir(), Path::new("/srv/store/hiera"));
        // packaging/dop.conf with every example switched on.
        let shipped = include_str!("../../../packaging/dop.conf");
        let on: String = shipped
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(": ").is_some_and(|(key, _)| {
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&file, &on).unwrap();
        let config = Config::load(&user(), Some(&file)).unwrap_or_else(|e| panic!("{e}\n{on}"));
        assert_eq!(config.hiera_dir(), Path::new("/var/lib/dop-hiera"), "{on}");
        assert_eq!(config.connection_check_timeout, 10);
    }

    #[test]
    fn the_originals_hiera_settings_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dop.conf");
        let defaults = Config::load(&user(), None).unwrap();
        assert!(defaults.lookup.use_hiera && !defaults.lookup.load_facts);
        assert_eq!(defaults.lookup.hiera_yaml, None);
        assert_eq!(
            defaults.lookup.facts_dir.as_deref(),
            Some(Path::new("/home/op/.puppet/var/yaml/facts"))
        );
        std::fs::write(
            &file,
            ":use_hiera: false
:hiera_yaml: /etc/puppet/hiera.yaml
:load_facts: true
facts_dir: /srv/facts
",
        )
        .unwrap();
        let config = Config::load(&user(), Some(&file)).unwrap();
        assert!(!config.lookup.use_hiera && config.lookup.load_facts);
        assert_eq!(
            config.lookup.hiera_yaml.as_deref(),
            Some(Path::new("/etc/puppet/hiera.yaml"))
        );
        assert_eq!(
            config.lookup.facts_dir.as_deref(),
            Some(Path::new("/srv/facts"))
        );
        std::fs::write(
            &file,
            "load_facts: maybe
",
        )
        .unwrap();
        let err = Config::load(&user(), Some(&file)).unwrap_err().to_string();
        assert!(err.ends_with("'load_facts' must be true or false"), "{err}");
    }

    #[test]
    fn program_limits_have_defaults_and_are_read_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dop.conf");
        std::fs::write(&file, "log_dir: /x\n").unwrap();
        let config = Config::load(&user(), Some(&file)).unwrap();
        assert_eq!(config.limits, ProgramLimits::default());
        assert_eq!(config.limits.hook_timeout().as_secs(), 600);
        assert_eq!(config.limits.content_exec_timeout().as_secs(), 60);
        assert_eq!(config.limits.max_output, 16 * 1024 * 1024);
        std::fs::write(
            &file,
            "hook_timeout: 5\ncontent_exec_timeout: 7\nmax_program_output: 1M\n",
        )
        .unwrap();
        let config = Config::load(&user(), Some(&file)).unwrap();
        assert_eq!(
            config.limits,
            ProgramLimits {
                hook_timeout: 5,
                content_exec_timeout: 7,
                max_output: 1024 * 1024,
            }
        );
        std::fs::write(&file, "max_program_output: 4096\n").unwrap();
        let config = Config::load(&user(), Some(&file)).unwrap();
        assert_eq!(config.limits.max_output, 4096);
        for (text, expected) in [
            (
                "hook_timeout: 0\n",
                "dop.conf:1: 'hook_timeout' must be a positive number of seconds",
            ),
            (
                "log_dir: /x\ncontent_exec_timeout: soon\n",
                "dop.conf:2: 'content_exec_timeout' must be a positive number of seconds",
            ),
            (
                "max_program_output: lots\n",
                "dop.conf:1: 'max_program_output' must be a number of bytes or a size such as 16M",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = Config::load(&user(), Some(&file)).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn bad_files_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dop.conf");
        std::fs::write(&file, "log_dir: /x\nlog_levle: debug\n").unwrap();
        let err = Config::load(&user(), Some(&file)).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("dop.conf:2: unknown setting 'log_levle'"),
            "{err}"
        );
        std::fs::write(&file, "verbosity: loud\n").unwrap();
        let err = Config::load(&user(), Some(&file)).unwrap_err();
        assert!(
            err.to_string().contains("unknown log level 'loud'"),
            "{err}"
        );
        // The original's log_level would filter nothing here: refused, with where to go.
        std::fs::write(&file, "log_dir: /x\n:log_level: WARN\n").unwrap();
        let err = Config::load(&user(), Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("dop.conf:2: 'log_level' is not used by dop"),
            "{err}"
        );
        assert!(err.contains("set 'verbosity'"), "{err}");
        let missing = Config::load(&user(), Some(&dir.path().join("nope"))).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }));
    }
}
