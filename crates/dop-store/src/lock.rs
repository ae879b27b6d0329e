//! The run lock: one mutating operation per plan at a time, across processes.
//!
//! It is an advisory `flock` on `<plan>/run.lock`, which the kernel releases when the holder
//! exits however it exits, so a `kill -9` never leaves a lock behind. The file also records who
//! holds it (pid, host, command, since), so a refused caller can say who is in the way, and a
//! taker can tell that it took over from a process that died.

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use dop_core::time::{now_ms, rfc3339};

/// Who holds (or held) a run lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// What it is doing (`dopi run`, `update`, ...).
    pub command: String,
    /// Since when, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

impl Holder {
    pub(crate) fn of_this_process(command: &str) -> Holder {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown-host".to_string());
        Holder {
            pid: std::process::id(),
            host,
            command: command.to_string(),
            since_ms: now_ms(),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' (pid {} on {}, since {})",
            self.command,
            self.pid,
            self.host,
            rfc3339(self.since_ms)
        )
    }
}

/// A held run lock; released when dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    /// The holder whose lock was left behind by a process that ended without releasing it
    /// (the kernel released it), if any.
    pub took_over_from: Option<Holder>,
}

impl RunLock {
    /// Takes the lock at `path` for `command`, or says who holds it.
    pub fn acquire(path: &Path, plan: &str, command: &str) -> Result<RunLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::io(path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // The holder writes its record just after it takes the lock: give it a moment.
                let mut holder = read_holder(&mut file);
                for _ in 0..40 {
                    if holder.is_some() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    holder = read_holder(&mut file);
                }
                let holder = holder.unwrap_or(Holder {
                    pid: 0,
                    host: "an unknown host".into(),
                    command: "another process (still starting)".into(),
                    since_ms: now_ms(),
                });
                return Err(StoreError::Locked {
                    plan: plan.to_string(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(StoreError::io(path, e)),
        }
        let took_over_from = read_holder(&mut file);
        let me = Holder::of_this_process(command);
        let text = serde_json::to_string(&me).unwrap_or_default();
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(text.as_bytes())?;
            file.sync_data()
        };
        write(&mut file).map_err(|e| StoreError::io(path, e))?;
        Ok(RunLock {
            file,
            took_over_from,
        })
    }

    /// Who holds the lock at `path` now, if anyone (without taking it).
    pub fn holder(path: &Path) -> Option<Holder> {
        let mut file = File::open(path).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(_) => read_holder(&mut file),
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Clear the holder record so nobody mistakes a finished holder for a crashed one.
        let _ = self.file.set_len(0);
        let _ = self.file.sync_data();
        let _ = self.file.unlock();
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}
