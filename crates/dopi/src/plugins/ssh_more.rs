//! The simpler ssh plugins: `ssh/file_exists`, `ssh/file_contains` and `ssh/wait_for_login`.
//! Paths and patterns are single-quoted on the remote side (the original left them unquoted).

use std::time::{Duration, Instant};

use async_trait::async_trait;

use dop_run::Stop;

use super::checks::{self, Checks};
use super::ssh_custom::{run_remote, shell_quote, ssh_problems, target, SSH_KEYS};
use crate::plugin::{params, CommandContext, CommandOptions, CommandOutcome, ParamProblem, Plugin};

fn absolute_file(options: &CommandOptions) -> Result<&str, String> {
    match options.get("file").and_then(|f| f.as_str()) {
        Some(f) if f.starts_with('/') => Ok(f),
        Some(f) => Err(format!("'file' must be an absolute path, not '{f}'")),
        None => Err("'file' (an absolute path on the node) is required".into()),
    }
}

fn problems(options: &CommandOptions, own: &[&str]) -> Vec<ParamProblem> {
    let known: Vec<&str> = own
        .iter()
        .copied()
        .chain(checks::KEYS)
        .chain(SSH_KEYS)
        .collect();
    let mut p = params::unknown_keys(options, &known);
    p.extend(Checks::problems(options));
    p.extend(ssh_problems(options));
    if options.contains_key("file") {
        if let Err(e) = absolute_file(options) {
            p.push(ParamProblem::error("file", e));
        }
    }
    if own.contains(&"pattern") && options.contains_key("pattern") {
        if let Err(e) = pattern_of(options, "") {
            p.push(ParamProblem::error("pattern", e));
        }
    }
    p
}

/// The non-empty `pattern` of a file plugin; `purpose` says what it is for in the error.
fn pattern_of<'o>(options: &'o CommandOptions, purpose: &str) -> Result<&'o str, String> {
    match options.get("pattern") {
        Some(serde_json::Value::String(p)) if !p.is_empty() => Ok(p),
        Some(_) => Err("'pattern' must be a non-empty string".into()),
        None => Err(format!("'pattern' ({purpose}) is required")),
    }
}

async fn run_check(ctx: &CommandContext<'_>, remote: Result<String, String>) -> CommandOutcome {
    let (remote, mut checks, target) =
        match (remote, Checks::from_options(ctx.options), target(ctx)) {
            (Ok(r), Ok(c), Ok(t)) => (r, c, t),
            (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return CommandOutcome::failed(e),
        };
    run_remote(ctx, &target, &remote, &remote, None, &mut checks).await
}

/// `ssh/file_exists`: succeeds when `file` exists on the node.
pub struct FileExists;

#[async_trait]
impl Plugin for FileExists {
    fn name(&self) -> &'static str {
        "ssh/file_exists"
    }
    fn check(&self, options: &CommandOptions) -> Vec<ParamProblem> {
        problems(options, &["file"])
    }
    fn required(&self) -> &'static [&'static str] {
        &["file"]
    }
    fn describe(&self, options: &CommandOptions) -> String {
        format!(
            "check that {} exists on the node",
            options.get("file").and_then(|f| f.as_str()).unwrap_or("?")
        )
    }
    async fn run(&self, ctx: &CommandContext<'_>) -> CommandOutcome {
        run_check(
            ctx,
            absolute_file(ctx.options).map(|f| format!("test -e {}", shell_quote(f))),
        )
        .await
    }
}

/// `ssh/file_contains`: succeeds when a line of `file` matches `pattern` (grep's basic regex).
pub struct FileContains;

fn contains_command(options: &CommandOptions) -> Result<String, String> {
    let file = absolute_file(options)?;
    let pattern = pattern_of(options, "what to look for")?;
    Ok(format!(
        "grep -q -e {} -- {}",
        shell_quote(pattern),
        shell_quote(file)
    ))
}

#[async_trait]
impl Plugin for FileContains {
    fn name(&self) -> &'static str {
        "ssh/file_contains"
    }
    fn check(&self, options: &CommandOptions) -> Vec<ParamProblem> {
        problems(options, &["file", "pattern"])
    }
    fn required(&self) -> &'static [&'static str] {
        &["file", "pattern"]
    }
    fn describe(&self, options: &CommandOptions) -> String {
        contains_command(options).map_or_else(|e| e, |c| format!("run `{c}` on the node"))
    }
    async fn run(&self, ctx: &CommandContext<'_>) -> CommandOutcome {
        run_check(ctx, contains_command(ctx.options)).await
    }
}

/// `ssh/wait_for_login`: tries to log in every `interval` seconds until it works, the
/// `plugin_timeout` passes, or the run is stopped.
pub struct WaitForLogin;

#[async_trait]
impl Plugin for WaitForLogin {
    fn name(&self) -> &'static str {
        "ssh/wait_for_login"
    }
    fn check(&self, options: &CommandOptions) -> Vec<ParamProblem> {
        let mut p = problems(options, &["interval", "connection_timeout"]);
        for key in ["interval", "connection_timeout"] {
            if options.get(key).is_some_and(|v| v.as_u64().is_none()) {
                p.push(ParamProblem::error(
                    key,
                    format!("'{key}' must be a number of seconds"),
                ));
            }
        }
        p
    }
    fn describe(&self, _: &CommandOptions) -> String {
        "wait until the node accepts an ssh login".into()
    }
    async fn run(&self, ctx: &CommandContext<'_>) -> CommandOutcome {
        match target(ctx) {
            Ok(target) => {
                wait_for_login(ctx, &target, interval_of(ctx.options), Instant::now()).await
            }
            Err(e) => CommandOutcome::failed(e),
        }
    }
}

fn interval_of(options: &CommandOptions) -> Duration {
    Duration::from_secs(
        options
            .get("interval")
            .and_then(|v| v.as_u64())
            .unwrap_or(10)
            .max(1),
    )
}

/// Sleeps `interval` unless the run is stopped first; true when stopped.
pub(super) async fn pause(ctx: &CommandContext<'_>, interval: Duration) -> bool {
    let mut stop = ctx.stop.clone();
    tokio::select! {
        () = tokio::time::sleep(interval) => {}
        _ = stop.changed() => {}
    }
    let stopped = *stop.borrow() != Stop::No;
    stopped
}

pub(super) fn interrupted(message: &str) -> CommandOutcome {
    CommandOutcome {
        message: Some(message.into()),
        interrupted: true,
        ..CommandOutcome::default()
    }
}

/// Whether a login works now.
async fn login_works(
    ctx: &CommandContext<'_>,
    target: &crate::ssh::Target,
    timeout: Duration,
) -> Result<(), String> {
    let mut ignore = |_: crate::exec::Stream, _: &str| {};
    match ctx
        .ssh
        .exec(
            target,
            "exit 0",
            None,
            timeout,
            ctx.stop.clone(),
            &mut ignore,
        )
        .await
    {
        Ok(f) if f.exit_status == Some(0) => Ok(()),
        Ok(f) => Err(format!("the login test ended with {:?}", f.exit_status)),
        Err(e) => Err(e.to_string()),
    }
}

/// Tries a login every `interval` until it works, `plugin_timeout` (counted from `start`)
/// passes, or the run is stopped.
async fn wait_for_login(
    ctx: &CommandContext<'_>,
    target: &crate::ssh::Target,
    interval: Duration,
    start: Instant,
) -> CommandOutcome {
    loop {
        match login_works(ctx, target, interval).await {
            Ok(()) => {
                ctx.log.line("login works");
                return CommandOutcome {
                    success: true,
                    exit_status: Some(0),
                    ..CommandOutcome::default()
                };
            }
            Err(e) => ctx.log.line(&format!("cannot log in yet ({e}); retrying")),
        }
        if start.elapsed() >= ctx.timeout {
            return CommandOutcome::failed(format!(
                "the node did not accept a login within {} s",
                ctx.timeout.as_secs()
            ));
        }
        if pause(ctx, interval).await {
            return interrupted("stopped while waiting for a login");
        }
    }
}

/// `ssh/reboot`: runs `reboot_cmd` (default `shutdown -r now`), waits until the node stops
/// accepting logins, then until it accepts them again; all within `plugin_timeout`.
pub struct Reboot;

#[async_trait]
impl Plugin for Reboot {
    fn name(&self) -> &'static str {
        "ssh/reboot"
    }
    fn check(&self, options: &CommandOptions) -> Vec<ParamProblem> {
        let mut p = problems(options, &["reboot_cmd", "interval", "connection_timeout"]);
        if options
            .get("reboot_cmd")
            .is_some_and(|v| v.as_str().is_none_or(str::is_empty))
        {
            p.push(ParamProblem::error(
                "reboot_cmd",
                "'reboot_cmd' must be a non-empty string",
            ));
        }
        p
    }
    fn describe(&self, options: &CommandOptions) -> String {
        let cmd = options
            .get("reboot_cmd")
            .and_then(|v| v.as_str())
            .unwrap_or("shutdown -r now");
        format!("run `{cmd}` on the node and wait until it is back")
    }
    async fn run(&self, ctx: &CommandContext<'_>) -> CommandOutcome {
        let target = match target(ctx) {
            Ok(t) => t,
            Err(e) => return CommandOutcome::failed(e),
        };
        let start = Instant::now();
        let command = ctx
            .options
            .get("reboot_cmd")
            .and_then(|v| v.as_str())
            .unwrap_or("shutdown -r now");
        ctx.log.line(&format!("rebooting with `{command}`"));
        let mut log_line = |_: crate::exec::Stream, text: &str| ctx.log.line(text);
        // The command's own result does not matter: the connection may drop under it.
        let _ = ctx
            .ssh
            .exec(
                &target,
                command,
                None,
                Duration::from_secs(30),
                ctx.stop.clone(),
                &mut log_line,
            )
            .await;
        // Wait for the node to go down: the connection that ran the command drops, or a
        // command on it fails (a new login is no test: connection retries could miss a quick
        // reboot).
        let second = Duration::from_secs(1);
        while ctx.ssh.is_connected(&target.node).await
            && login_works(ctx, &target, second).await.is_ok()
        {
            ctx.log
                .line("still able to log in, waiting for the shutdown");
            if start.elapsed() >= ctx.timeout {
                return CommandOutcome::failed(format!(
                    "the node did not go down within {} s",
                    ctx.timeout.as_secs()
                ));
            }
            if pause(ctx, second).await {
                return interrupted("stopped while waiting for the node to go down");
            }
        }
        ctx.ssh.forget(&target.node).await;
        ctx.log
            .line("the node is down; waiting for it to accept logins again");
        wait_for_login(
            ctx,
            &target,
            interval_of(ctx.options).min(Duration::from_secs(2)),
            start,
        )
        .await
    }
}

/// `ssh/file_deploy`: writes `content` to `file` on the node, streamed over the channel (no
/// command-line size limit), with an optional `owner` and `mode`, through a temporary file
/// renamed into place; a file that already has this content, owner and mode is not rewritten.
pub struct FileDeploy;

/// The bytes to deploy: a string as written, or the exact bytes of a local file (`{file:
/// path}`) or of a program's standard output (`{exec: [program, args…]}`, within
/// `content_exec_timeout` and `max_program_output`: content that would be cut is refused).
async fn deploy_content(ctx: &CommandContext<'_>) -> Result<Vec<u8>, String> {
    match ctx.options.get("content") {
        Some(serde_json::Value::String(s)) => Ok(s.clone().into_bytes()),
        Some(serde_json::Value::Object(m)) if m.len() == 1 => {
            if let Some(path) = m.get("file").and_then(|p| p.as_str()) {
                return std::fs::read(path)
                    .map_err(|e| format!("cannot read the content file {path}: {e}"));
            }
            if let Some(serde_json::Value::Array(argv)) = m.get("exec") {
                let argv: Vec<&str> = argv.iter().filter_map(|a| a.as_str()).collect();
                let (program, args) = argv.split_first().ok_or("'content.exec' needs a program")?;
                return content_of_program(ctx, program, args).await;
            }
            Err("'content' must be a string, {file: path} or {exec: [program, args…]}".into())
        }
        Some(_) => {
            Err("'content' must be a string, {file: path} or {exec: [program, args…]}".into())
        }
        None => Err("'content' is required".into()),
    }
}

/// The standard output of a `content.exec` program, whole, or why there is none: it failed, ran
/// past `content_exec_timeout` or gave more than `max_program_output` (it is stopped with its
/// process group then), or the run stopped it.
async fn content_of_program(
    ctx: &CommandContext<'_>,
    program: &str,
    args: &[&str],
) -> Result<Vec<u8>, String> {
    use dop_run::process::{run_limited, Limits, Overflow};
    let limits = Limits {
        timeout: ctx.limits.content_exec_timeout(),
        max_output: ctx.limits.max_output,
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    let ended = run_limited(
        &mut command,
        limits,
        Overflow::Kill,
        Some(ctx.stop.clone()),
        |stream, data| match stream {
            crate::exec::Stream::Stdout => stdout.extend_from_slice(data),
            crate::exec::Stream::Stderr => stderr.extend_from_slice(data),
        },
    )
    .await
    .map_err(|e| format!("cannot run the content.exec program {program}: {e}"))?;
    let which = format!(
        "the content.exec program {program} of step '{}' for {}",
        ctx.step, ctx.node.name
    );
    if ended.timed_out {
        return Err(format!(
            "{which} did not end within {} s (content_exec_timeout in dop.conf) and was \
             stopped; nothing was deployed",
            limits.timeout.as_secs()
        ));
    }
    if ended.truncated {
        return Err(format!(
            "{which} gave more than {} bytes of output (max_program_output in dop.conf) and was \
             stopped; content that would be cut is not deployed",
            limits.max_output
        ));
    }
    if ended.stopped {
        return Err(format!(
            "{which} was stopped by the run; nothing was deployed"
        ));
    }
    if !ended.status.success() {
        let said = String::from_utf8_lossy(&stderr);
        let said: String = said.trim().chars().take(512).collect();
        return Err(format!("{which} failed with {}: {said}", ended.status));
    }
    Ok(stdout)
}

fn mode_of(options: &CommandOptions) -> Result<Option<String>, String> {
    match options.get("mode") {
        None => Ok(None),
        Some(serde_json::Value::String(m))
            if !m.is_empty() && m.len() <= 4 && m.bytes().all(|b| (b'0'..=b'7').contains(&b)) =>
        {
            Ok(Some(m.trim_start_matches('0').to_string()).map(|m| {
                if m.is_empty() {
                    "0".into()
                } else {
                    m
                }
            }))
        }
        Some(other) => Err(format!(
            "'mode' must be an octal string such as '0640', not {other}"
        )),
    }
}

fn owner_of(options: &CommandOptions) -> Result<Option<String>, String> {
    match options.get("owner") {
        None => Ok(None),
        Some(serde_json::Value::String(o)) if !o.is_empty() && !o.contains(char::is_whitespace) => {
            Ok(Some(o.clone()))
        }
        Some(other) => Err(format!(
            "'owner' must be 'user' or 'user:group', not {other}"
        )),
    }
}

#[async_trait]
impl Plugin for FileDeploy {
    fn name(&self) -> &'static str {
        "ssh/file_deploy"
    }
    fn check(&self, options: &CommandOptions) -> Vec<ParamProblem> {
        let mut p = problems(options, &["file", "content", "owner", "mode"]);
        match options.get("content") {
            Some(serde_json::Value::String(_)) | None => {}
            Some(serde_json::Value::Object(m))
                if m.len() == 1 && (m.contains_key("file") || m.contains_key("exec")) => {}
            Some(_) => p.push(ParamProblem::error(
                "content",
                "'content' must be a string, {file: path} or {exec: [program, args…]}",
            )),
        }
        if let Err(e) = mode_of(options) {
            p.push(ParamProblem::error("mode", e));
        }
        if let Err(e) = owner_of(options) {
            p.push(ParamProblem::error("owner", e));
        }
        p
    }
    fn required(&self) -> &'static [&'static str] {
        &["file", "content"]
    }
    fn describe(&self, options: &CommandOptions) -> String {
        format!(
            "deploy content to {} on the node",
            options.get("file").and_then(|f| f.as_str()).unwrap_or("?")
        )
    }
    async fn run(&self, ctx: &CommandContext<'_>) -> CommandOutcome {
        use sha2::Digest;
        let prepared = async {
            Ok::<_, String>((
                absolute_file(ctx.options)?.to_string(),
                mode_of(ctx.options)?,
                owner_of(ctx.options)?,
                target(ctx)?,
                // The content last: its program runs only for a command that can go ahead.
                deploy_content(ctx).await?,
            ))
        }
        .await;
        let (file, mode, owner, target, content) = match prepared {
            Ok(p) => p,
            Err(e) => return CommandOutcome::failed(e),
        };
        let hash: String = sha2::Sha256::digest(&content)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let quoted = shell_quote(&file);
        // What is there now: the content's hash, then mode and owner.
        let probe = format!(
            "if [ -f {quoted} ]; then sha256sum < {quoted} | cut -d' ' -f1; stat -c '%a %U:%G' -- {quoted}; fi"
        );
        let mut lines = Vec::new();
        let mut collect = |_: crate::exec::Stream, text: &str| lines.push(text.to_string());
        let probed = ctx
            .ssh
            .exec(
                &target,
                &probe,
                None,
                ctx.timeout,
                ctx.stop.clone(),
                &mut collect,
            )
            .await;
        if let Ok(f) = &probed {
            let (mode_now, owner_now) = lines
                .get(1)
                .and_then(|l| l.split_once(' '))
                .map_or((None, None), |(m, o)| {
                    (Some(m.to_string()), Some(o.to_string()))
                });
            let same_owner = owner.as_ref().is_none_or(|o| {
                owner_now
                    .as_deref()
                    .is_some_and(|now| now == o || now.split(':').next() == Some(o.as_str()))
            });
            if f.exit_status == Some(0)
                && lines.first() == Some(&hash)
                && mode
                    .as_ref()
                    .is_none_or(|m| mode_now.as_deref() == Some(m.as_str()))
                && same_owner
            {
                ctx.log
                    .line(&format!("{file} already has this content; not rewritten"));
                return CommandOutcome {
                    success: true,
                    exit_status: Some(0),
                    message: Some(format!("{file} unchanged")),
                    ..CommandOutcome::default()
                };
            }
        }
        let mut write = format!(
            "tmp=$(mktemp {}) && cat > \"$tmp\"",
            shell_quote(&format!("{file}.dop.XXXXXX"))
        );
        if let Some(m) = &mode {
            write.push_str(&format!(" && chmod {m} \"$tmp\""));
        } else {
            write.push_str(" && chmod 644 \"$tmp\"");
        }
        if let Some(o) = &owner {
            write.push_str(&format!(" && chown {} \"$tmp\"", shell_quote(o)));
        }
        write.push_str(&format!(
            " && mv -f \"$tmp\" {quoted} || {{ rm -f \"$tmp\"; exit 1; }}"
        ));
        let mut checks = match Checks::from_options(ctx.options) {
            Ok(c) => c,
            Err(e) => return CommandOutcome::failed(e),
        };
        let shown = format!("write {} bytes to {file}", content.len());
        run_remote(ctx, &target, &write, &shown, Some(&content), &mut checks).await
    }
}

/// `ssh/file_replace`: replaces `pattern` (grep/sed basic regex) with `replacement` (literal
/// text: `/`, `&` and `\` in it mean themselves) in `file`, every match (`global`, default
/// true) or the first of each line.
pub struct FileReplace;

fn replace_command(options: &CommandOptions) -> Result<String, String> {
    let file = absolute_file(options)?;
    let pattern = pattern_of(options, "what to replace")?;
    let replacement = options
        .get("replacement")
        .and_then(|r| r.as_str())
        .ok_or("'replacement' (a string) is required")?;
    let global = options
        .get("global")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true);
    let pattern = sed_pattern(pattern)?;
    let replacement = sed_replacement(replacement);
    let expression = format!(
        "s/{pattern}/{replacement}/{}",
        if global { "g" } else { "" }
    );
    Ok(format!(
        "sed -i -e {} -- {}",
        shell_quote(&expression),
        shell_quote(file)
    ))
}

/// `pattern` as the regex part of sed's `s/…/…/`: every `/` that is not escaped gets a
/// backslash, and an escape is kept whole, so nothing in the pattern can end the regex early
/// and add flags such as `e` (run the line) or `w FILE` (write it). A newline (sed reads lines,
/// and an escaped one starts another command) and a final lone backslash (it would escape the
/// closing `/`) are refused.
fn sed_pattern(pattern: &str) -> Result<String, String> {
    let mut escaped = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\n' => return Err("'pattern' must be one line: sed matches within a line".into()),
            '\\' => match chars.next() {
                Some('\n') => {
                    return Err("'pattern' must be one line: sed matches within a line".into())
                }
                Some(next) => {
                    escaped.push('\\');
                    escaped.push(next);
                }
                None => {
                    return Err(
                        "'pattern' ends in a lone backslash; write '\\\\' for a backslash".into(),
                    )
                }
            },
            '/' => escaped.push_str("\\/"),
            other => escaped.push(other),
        }
    }
    Ok(escaped)
}

/// `replacement` as literal text in sed's `s/…/…/`: the backslash first (so the escapes added
/// after it stay escapes), then the delimiter, `&` (the match) and newlines.
fn sed_replacement(replacement: &str) -> String {
    replacement
        .replace('\\', "\\\\")
        .replace('/', "\\/")
        .replace('&', "\\&")
        .replace('\n', "\\n")
}

#[async_trait]
impl Plugin for FileReplace {
    fn name(&self) -> &'static str {
        "ssh/file_replace"
    }
    fn check(&self, options: &CommandOptions) -> Vec<ParamProblem> {
        let mut p = problems(options, &["file", "pattern", "replacement", "global"]);
        if let Some(Err(e)) = options
            .get("pattern")
            .and_then(|v| v.as_str())
            .map(sed_pattern)
        {
            p.push(ParamProblem::error("pattern", e));
        }
        if options.get("replacement").is_some_and(|v| !v.is_string()) {
            p.push(ParamProblem::error(
                "replacement",
                "'replacement' must be a string",
            ));
        }
        if options.get("global").is_some_and(|v| !v.is_boolean()) {
            p.push(ParamProblem::error(
                "global",
                "'global' must be true or false",
            ));
        }
        p
    }
    fn required(&self) -> &'static [&'static str] {
        &["file", "pattern", "replacement"]
    }
    fn describe(&self, options: &CommandOptions) -> String {
        replace_command(options).map_or_else(|e| e, |c| format!("run `{c}` on the node"))
    }
    async fn run(&self, ctx: &CommandContext<'_>) -> CommandOutcome {
        run_check(ctx, replace_command(ctx.options)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replace(pattern: &str) -> CommandOptions {
        serde_json::json!({"file": "/etc/app.conf", "pattern": pattern, "replacement": "r"})
            .as_object()
            .cloned()
            .unwrap()
    }

    fn pattern_problems(pattern: &str) -> Vec<String> {
        FileReplace
            .check(&replace(pattern))
            .into_iter()
            .filter(|p| p.key == "pattern")
            .map(|p| p.message)
            .collect()
    }

    #[test]
    fn a_pattern_cannot_end_the_sed_regex() {
        // An escaped slash stays one escape; an unescaped one gets its backslash; either way
        // the regex ends at the `/` the plugin writes, so `e` and `w` stay text.
        assert_eq!(
            replace_command(&replace("^a\\/b/e;#")).unwrap(),
            "sed -i -e 's/^a\\/b\\/e;#/r/g' -- '/etc/app.conf'"
        );
        assert!(pattern_problems("a\\/b/w /tmp/x").is_empty());
    }

    #[test]
    fn patterns_sed_cannot_hold_are_refused_at_check() {
        let lone = pattern_problems("ends in \\");
        assert_eq!(
            lone,
            ["'pattern' ends in a lone backslash; write '\\\\' for a backslash"]
        );
        for multi_line in ["a\nw /tmp/x", "a\\\nw /tmp/x"] {
            assert_eq!(
                pattern_problems(multi_line),
                ["'pattern' must be one line: sed matches within a line"],
                "{multi_line:?}"
            );
        }
    }
}
