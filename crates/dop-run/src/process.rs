//! Process groups of the programs a run starts (dopi's local commands, dopv's hooks): each is
//! started in a group of its own (`process_group(0)`), so that stopping it reaches what it
//! started too, not only the shell.

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
}
