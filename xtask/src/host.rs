//! What xtask's tasks share about this machine: the workspace root, Debian packages, files
//! written with the path in their errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Whether a Debian package is installed.
pub fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .is_ok_and(|o| o.stdout == b"installed")
}

/// Removes a file when dropped (the `policy-rc.d` that keeps packages from starting services
/// while they are installed).
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `mkdir -p`.
pub fn mkdir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Writes a file.
pub fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `apt-get <args>` non-interactively (waiting up to 10 minutes for the package lock), its
/// output appended to `log`; on failure the error quotes the log's last lines.
pub fn apt(log: &Path, args: &[&str]) -> Result<(), String> {
    apt_with(log, &[], args)
}

/// [`apt`] with `options` (such as `-o` settings) before `args`; the error names `args` only.
pub fn apt_with(log: &Path, options: &[&str], args: &[&str]) -> Result<(), String> {
    run_logged(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(options)
            .args(args),
        log,
        &format!("apt-get {}", args.join(" ")),
    )
}

/// Runs a command with its output appended to `log`; its failure quotes the log's last lines.
pub fn run_logged(command: &mut Command, log: &Path, what: &str) -> Result<(), String> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let status = command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    Err(format!(
        "{what} failed ({status})\n--- {} (last 30 lines) ---\n{}",
        log.display(),
        lines[lines.len().saturating_sub(30)..].join("\n")
    ))
}

/// Keeps the packages being installed from starting their services (a `policy-rc.d` that says
/// no, removed when the guard is dropped) unless the machine has its own policy.
pub fn no_service_starts(by: &str) -> Result<Option<RemoveOnDrop>, String> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    if policy.exists() {
        return Ok(None);
    }
    fs::write(policy, format!("#!/bin/sh\n# {by}\nexit 101\n"))
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(policy, fs::Permissions::from_mode(0o755))
        })
        .map_err(|e| format!("{}: {e}", policy.display()))?;
    Ok(Some(RemoveOnDrop(policy.to_path_buf())))
}
