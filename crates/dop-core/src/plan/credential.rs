//! Credentials and the content sources their secrets come from (literal, `file`, `exec`).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::check::{mapping, warn_unknown_keys};
use crate::diagnostic::{join, Collector};
use crate::yaml::{Value, Yaml};

/// A named credential of the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    /// The key it is defined under.
    pub name: String,
    /// Its type and fields.
    #[serde(flatten)]
    pub kind: CredentialKind,
}

/// The three credential types.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CredentialKind {
    /// A user name and a password.
    UsernamePassword {
        /// The user (numbers are taken as their text).
        username: String,
        /// The password.
        password: ContentSource,
    },
    /// A Kerberos principal.
    Kerberos {
        /// The realm.
        realm: String,
        /// The service.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        /// The keytab.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keytab: Option<ContentSource>,
    },
    /// An SSH key pair.
    SshKey {
        /// The user.
        username: String,
        /// The private key (needed by dopi to log in).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        private_key: Option<ContentSource>,
        /// The public key (needed by dopv to put it on new nodes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        public_key: Option<ContentSource>,
    },
}

/// Where a secret comes from. Secrets are read only when a tool needs them, never while a plan
/// is validated (validation checks that files exist and programs are executable).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentSource {
    /// The value as written in the plan.
    Literal(String),
    /// The content of a file, with one trailing newline removed.
    File(PathBuf),
    /// The standard output of a program (argv, run without a shell), one trailing newline
    /// removed. The environment is only `HOME` and a fixed `PATH`.
    Exec(Vec<String>),
}

impl fmt::Debug for ContentSource {
    /// Never prints a literal secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentSource::Literal(_) => f.write_str("Literal(****)"),
            ContentSource::File(p) => f.debug_tuple("File").field(p).finish(),
            ContentSource::Exec(argv) => f.debug_tuple("Exec").field(argv).finish(),
        }
    }
}

/// Why a secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is a device, a pipe, a directory or a socket: reading it might never end.
    #[error("{} is not a regular file; a secret's 'file' must name one", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// The file or the program's output is larger than a secret may be.
    #[error("the secret from {from} is larger than {max} bytes; a secret's source must give at most that")]
    TooLarge {
        /// The file or program.
        from: String,
        /// The limit.
        max: u64,
    },
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The program did not end in time; it was killed with its process group.
    #[error("the secret program {program} did not end within {} s and was killed; make it answer sooner", timeout.as_secs())]
    TimedOut {
        /// The program.
        program: String,
        /// The limit.
        timeout: Duration,
    },
    /// The program failed.
    #[error("program '{program}' returned non-zero exit status {status}: {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The output is not text.
    #[error("the secret from {0} is not UTF-8 text")]
    NotText(String),
    /// An `exec` source outside an execution (reading a plan, writing Puppet's data).
    #[error("the secret comes from the program {program}, which runs only inside an execution (dopi run, dopv sync); write it in a file instead")]
    ExecOutsideExecution {
        /// The program.
        program: String,
    },
}

/// The `PATH` secret programs run with, as in the original.
const EXEC_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bounds on reading a secret, so that a plan's source can neither hang nor flood the tool
/// that reads it (`file: /dev/zero`, a program that never ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretLimits {
    /// The most bytes a file or a program's output may have.
    pub max_bytes: u64,
    /// How long a program may run.
    pub exec_timeout: Duration,
}

impl Default for SecretLimits {
    /// 64 KiB (a private key or keytab is a few KiB) and 30 s.
    fn default() -> Self {
        SecretLimits {
            max_bytes: 64 * 1024,
            exec_timeout: Duration::from_secs(30),
        }
    }
}

/// How much of a failing program's standard error an error quotes.
const STDERR_QUOTED: u64 = 4096;

impl ContentSource {
    /// Reads the secret within the default [`SecretLimits`], running an `exec` program. Only
    /// an execution calls this (dopi run, dopv sync); elsewhere use [`Self::load_unless_exec`].
    pub fn load(&self) -> Result<String, ContentError> {
        self.load_within(SecretLimits::default())
    }

    /// Reads a literal or file secret; an `exec` source is refused without running it. For
    /// what happens outside an execution, e.g. Puppet's data written after a plan change.
    pub fn load_unless_exec(&self) -> Result<String, ContentError> {
        match self {
            ContentSource::Exec(argv) => Err(ContentError::ExecOutsideExecution {
                program: argv[0].clone(),
            }),
            _ => self.load(),
        }
    }

    /// Reads the secret within `limits`.
    pub fn load_within(&self, limits: SecretLimits) -> Result<String, ContentError> {
        let from = match self {
            ContentSource::Literal(s) => return Ok(s.clone()),
            ContentSource::File(path) => path.display().to_string(),
            ContentSource::Exec(argv) => argv[0].clone(),
        };
        let mut value = String::from_utf8(self.load_bytes_within(limits)?)
            .map_err(|_| ContentError::NotText(from))?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        Ok(value)
    }

    /// The secret's bytes as its source gives them (a keytab is binary), within `limits`.
    pub fn load_bytes_within(&self, limits: SecretLimits) -> Result<Vec<u8>, ContentError> {
        match self {
            ContentSource::Literal(s) => Ok(s.clone().into_bytes()),
            ContentSource::File(path) => read_bounded(path, limits.max_bytes),
            ContentSource::Exec(argv) => run_bounded(argv, limits),
        }
    }
}

/// Opens a file without blocking (a FIFO would block the open) and checks that it is regular.
fn open_regular(path: &Path) -> Result<std::fs::File, ContentError> {
    use std::os::unix::fs::OpenOptionsExt;
    let read = |source| ContentError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read)?;
    if !file.metadata().map_err(read)?.is_file() {
        return Err(ContentError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// A regular file's content, at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ContentError> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ContentError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > max {
        return Err(ContentError::TooLarge {
            from: path.display().to_string(),
            max,
        });
    }
    Ok(bytes)
}

/// A program's standard output, at most `limits.max_bytes`, within `limits.exec_timeout`; the
/// program runs without a shell, in a process group of its own that is killed when it
/// overruns either limit.
fn run_bounded(argv: &[String], limits: SecretLimits) -> Result<Vec<u8>, ContentError> {
    use std::os::unix::process::CommandExt;
    let program = argv[0].clone();
    let mut cmd = Command::new(&program);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", EXEC_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(home) = std::env::var_os("HOME") {
        cmd.env("HOME", home);
    }
    let mut child = cmd.spawn().map_err(|source| ContentError::Spawn {
        program: program.clone(),
        source,
    })?;
    // Each pipe read on a thread of its own, keeping `max` bytes; standard error is read to
    // its end (the rest dropped) so that a chatty program does not block on it.
    let drain = |pipe: Option<Box<dyn Read + Send>>, max: u64, to_the_end: bool| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.by_ref().take(max).read_to_end(&mut bytes);
                if to_the_end {
                    let _ = std::io::copy(&mut pipe, &mut std::io::sink());
                }
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        limits.max_bytes + 1,
        false,
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        STDERR_QUOTED,
        true,
    );
    let kill_group = |child: &mut std::process::Child| {
        // The group, so that what the program started goes too and the pipes close.
        // SAFETY: kill(2) with a process group id we created; no memory is involved.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = child.wait();
    };
    let deadline = Instant::now() + limits.exec_timeout;
    let mut stdout = Some(stdout);
    let mut out = None;
    let status = loop {
        // Output read to its end or to one byte past the limit: over it, the program is
        // stopped now rather than left blocked on a full pipe until the time limit.
        if stdout.as_ref().is_some_and(|t| t.is_finished()) {
            let bytes = stdout
                .take()
                .and_then(|t| t.join().ok())
                .unwrap_or_default();
            if bytes.len() as u64 > limits.max_bytes {
                kill_group(&mut child);
                return Err(ContentError::TooLarge {
                    from: program,
                    max: limits.max_bytes,
                });
            }
            out = Some(bytes);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                kill_group(&mut child);
                return Err(ContentError::TimedOut {
                    program,
                    timeout: limits.exec_timeout,
                });
            }
            Err(source) => {
                kill_group(&mut child);
                return Err(ContentError::Spawn { program, source });
            }
        }
    };
    // Exited: what is left in the pipe is read by the thread (bounded by the limit). A child
    // of the program that keeps the pipe open is ended with the group.
    let out = match (out, stdout) {
        (Some(bytes), _) => bytes,
        (None, Some(thread)) => {
            if !thread.is_finished() {
                kill_group(&mut child);
            }
            thread.join().unwrap_or_default()
        }
        (None, None) => Vec::new(),
    };
    if out.len() as u64 > limits.max_bytes {
        return Err(ContentError::TooLarge {
            from: program,
            max: limits.max_bytes,
        });
    }
    let err = stderr.join().unwrap_or_default();
    if out.len() as u64 > limits.max_bytes {
        return Err(ContentError::TooLarge {
            from: program,
            max: limits.max_bytes,
        });
    }
    if !status.success() {
        return Err(ContentError::Failed {
            program,
            status: status.code().map_or("signal".into(), |c| c.to_string()),
            stderr: String::from_utf8_lossy(&err).trim().to_string(),
        });
    }
    Ok(out)
}

/// Reads a content source and checks that its file exists and is readable, or that its program
/// is an executable file.
fn parse_content(c: &mut Collector<'_>, v: &Yaml, path: &str, what: &str) -> Option<ContentSource> {
    if let Value::Str(s) = &v.value {
        return Some(ContentSource::Literal(s.clone()));
    }
    let Some(entries) = v.as_map() else {
        c.error(
            v,
            path,
            format!(
                "{what} must be a string or a mapping with 'file' or 'exec', not {} (quote \
                 numeric passwords)",
                v.describe()
            ),
        );
        return None;
    };
    let [(method, arg)] = entries else {
        c.error(
            v,
            path,
            format!("{what} must have exactly one content method, 'file' or 'exec'"),
        );
        return None;
    };
    let method_name = method.key_text();
    let p = join(path, &method_name);
    match method_name.as_str() {
        "file" => {
            let Some(file) = arg.as_str() else {
                c.error(
                    arg,
                    &p,
                    format!("'file' takes one path, not {}", arg.describe()),
                );
                return None;
            };
            // Opened, never read: the secret is read only when a tool needs it.
            match open_regular(Path::new(file)) {
                Ok(_) => Some(ContentSource::File(PathBuf::from(file))),
                Err(e @ ContentError::NotRegular { .. }) => {
                    c.error(arg, &p, e.to_string());
                    None
                }
                Err(ContentError::Read { source, .. }) => {
                    c.error(arg, &p, format!("the file {file} cannot be read: {source}"));
                    None
                }
                Err(e) => {
                    c.error(arg, &p, format!("the file {file} cannot be read: {e}"));
                    None
                }
            }
        }
        "exec" => {
            let argv: Option<Vec<String>> = match &arg.value {
                Value::Seq(items) if !items.is_empty() => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string))
                    .collect(),
                _ => None,
            };
            let Some(argv) = argv else {
                c.error(
                    arg,
                    &p,
                    "'exec' takes a non-empty list of strings: the program and its arguments, \
                     e.g. exec: ['/usr/bin/pass', 'show', 'db']",
                );
                return None;
            };
            if !is_executable(Path::new(&argv[0])) {
                c.error(
                    arg,
                    &p,
                    format!(
                        "the program {} does not exist or is not executable",
                        argv[0]
                    ),
                );
                return None;
            }
            Some(ContentSource::Exec(argv))
        }
        other => {
            c.error(
                method,
                &p,
                format!("'{other}' is not a content method; use 'file' or 'exec'"),
            );
            None
        }
    }
}

/// Checks a name that becomes a login on a machine dop makes (the local provider's nodes): a
/// POSIX portable user name, `[a-z_][a-z0-9_-]*` of at most 32 characters, as `useradd` takes
/// it. Such a name is safe as a file name (`authorized_keys/<name>`), in a line of
/// `chpasswd`'s input and in a shell word.
pub fn check_login_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok =
        bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if first_ok && rest_ok && name.len() <= 32 {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a POSIX user name: a lower-case letter or '_', then lower-case letters, \
             digits, '_' or '-', at most 32 characters",
            name.escape_debug()
        ))
    }
}

/// A username with a control character (a newline above all) would start another line in
/// every file and command that names it.
fn check_username(name: &str) -> Result<(), String> {
    if name.chars().any(char::is_control) {
        Err(format!(
            "the username '{}' holds a control character; a username is one line of text",
            name.escape_debug()
        ))
    } else {
        Ok(())
    }
}

/// True for a regular file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Reads one credential definition.
pub(crate) fn parse(c: &mut Collector<'_>, name: &str, v: &Yaml, path: &str) -> Option<Credential> {
    mapping(c, v, path, "a credential")?;
    let errors = c.error_count();
    let type_path = join(path, "type");
    let kind = match v.get("type").and_then(Yaml::as_str_or_sym) {
        Some(t @ ("username_password" | "kerberos" | "ssh_key")) => t.to_string(),
        Some(t) => {
            c.error(
                v.get("type").unwrap_or(v),
                &type_path,
                format!(
                    "the credential type '{t}' is not one of username_password, kerberos, ssh_key"
                ),
            );
            return None;
        }
        None => {
            c.error(
                v.get("type").unwrap_or(v),
                &type_path,
                "the credential needs a 'type': one of username_password, kerberos, ssh_key",
            );
            return None;
        }
    };
    let fields: &[&str] = match kind.as_str() {
        "username_password" => &["type", "username", "password"],
        "kerberos" => &["type", "realm", "service", "keytab"],
        _ => &["type", "username", "private_key", "public_key"],
    };
    warn_unknown_keys(c, v, path, fields);

    let required = |c: &mut Collector<'_>, key: &str| {
        let found = v.get(key).filter(|x| !x.is_null());
        if found.is_none() {
            c.error(
                v,
                &join(path, key),
                format!("a {key} is required in a {kind} credential"),
            );
        }
        found
    };
    let text = |c: &mut Collector<'_>, x: &Yaml, key: &str, numbers: bool| match &x.value {
        Value::Str(s) if key == "username" => match check_username(s) {
            Ok(()) => Some(s.clone()),
            Err(e) => {
                c.error(x, &join(path, key), e);
                None
            }
        },
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) if numbers => Some(i.to_string()),
        _ => {
            c.error(
                x,
                &join(path, key),
                format!("the {key} must be a string, not {}", x.describe()),
            );
            None
        }
    };
    let content = |c: &mut Collector<'_>, key: &str| {
        v.get(key)
            .filter(|x| !x.is_null())
            .and_then(|x| parse_content(c, x, &join(path, key), &format!("the {key}")))
    };
    let credential = match kind.as_str() {
        "username_password" => {
            let username = required(c, "username").and_then(|u| text(c, u, "username", true));
            let password = required(c, "password")
                .and_then(|p| parse_content(c, p, &join(path, "password"), "the password"));
            CredentialKind::UsernamePassword {
                username: username.unwrap_or_default(),
                password: password.unwrap_or(ContentSource::Literal(String::new())),
            }
        }
        "kerberos" => {
            let realm = required(c, "realm").and_then(|r| text(c, r, "realm", false));
            let service = v
                .get("service")
                .filter(|x| !x.is_null())
                .and_then(|s| text(c, s, "service", false));
            CredentialKind::Kerberos {
                realm: realm.unwrap_or_default(),
                service,
                keytab: content(c, "keytab"),
            }
        }
        _ => {
            let username = required(c, "username").and_then(|u| text(c, u, "username", true));
            CredentialKind::SshKey {
                username: username.unwrap_or_default(),
                private_key: content(c, "private_key"),
                public_key: content(c, "public_key"),
            }
        }
    };
    (c.error_count() == errors).then(|| Credential {
        name: name.to_string(),
        kind: credential,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "secret\n\n").unwrap();
        assert_eq!(ContentSource::File(path).load().unwrap(), "secret\n");
    }

    #[test]
    fn programs_run_without_a_shell_and_with_a_clean_environment() {
        let argv = |a: &[&str]| ContentSource::Exec(a.iter().map(|s| s.to_string()).collect());
        // No shell: `$HOME` and `;` reach the program literally.
        assert_eq!(
            argv(&["/bin/echo", "$HOME;", "x"]).load().unwrap(),
            "$HOME; x"
        );
        // Only HOME and PATH are set.
        std::env::set_var("DOP_TEST_LEAK", "leaked");
        let env = argv(&["/usr/bin/env"]).load().unwrap();
        assert!(!env.contains("DOP_TEST_LEAK"), "{env}");
        assert!(env.contains("PATH=/usr/local/sbin:"), "{env}");
        let err = argv(&["/bin/false"]).load().unwrap_err();
        assert!(err.to_string().contains("non-zero exit status 1"), "{err}");
    }

    #[test]
    fn a_file_secret_is_a_regular_file_of_bounded_size() {
        let err = ContentSource::File("/dev/zero".into()).load().unwrap_err();
        assert!(matches!(err, ContentError::NotRegular { .. }), "{err}");
        assert!(
            err.to_string().contains("/dev/zero is not a regular file"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 65]).unwrap();
        let limits = SecretLimits {
            max_bytes: 64,
            ..SecretLimits::default()
        };
        let err = ContentSource::File(big.clone())
            .load_within(limits)
            .unwrap_err();
        assert!(err.to_string().contains("larger than 64 bytes"), "{err}");
        std::fs::write(&big, vec![b'x'; 64]).unwrap();
        assert_eq!(
            ContentSource::File(big).load_within(limits).unwrap().len(),
            64
        );
    }

    #[test]
    fn a_secret_program_is_stopped_at_its_time_and_output_limits() {
        let argv = |a: &[&str]| ContentSource::Exec(a.iter().map(|s| s.to_string()).collect());
        let limits = SecretLimits {
            max_bytes: 1024,
            exec_timeout: Duration::from_millis(300),
        };
        // An upper bound, generous: the program sleeps 60 s unless it is killed.
        let started = Instant::now();
        let err = argv(&["/bin/sleep", "60"]).load_within(limits).unwrap_err();
        assert!(matches!(err, ContentError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
        // Endless output: stopped at the limit, long before the time limit.
        let limits = SecretLimits {
            exec_timeout: Duration::from_secs(60),
            ..limits
        };
        let started = Instant::now();
        let err = argv(&["/usr/bin/yes"]).load_within(limits).unwrap_err();
        assert!(err.to_string().contains("larger than 1024 bytes"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
        // A child left holding the pipe ends with the group.
        let out = argv(&["/bin/sh", "-c", "echo pw; sleep 60 &"])
            .load_within(limits)
            .unwrap();
        assert_eq!(out, "pw");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn an_exec_source_is_not_run_outside_an_execution() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let source =
            ContentSource::Exec(vec!["/usr/bin/touch".into(), marker.display().to_string()]);
        let err = source.load_unless_exec().unwrap_err();
        assert!(
            err.to_string().contains("runs only inside an execution"),
            "{err}"
        );
        assert!(!marker.exists());
    }

    #[test]
    fn debug_output_never_shows_a_literal_secret() {
        let shown = format!("{:?}", ContentSource::Literal("hunter2".into()));
        assert!(!shown.contains("hunter2"));
    }
}
