//! The stack's services as processes: started in the background and recorded by pid,
//! commands run to their end with their output logged, waits for a service to be ready, the
//! stack's processes and memory, and stopping them all.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dop_testbed::openstack::{alive, process_tree, SERVICES};
use dop_testbed::signal;

use crate::host::write;

use super::probe::{http_status, probe, Probe};
use super::Stack;

/// The services' PATH: Debian's own python3 (a developer's pyenv or venv python lacks the
/// OpenStack libraries).
const PATH: &str = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Stack {
    /// The pid a service's pid file records, running or not.
    pub(super) fn pid(&self, service: &str) -> Option<u32> {
        fs::read_to_string(self.pid_file(service))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The recorded pid, when that process is still the one this stack started (a pid file
    /// from before a reboot may name someone else's process now): its command line names the
    /// run directory.
    pub(super) fn live_pid(&self, service: &str) -> Option<u32> {
        let pid = self.pid(service)?;
        if !alive(pid) {
            return None;
        }
        cmdline(pid)
            .contains(&*self.run_dir().to_string_lossy())
            .then_some(pid)
    }

    /// Starts a service in the background, in a process group of its own, its output in
    /// `log/<service>.log`, its pid in `pids/<service>.pid`.
    pub(super) fn spawn(&self, service: &str, cmd: &mut Command) -> Result<u32, String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(service))
            .map_err(|e| format!("{}: {e}", self.log(service).display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        clean_env(cmd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("{service}: cannot start {:?}: {e}", cmd.get_program()))?;
        let pid = child.id();
        write(&self.pid_file(service), &format!("{pid}\n"))?;
        Ok(pid)
    }

    /// Runs a command to its end, its output appended to `log/<log>.log`; a failure names the
    /// service and shows the end of that log.
    pub(super) fn run_logged(
        &self,
        log: &str,
        service: &str,
        cmd: &mut Command,
    ) -> Result<(), String> {
        let path = self.log(log);
        run_appending(&path, clean_env(cmd)).map_err(|e| {
            format!(
                "{service}: {e}\n--- {} (last 30 lines) ---\n{}",
                path.display(),
                tail(&path, 30)
            )
        })
    }

    /// Waits (at most `seconds`) for `ready`; fails early when a started service has exited.
    pub(super) fn wait(
        &self,
        service: &str,
        what: &str,
        seconds: u64,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(dead) = SERVICES
                .iter()
                .find(|s| self.pid(s).is_some_and(|p| !alive(p)))
            {
                return Err(self.failure(dead, "exited"));
            }
            if start.elapsed() > Duration::from_secs(seconds) {
                return Err(self.failure(service, &format!("{what}: not ready after {seconds} s")));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub(super) fn wait_answers(&self, service: &str, seconds: u64) -> Result<(), String> {
        let Probe::Http(port, path) = probe(service) else {
            unreachable!("{service} has no HTTP API")
        };
        self.wait(
            service,
            &format!("http://127.0.0.1:{port}{path}"),
            seconds,
            || http_status(port, path).is_some_and(|c| c < 500),
        )
    }

    pub(super) fn failure(&self, service: &str, why: &str) -> String {
        let log = self.log(service);
        format!(
            "{service} failed: {why}\n--- {} (last 30 lines) ---\n{}",
            log.display(),
            tail(&log, 30)
        )
    }

    /// Every process of the stack: the recorded pids and the processes below them.
    pub(super) fn stack_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for service in SERVICES {
            if let Some(pid) = self.live_pid(service) {
                pids.push(pid);
                pids.extend(process_tree(pid));
            }
        }
        pids
    }

    /// The stack's memory in KiB: the sum of its processes' resident set (`Rss`), and of
    /// their proportional share (`Pss`: pages shared by forked workers counted once).
    pub(super) fn memory_kib(&self) -> (u64, u64) {
        let field = |text: &str, name: &str| -> u64 {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        self.stack_pids()
            .iter()
            .filter_map(|p| fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
            .fold((0, 0), |(rss, pss), s| {
                (rss + field(&s, "Rss:"), pss + field(&s, "Pss:"))
            })
    }

    /// Stops every process the stack started, by pid: OpenStack's services first (SIGTERM,
    /// SIGKILL after 5 s: cinder-volume takes about 6 s to stop, and the data is thrown away
    /// anyway), then RabbitMQ, MariaDB and epmd (SIGKILL after 30 s), with the workers below
    /// each pid. Removes the pid files; returns how many processes there were.
    pub(super) fn stop_all(&self) -> usize {
        let openstack: Vec<&str> = SERVICES[3..].iter().rev().copied().collect();
        let mut count = 0;
        for (group, grace) in [(openstack, 5), (vec!["rabbitmq", "mariadb", "epmd"], 30)] {
            let roots: Vec<u32> = group.iter().filter_map(|s| self.live_pid(s)).collect();
            let mut all: Vec<u32> = Vec::new();
            for &pid in &roots {
                all.push(pid);
                all.extend(process_tree(pid));
            }
            for &pid in &roots {
                signal(pid, libc::SIGTERM);
            }
            // A paused service (OpenStack::pause) handles SIGTERM only once it runs again.
            for &pid in &all {
                signal(pid, libc::SIGCONT);
            }
            let start = Instant::now();
            while all.iter().any(|p| alive(*p)) && start.elapsed() < Duration::from_secs(grace) {
                std::thread::sleep(Duration::from_millis(100));
            }
            for &pid in &roots {
                all.extend(process_tree(pid));
            }
            for &pid in &all {
                if alive(pid) {
                    signal(pid, libc::SIGKILL);
                }
            }
            let start = Instant::now();
            while all.iter().any(|p| alive(*p)) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            all.sort_unstable();
            all.dedup();
            count += all.len();
        }
        for service in SERVICES {
            let _ = fs::remove_file(self.pid_file(service));
        }
        count
    }

    /// Processes whose command line names the run directory but that no pid file leads to
    /// (a pid file lost by hand, a worker whose parent died): found in `/proc`.
    pub(super) fn leftovers(&self) -> Vec<(u32, String)> {
        let run = format!("{}/", self.run_dir().display());
        let me = std::process::id();
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me && alive(pid))
            .filter_map(|pid| {
                let line = cmdline(pid);
                line.contains(&run).then_some((pid, line))
            })
            .collect()
    }
}

/// The services' environment: Debian's python3 on the PATH, no Python or OpenStack variables
/// of the caller's.
pub(super) fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("OS_")
            || key.starts_with("PYTHON")
            || key.starts_with("PYENV")
            || key == "VIRTUAL_ENV"
        {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("PATH", PATH).env("LC_ALL", "C.UTF-8")
}

/// Runs a command to its end, its output appended to `log`.
pub(super) fn run_appending(log: &Path, cmd: &mut Command) -> Result<(), String> {
    let described = format!(
        "{:?} {:?}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>()
    );
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let _ = writeln!(file, "$ {described}");
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .map_err(|e| format!("cannot run {described}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{described} failed ({status})"))
    }
}

pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}
