//! A name server that never answers, for the processes a test starts: they run in a mount
//! namespace of their own where `/etc/resolv.conf` names it, so every name lookup they make
//! (that `/etc/hosts` does not answer) waits out the resolver's timeout, as it does on a machine
//! whose DNS server is down or blocked. The rest of the machine is untouched.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The silent name server's address (port 53: the resolver has no other).
pub const ADDRESS: &str = "127.53.0.1";

/// A silent name server and the `resolv.conf` that names it.
pub struct SilentResolver {
    // Bound, never read: queries are received by the kernel and never answered.
    _socket: UdpSocket,
    conf: PathBuf,
}

impl SilentResolver {
    /// Binds the server (root: port 53) and writes its `resolv.conf` into `dir`, with the
    /// resolver's timeout at `timeout_secs` and one try. `None` (with the reason printed as
    /// `skipped: …`) when this machine cannot: not root, or no `unshare`.
    pub fn start(dir: &Path, timeout_secs: u32) -> Option<SilentResolver> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/unshare").exists() {
            println!("skipped: a silent name server needs root and unshare");
            return None;
        }
        let socket = match UdpSocket::bind((ADDRESS, 53)) {
            Ok(s) => s,
            Err(e) => {
                println!("skipped: cannot bind {ADDRESS}:53 for a silent name server: {e}");
                return None;
            }
        };
        let conf = dir.join("resolv.conf");
        std::fs::write(
            &conf,
            format!("nameserver {ADDRESS}\noptions timeout:{timeout_secs} attempts:1\n"),
        )
        .ok()?;
        Some(SilentResolver {
            _socket: socket,
            conf,
        })
    }

    /// `program args…` in a mount namespace of its own whose `/etc/resolv.conf` names the
    /// silent server. The namespace's first process execs `program`, so the child's pid is the
    /// program's.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("/usr/bin/unshare");
        c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
            .arg(&self.conf)
            .arg(program);
        c
    }
}
