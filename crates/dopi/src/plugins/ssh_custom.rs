//! `ssh/custom`: a command run on the node over SSH (`exec` + `arguments`, by the login
//! shell), judged like `custom`. The environment (`DOP_NODE_*` and `env`) is exported in front
//! of the command, each value single-quoted.

use async_trait::async_trait;
use dop_core::plan::{CredentialKind, IpSetting, Node};

use super::checks::{self, Checks};
use super::custom::{command_line, command_problems, environment};
use crate::exec::Stream;
use crate::plugin::{params, CommandContext, CommandOptions, CommandOutcome, ParamProblem, Plugin};
use crate::ssh::{Hop, Login, SshPool, Target};

/// The `ssh/custom` plugin.
pub struct SshCustom;

/// `'value'` for a POSIX shell.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `export K='v'; ` for each variable, to put in front of a remote command.
pub fn exports(env: &[(String, String)]) -> String {
    env.iter()
        .map(|(k, v)| format!("export {k}={}; ", shell_quote(v)))
        .collect()
}

/// The parameters every ssh plugin takes: `credentials`, `port`, `check_host_key`, `run_on`
/// (another plan node to run the command on), and the original's `quiet` and `base64`
/// (accepted, not needed).
pub const SSH_KEYS: [&str; 7] = [
    "run_on",
    "credentials",
    "credential",
    "port",
    "check_host_key",
    "quiet",
    "base64",
];

/// Problems of the ssh connection parameters.
pub fn ssh_problems(options: &CommandOptions) -> Vec<ParamProblem> {
    let mut problems = Vec::new();
    if let Some(p) = options.get("port") {
        if !p.as_u64().is_some_and(|p| (1..=65535).contains(&p)) {
            problems.push(ParamProblem::error(
                "port",
                "'port' must be a number from 1 to 65535",
            ));
        }
    }
    if options
        .get("check_host_key")
        .is_some_and(|c| !c.is_boolean())
    {
        problems.push(ParamProblem::error(
            "check_host_key",
            "'check_host_key' must be true or false",
        ));
    }
    if options.get("run_on").is_some_and(|r| !r.is_string()) {
        problems.push(ParamProblem::error(
            "run_on",
            "'run_on' must be the name of a plan node",
        ));
    }
    for key in ["credentials", "credential"] {
        match options.get(key) {
            None | Some(serde_json::Value::String(_)) => {}
            Some(serde_json::Value::Array(items)) if items.iter().all(|i| i.is_string()) => {}
            Some(_) => problems.push(ParamProblem::error(
                key,
                "'credentials' must be a credential name or a list of names",
            )),
        }
    }
    problems
}

/// The user and login of the first ssh_key (with a private_key) or username_password credential
/// among `names`, each made once per run (`pool` keeps them).
fn login(
    pool: &SshPool,
    credentials: &[dop_core::plan::Credential],
    names: &[String],
    masker: &dop_run::Masker,
) -> Result<(String, Login), String> {
    for name in names {
        let credential = credentials
            .iter()
            .find(|c| c.name == *name)
            .ok_or_else(|| format!("the credential '{name}' does not exist in the plan"))?;
        if let Some(made) = pool.login_of(name, || login_of(credential, masker))? {
            return Ok(made);
        }
    }
    Err(format!(
        "none of the credentials {} is an ssh_key with a private_key (or, with an ssh agent running, without one) or a username_password",
        names.join(", ")
    ))
}

/// The user and login of one credential; `None` for a kind that gives no ssh login.
fn login_of(
    credential: &dop_core::plan::Credential,
    masker: &dop_run::Masker,
) -> Result<Option<(String, Login)>, String> {
    let name = &credential.name;
    {
        match &credential.kind {
            CredentialKind::SshKey {
                username,
                private_key: Some(key),
                ..
            } => {
                let text = masker
                    .load(key)
                    .map_err(|e| format!("credential '{name}': {e}"))?;
                let key = russh::keys::decode_secret_key(&text, None).map_err(|e| {
                    format!("credential '{name}': the private key is not usable: {e}")
                })?;
                return Ok(Some((
                    username.clone(),
                    Login::Key(std::sync::Arc::new(key)),
                )));
            }
            // Without a private key, the keys of the ssh agent (when there is one).
            CredentialKind::SshKey {
                username,
                private_key: None,
                ..
            } if std::env::var_os("SSH_AUTH_SOCK").is_some() => {
                return Ok(Some((username.clone(), Login::Agent)));
            }
            CredentialKind::UsernamePassword { username, password } => {
                let password = masker
                    .load(password)
                    .map_err(|e| format!("credential '{name}': {e}"))?;
                return Ok(Some((username.clone(), Login::Password(password))));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Where and how to reach `node` for this command: the first ssh_key or username_password
/// credential named in `credentials`, the fqdn and the node's static addresses, through the
/// node's jump hosts.
pub fn target_for(ctx: &CommandContext<'_>, node: &Node) -> Result<Target, String> {
    let names: Vec<String> = match ctx
        .options
        .get("credentials")
        .or_else(|| ctx.options.get("credential"))
    {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        return Err("no 'credentials' for the ssh login (set them on the command or with set_plugin_defaults)".into());
    }
    let (user, login) = login(&ctx.ssh, ctx.credentials, &names, ctx.log.masker())?;
    let mut jumps = Vec::new();
    for hop in &node.jump_hosts {
        let (user, login) = match &hop.credentials {
            Some(name) => self::login(
                &ctx.ssh,
                ctx.credentials,
                std::slice::from_ref(name),
                ctx.log.masker(),
            ),
            None => Ok((user.clone(), login.clone())),
        }
        .map_err(|e| format!("jump host {}: {e}", hop.label()))?;
        jumps.push(Hop {
            host: hop.host.clone(),
            port: hop.port,
            user,
            login,
        });
    }
    // The address dopv deployed the node with first, then the plan's names for it.
    let (recorded, recorded_port) = ctx.reach.endpoint(node);
    let mut addresses: Vec<String> = recorded.into_iter().collect();
    let fqdn = node.fqdn.trim_end_matches('.').to_string();
    if !addresses.contains(&fqdn) {
        addresses.push(fqdn);
    }
    for i in &node.interfaces {
        if let IpSetting::Static(ip) = i.ip {
            let ip = ip.to_string();
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    let port = ctx
        .options
        .get("port")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .or(recorded_port)
        .unwrap_or(22);
    let check_host_key = ctx
        .options
        .get("check_host_key")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true);
    Ok(Target {
        node: node.name.clone(),
        addresses,
        port,
        user,
        login,
        check_host_key,
        jumps,
    })
}

/// Where and how to reach the node the command runs on: the command's node, or the plan node
/// named by `run_on`.
pub fn target(ctx: &CommandContext<'_>) -> Result<Target, String> {
    match ctx
        .options
        .get("run_on")
        .and_then(serde_json::Value::as_str)
    {
        None => target_for(ctx, ctx.node),
        Some(name) => {
            let node = ctx.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
                format!("'run_on': no node '{name}' in the plan to run the command on")
            })?;
            target_for(ctx, node)
        }
    }
}

#[async_trait]
impl Plugin for SshCustom {
    fn name(&self) -> &'static str {
        "ssh/custom"
    }

    fn check(&self, options: &CommandOptions) -> Vec<ParamProblem> {
        let known: Vec<&str> = ["exec", "arguments", "env"]
            .into_iter()
            .chain(checks::KEYS)
            .chain(SSH_KEYS)
            .collect();
        let mut problems = params::unknown_keys(options, &known);
        problems.extend(command_problems(options));
        problems.extend(ssh_problems(options));
        problems
    }

    fn required(&self) -> &'static [&'static str] {
        &["exec"]
    }

    fn describe(&self, options: &CommandOptions) -> String {
        match command_line(options) {
            Ok(line) => format!("run `{line}` on the node over ssh"),
            Err(e) => e,
        }
    }

    async fn run(&self, ctx: &CommandContext<'_>) -> CommandOutcome {
        let (line, mut checks, env, target) = match (
            command_line(ctx.options),
            Checks::from_options(ctx.options),
            environment(ctx),
            target(ctx),
        ) {
            (Ok(l), Ok(c), Ok(e), Ok(t)) => (l, c, e, t),
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
                return CommandOutcome::failed(e)
            }
        };
        if !target.check_host_key {
            ctx.log
                .line("warning: check_host_key is false: the node's host key is not checked");
        }
        run_remote(
            ctx,
            &target,
            &format!("{}{line}", exports(&env)),
            &line,
            None,
            &mut checks,
        )
        .await
    }
}

/// Runs `remote` on the target, logging its output (the command shown as `shown`) and judging
/// it with `checks`.
pub async fn run_remote(
    ctx: &CommandContext<'_>,
    target: &Target,
    remote: &str,
    shown: &str,
    input: Option<&[u8]>,
    checks: &mut Checks,
) -> CommandOutcome {
    let hops: Vec<String> = target
        .jumps
        .iter()
        .map(|h| format!("{}@{}", h.user, h.label()))
        .collect();
    let via = match hops.is_empty() {
        true => String::new(),
        false => format!(" through {}", hops.join(", then ")),
    };
    ctx.log.line(&format!(
        "running `{shown}` on {}@{}{via}",
        target.user,
        target.addresses.join(" or ")
    ));
    let log = ctx.log.clone();
    let mut on_line = |stream: Stream, text: &str| {
        let tag = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        log.line(&format!("{tag}: {text}"));
        if let Some(note) = checks.line(stream, text) {
            log.line(&note);
        }
    };
    match ctx
        .ssh
        .exec(
            target,
            remote,
            input,
            ctx.timeout,
            ctx.stop.clone(),
            &mut on_line,
        )
        .await
    {
        Ok(f) => checks.outcome(f, ctx.timeout.as_secs()),
        Err(e) => CommandOutcome::failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(super::shell_quote("it's $HOME"), r"'it'\''s $HOME'");
    }

    #[test]
    fn only_variable_names_reach_the_exports() {
        use crate::plugin::params::env;
        let ok = serde_json::json!({"A_1": "x; rm -rf /", "_b": 2});
        assert_eq!(
            super::exports(&env(Some(&ok)).unwrap()),
            "export A_1='x; rm -rf /'; export _b='2'; "
        );
        for bad in [
            "X=1; touch /tmp/owned; Y",
            "1A",
            "",
            "A-B",
            "A B",
            "$(id)",
            "Ä",
        ] {
            let err = env(Some(&serde_json::json!({ bad: "v" }))).unwrap_err();
            assert!(err.contains("is not a variable name"), "{bad}: {err}");
        }
    }
}
