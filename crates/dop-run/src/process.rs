//! Process groups of the programs a run starts (dopi's local commands, dopv's hooks, the
//! `content.exec` programs of `file_deploy`): each is started in a group of its own
//! (`process_group(0)`), so that stopping it reaches what it started too, not only the shell.
//!
//! [`run_limited`] is the one way a run starts such a program: a deadline (then TERM, then KILL
//! to the whole group), the run's stop requests, and a cap on the output it passes on, so that
//! nothing a plan starts on this host runs or writes without an end.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::Stop;

/// How long a program that was sent TERM (its deadline passed, or the run asked) has before
/// its group is killed.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(5);
/// How long the pipes of a killed group are still read: a process that left the group
/// (`setsid`) may hold them open, and must not hold the run.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);

/// Which stream output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout = 0,
    /// Standard error.
    Stderr = 1,
}

/// The limits of one program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// It is sent TERM after this long, and its group KILL [`TERMINATE_GRACE`] later.
    pub timeout: Duration,
    /// Bytes of output (both streams together) passed on; what comes after is not.
    pub max_output: u64,
}

/// What happens when a program's output goes beyond [`Limits::max_output`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// The rest is read and dropped; the program runs on (a log cut with a marker).
    Discard,
    /// The program's group is killed at once (content that must be complete).
    Kill,
}

/// How a limited program ended.
#[derive(Debug)]
pub struct Ended {
    /// Its exit status.
    pub status: ExitStatus,
    /// It ran past its timeout and was stopped.
    pub timed_out: bool,
    /// A stop request of the run (terminate or kill) ended it.
    pub stopped: bool,
    /// Its output went beyond the cap: only the first `max_output` bytes were passed on.
    pub truncated: bool,
}

/// The marker line a log gets where a program's output was cut.
pub fn truncation_marker(max_output: u64) -> String {
    format!("… output truncated after {max_output} bytes")
}

/// Runs `command` (its program and arguments set; stdin, stdout and stderr, the process group
/// and the kill on drop are set here) within `limits`, passing its output to `on_output` in
/// the pieces it arrives in, at most `max_output` bytes in all. On the deadline, or a stop
/// request of `Terminate`, the program's group gets TERM and [`TERMINATE_GRACE`] later KILL; on
/// `Kill` it is killed at once. A program stopped, timed out or cut off takes its whole group
/// with it; one that ended by itself may leave work running on purpose. When the future is
/// dropped, the group is killed.
pub async fn run_limited(
    command: &mut tokio::process::Command,
    limits: Limits,
    overflow: Overflow,
    stop: Option<watch::Receiver<Stop>>,
    mut on_output: impl FnMut(Stream, &[u8]) + Send,
) -> std::io::Result<Ended> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let pid = child.id();
    let mut group = GroupGuard::new(pid);
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (mut out_open, mut err_open) = (true, true);
    let (mut buf_out, mut buf_err) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut budget = Budget::new(limits.max_output);
    let deadline = tokio::time::sleep(limits.timeout);
    tokio::pin!(deadline);
    let (mut stop, mut stop_open) = match stop {
        Some(s) => (s, true),
        None => (watch::channel(Stop::No).1, false),
    };
    let (mut timed_out, mut stopped) = (false, false);
    let mut escalation = Escalation::default();

    let status = loop {
        if escalation.give_up_pipes() {
            (out_open, err_open) = (false, false);
        }
        let next_step = escalation.next_step();
        tokio::select! {
            n = stdout.read(&mut buf_out), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => budget.pass(Stream::Stdout, &buf_out[..n], &mut on_output),
            },
            n = stderr.read(&mut buf_err), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => budget.pass(Stream::Stderr, &buf_err[..n], &mut on_output),
            },
            status = child.wait(), if !out_open && !err_open => break status?,
            () = &mut deadline, if !timed_out => {
                timed_out = true;
                escalation.terminate(pid);
            }
            () = next_step => escalation.step(pid),
            changed = stop.changed(), if stop_open => {
                if changed.is_err() {
                    // The run went away: nobody will ask again.
                    stop_open = false;
                    continue;
                }
                match *stop.borrow() {
                    Stop::Terminate => {
                        stopped = true;
                        escalation.terminate(pid);
                    }
                    Stop::Kill => {
                        stopped = true;
                        escalation.kill(pid);
                    }
                    Stop::No | Stop::Graceful => {}
                }
            }
        }
        if budget.exceeded && overflow == Overflow::Kill && !escalation.killed() {
            escalation.kill(pid);
        }
    };
    if timed_out || stopped || budget.exceeded && overflow == Overflow::Kill {
        signal_group(pid, libc::SIGKILL);
    }
    // It ended: what it left running on purpose (`nohup … &`) is its business.
    group.disarm();
    Ok(Ended {
        status,
        timed_out,
        stopped,
        truncated: budget.exceeded,
    })
}

/// The output a program may still pass on.
struct Budget {
    left: u64,
    exceeded: bool,
}

impl Budget {
    fn new(max_output: u64) -> Budget {
        Budget {
            left: max_output,
            exceeded: false,
        }
    }

    fn pass(&mut self, stream: Stream, data: &[u8], on_output: &mut impl FnMut(Stream, &[u8])) {
        let allowed = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(data.len());
        if allowed > 0 {
            on_output(stream, &data[..allowed]);
        }
        self.left -= allowed as u64;
        if allowed < data.len() {
            self.exceeded = true;
        }
    }
}

/// Where stopping a program stands: TERM sent (KILL due at a time), KILL sent (its pipes read
/// until a time), pipes given up.
#[derive(Default)]
struct Escalation {
    kill_at: Option<tokio::time::Instant>,
    pipes_until: Option<tokio::time::Instant>,
    pipes_given_up: bool,
}

impl Escalation {
    fn terminate(&mut self, pid: Option<u32>) {
        if self.kill_at.is_none() && !self.killed() {
            signal_group(pid, libc::SIGTERM);
            self.kill_at = Some(tokio::time::Instant::now() + TERMINATE_GRACE);
        }
    }

    fn kill(&mut self, pid: Option<u32>) {
        signal_group(pid, libc::SIGKILL);
        self.kill_at = None;
        self.pipes_until
            .get_or_insert(tokio::time::Instant::now() + DRAIN_AFTER_KILL);
    }

    fn killed(&self) -> bool {
        self.pipes_until.is_some()
    }

    /// The KILL after TERM, or the end of reading after KILL.
    fn step(&mut self, pid: Option<u32>) {
        if self.kill_at.is_some() {
            self.kill(pid);
        } else {
            self.pipes_given_up = true;
        }
    }

    fn give_up_pipes(&self) -> bool {
        self.pipes_given_up
    }

    fn next_step(&self) -> impl std::future::Future<Output = ()> {
        let at = match self.pipes_given_up {
            true => None,
            false => self.kill_at.or(self.pipes_until),
        };
        async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    }
}

/// Sends `signal` to the process group led by `pid` (nothing when there is none).
pub fn signal_group(pid: Option<u32>, signal: i32) {
    if let Some(pgid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: killpg only sends a signal; the group is the child's own (process_group(0)).
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

/// Kills a program's process group when dropped before the program ended (a run stopped at
/// once drops its work): the program's children go too, not only the shell that tokio's
/// `kill_on_drop` would kill.
#[derive(Debug)]
pub struct GroupGuard(Option<u32>);

impl GroupGuard {
    /// Guards the group led by `pid` (a child started with `process_group(0)`).
    pub fn new(pid: Option<u32>) -> GroupGuard {
        GroupGuard(pid)
    }

    /// The program ended: what it left running on purpose (`nohup … &`) is its business.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.0, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    #[test]
    fn a_dropped_guard_kills_the_whole_group_and_a_disarmed_one_nothing() {
        let start = || {
            std::process::Command::new("/bin/sh")
                .args(["-c", "sleep 30 & echo $!; wait"])
                .stdout(std::process::Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let grandchild = |child: &mut std::process::Child| -> i32 {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            line.trim().parse().unwrap()
        };
        let mut child = start();
        let sleeper = grandchild(&mut child);
        drop(GroupGuard::new(Some(child.id())));
        child.wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(sleeper) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!alive(sleeper), "the shell's child went with the group");

        let mut child = start();
        let sleeper = grandchild(&mut child);
        let mut guard = GroupGuard::new(Some(child.id()));
        guard.disarm();
        drop(guard);
        assert!(alive(sleeper), "a disarmed guard leaves the group alone");
        signal_group(Some(child.id()), libc::SIGKILL);
        child.wait().unwrap();
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn shell(script: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("/bin/sh");
        command.args(["-c", script]);
        command
    }

    fn wait_gone(pid: i32) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        !alive(pid)
    }

    #[test]
    fn a_program_past_its_timeout_is_stopped_with_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("sleeper");
        // The shell ignores TERM, so only the KILL after the grace ends it; its child is the
        // group's too.
        let script = format!(
            "trap '' TERM; sleep 3600 & echo $! > {}; while :; do sleep 1; done",
            pid_file.display()
        );
        let limits = Limits {
            timeout: Duration::from_millis(300),
            max_output: 1024,
        };
        let ended = block_on(run_limited(
            &mut shell(&script),
            limits,
            Overflow::Discard,
            None,
            |_, _| {},
        ))
        .unwrap();
        assert!(
            ended.timed_out && !ended.stopped && !ended.truncated,
            "{ended:?}"
        );
        assert!(!ended.status.success(), "{ended:?}");
        let sleeper: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            wait_gone(sleeper),
            "the program's child went with its group"
        );
    }

    #[test]
    fn output_beyond_the_cap_is_dropped_or_ends_the_program() {
        let limits = Limits {
            timeout: Duration::from_secs(60),
            max_output: 1000,
        };
        let mut seen = Vec::new();
        // 1 MiB on stdout, then a line on stderr: the program runs to its end; only the first
        // 1000 bytes are passed on.
        let ended = block_on(run_limited(
            &mut shell("head -c 1048576 /dev/zero; echo done >&2"),
            limits,
            Overflow::Discard,
            None,
            |_, data| seen.extend_from_slice(data),
        ))
        .unwrap();
        assert!(ended.truncated && !ended.timed_out, "{ended:?}");
        assert!(ended.status.success(), "it ran to its end: {ended:?}");
        assert_eq!(seen.len(), 1000);
        assert_eq!(
            truncation_marker(1000),
            "… output truncated after 1000 bytes"
        );

        // A program that would write for ever is killed at the cap.
        let mut passed = 0;
        let ended = block_on(run_limited(
            &mut shell("while :; do echo yes; done"),
            limits,
            Overflow::Kill,
            None,
            |_, data| passed += data.len(),
        ))
        .unwrap();
        assert!(ended.truncated && !ended.timed_out, "{ended:?}");
        assert!(!ended.status.success(), "{ended:?}");
        assert_eq!(passed, 1000);

        // Within the cap nothing is cut.
        let mut seen = Vec::new();
        let ended = block_on(run_limited(
            &mut shell("printf 'a\\nb\\n'"),
            limits,
            Overflow::Kill,
            None,
            |_, data| seen.extend_from_slice(data),
        ))
        .unwrap();
        assert!(!ended.truncated && ended.status.success(), "{ended:?}");
        assert_eq!(seen, b"a\nb\n");
    }

    #[test]
    fn a_kill_request_of_the_run_ends_the_program_at_once() {
        let (tx, rx) = watch::channel(Stop::No);
        let limits = Limits {
            timeout: Duration::from_secs(3600),
            max_output: 1024,
        };
        let ended = block_on(async {
            let mut sleeper = shell("trap '' TERM; sleep 3600");
            let run = run_limited(&mut sleeper, limits, Overflow::Discard, Some(rx), |_, _| {});
            tokio::pin!(run);
            // Graceful asks nothing of a running program.
            tx.send(Stop::Graceful).unwrap();
            let early = tokio::time::timeout(Duration::from_millis(300), &mut run).await;
            assert!(early.is_err(), "graceful left it running");
            tx.send(Stop::Kill).unwrap();
            tokio::time::timeout(Duration::from_secs(20), run)
                .await
                .expect("a kill request ends it within seconds")
        })
        .unwrap();
        assert!(ended.stopped && !ended.timed_out, "{ended:?}");
    }
}
