//! A process a test starts: killed by pid and reaped when it is dropped, pass or fail.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output};

/// A child process started by a test: killed (by pid) and reaped when dropped, also while a
/// failed test unwinds.
#[derive(Debug)]
pub struct Running(pub Child);

impl Running {
    /// Starts `command` (panics when it cannot be started).
    pub fn spawn(command: &mut Command) -> Running {
        Running(command.spawn().expect("the process starts"))
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Waits for it to end.
    pub fn wait(&mut self) -> ExitStatus {
        self.0.wait().expect("the process can be waited for")
    }

    /// Waits for it to end, collecting what it wrote to piped standard output and error.
    pub fn wait_with_output(&mut self) -> Output {
        let stderr = self.0.stderr.take();
        // Read standard error beside standard output: a full pipe would block the process.
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut e) = stderr {
                let _ = e.read_to_end(&mut buf);
            }
            buf
        });
        let mut stdout = Vec::new();
        if let Some(mut o) = self.0.stdout.take() {
            let _ = o.read_to_end(&mut stdout);
        }
        let stderr = reader.join().unwrap_or_default();
        Output {
            status: self.wait(),
            stdout,
            stderr,
        }
    }

    /// Kills it (SIGKILL, by pid) and reaps it; nothing happens when it has ended already.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Bytes of a process's output as text (lossy).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The resident memory of process `pid` in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    status_number(pid, "VmRSS:")
}

/// The threads of process `pid` now (0 when it cannot be read).
pub fn threads(pid: u32) -> u64 {
    status_number(pid, "Threads:")
}

/// The most resident memory process `pid` has had so far, in KiB (0 when it cannot be read):
/// what a request cost at its peak, even when the memory was given back by the time it ended.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_number(pid, "VmHWM:")
}

/// The number after `field` in `/proc/<pid>/status`.
fn status_number(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
