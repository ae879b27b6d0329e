//! Credentials and the content sources their secrets come from (literal, `file`, `exec`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
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
}

/// The `PATH` secret programs run with, as in the original.
const EXEC_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl ContentSource {
    /// Reads the secret.
    pub fn load(&self) -> Result<String, ContentError> {
        let mut value = match self {
            ContentSource::Literal(s) => return Ok(s.clone()),
            ContentSource::File(path) => {
                let bytes = std::fs::read(path).map_err(|source| ContentError::Read {
                    path: path.clone(),
                    source,
                })?;
                String::from_utf8(bytes)
                    .map_err(|_| ContentError::NotText(path.display().to_string()))?
            }
            ContentSource::Exec(argv) => {
                let program = argv[0].clone();
                let mut cmd = Command::new(&program);
                cmd.args(&argv[1..]).env_clear().env("PATH", EXEC_PATH);
                if let Some(home) = std::env::var_os("HOME") {
                    cmd.env("HOME", home);
                }
                let out = cmd.output().map_err(|source| ContentError::Spawn {
                    program: program.clone(),
                    source,
                })?;
                if !out.status.success() {
                    return Err(ContentError::Failed {
                        program,
                        status: out.status.code().map_or("signal".into(), |c| c.to_string()),
                        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
                String::from_utf8(out.stdout).map_err(|_| ContentError::NotText(program))?
            }
        };
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        Ok(value)
    }
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
            match std::fs::File::open(file) {
                Ok(_) => Some(ContentSource::File(PathBuf::from(file))),
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
    fn debug_output_never_shows_a_literal_secret() {
        let shown = format!("{:?}", ContentSource::Literal("hunter2".into()));
        assert!(!shown.contains("hunter2"));
    }
}
