//! The harnesses of dop's tests and benchmarks, one per concern, and the test nodes of
//! `cargo xtask testbed`:
//!
//! * [`Testbed`] (this module): real OpenSSH `sshd` processes listening on loopback addresses
//!   (`127.10.x.y`), one process per 16 addresses (sshd's limit), with generated host and
//!   client keys and a login whose shell is `/bin/sh`;
//! * [`dopc::DopcServer`]: a real `dopc serve` on an ephemeral loopback port;
//! * [`dopv::DopvLab`]: the `dopv` binary against a store of its own, with local nodes;
//! * [`postgres::PgCluster`]: a real PostgreSQL cluster (initdb in a temporary directory) on
//!   `127.0.80.1`, for the store's PostgreSQL backend;
//! * [`cli`]: the command-line checks every binary shares; [`process::Running`]: a process a
//!   test starts; [`chaos`], [`libvirt`], [`openstack`] and [`vsphere`]: kill points and the
//!   three infrastructure test beds; [`fleet`]: the many-nodes-on-port-22 bed and its login
//!   floor; [`puppet`]: the Puppet server bed; [`resolver::SilentResolver`]: a name server that never answers.
//!
//! Every process a harness starts runs as a child of the process that started it and is
//! stopped by pid when its value is dropped (or by `stop`), pass or fail. Nothing listens
//! beyond loopback.
//!
//! sshd runs in the foreground (`-D`). As root the login is the user `doptest` (created when
//! missing, no password, `/bin/sh`); otherwise sshd runs as the current user, who is also the
//! login.
#![deny(missing_docs)]

mod bed;
pub mod chaos;
pub mod cli;
pub mod dopc;
pub mod dopv;
pub mod fleet;
pub mod libvirt;
pub mod openstack;
pub mod postgres;
pub mod process;
pub mod puppet;
pub mod resolver;
pub mod vsphere;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The sshd binary (it must be started by its absolute path).
pub const SSHD: &str = "/usr/sbin/sshd";
/// Most addresses one sshd process listens on (`MAX_LISTEN_SOCKS`).
pub const ADDRESSES_PER_SSHD: usize = 16;
/// The login used when running as root.
pub const ROOT_LOGIN: &str = "doptest";

/// Why the testbed could not start.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// OpenSSH is not installed.
    #[error("{SSHD} is missing: install openssh-server (`bash .ci/install-deps` does)")]
    NoSshd,
    /// A setup command failed.
    #[error("{what} failed: {detail}")]
    Setup {
        /// What was being done.
        what: String,
        /// Its output or error.
        detail: String,
    },
    /// sshd did not come up.
    #[error("sshd did not listen on {address} within {seconds} s; its log: {}", log.display())]
    NotListening {
        /// The address.
        address: SocketAddr,
        /// How long we waited.
        seconds: u64,
        /// sshd's log file.
        log: PathBuf,
    },
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Settings of a testbed.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many nodes (addresses).
    pub nodes: usize,
    /// The port every node listens on.
    pub port: u16,
    /// sshd's `MaxSessions` (stock: 10).
    pub max_sessions: u32,
    /// sshd's `MaxStartups` (stock: `10:30:100`).
    pub max_startups: String,
    /// The first node's address is `127.10.0.<first>`; the others follow.
    pub first: u32,
    /// sshd's `LogLevel` (`VERBOSE`; `DEBUG1` also logs each forwarded connection).
    pub log_level: String,
    /// More sshd configuration lines, appended as they are.
    pub extra_config: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: 4,
            port: 2222,
            max_sessions: 10,
            max_startups: "10:30:100".into(),
            first: 1,
            log_level: "VERBOSE".into(),
            extra_config: String::new(),
        }
    }
}

impl Options {
    /// `nodes` nodes on `port`, the first at `127.10.0.<first>` (see [`address`]); the rest as
    /// by default.
    pub fn new(nodes: usize, port: u16, first: u32) -> Options {
        Options {
            nodes,
            port,
            first,
            ..Options::default()
        }
    }
}

/// Running test nodes.
pub struct Testbed {
    dir: PathBuf,
    /// The nodes' addresses, in order.
    pub addresses: Vec<Ipv4Addr>,
    /// Their port.
    pub port: u16,
    /// The login name.
    pub user: String,
    children: Vec<Child>,
}

fn run(what: &str, cmd: &mut Command) -> Result<String, TestbedError> {
    let out = cmd.output().map_err(|e| TestbedError::Setup {
        what: what.to_string(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(TestbedError::Setup {
            what: what.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn write(path: &Path, text: &str) -> Result<(), TestbedError> {
    std::fs::write(path, text).map_err(|source| TestbedError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The workspace root: the nearest directory above this crate's (else above the current
/// directory) whose `Cargo.toml` has a `[workspace]` table.
pub fn workspace_root() -> Option<PathBuf> {
    let from_manifest = workspace_above(Path::new(env!("CARGO_MANIFEST_DIR")));
    from_manifest.or_else(|| workspace_above(&std::env::current_dir().ok()?))
}

fn workspace_above(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        })
        .map(Path::to_path_buf)
}

/// Generates an ed25519 key pair without a passphrase: the private key at `path`, the public
/// key beside it (`.pub`), with the comment `comment`.
pub fn generate_key(path: &Path, comment: &str) -> Result<(), TestbedError> {
    run(
        "ssh-keygen",
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
    )
    .map(drop)
}

/// The address of node `i` (from 0) for a first address `first`: `127.10.<hi>.<lo>`, skipping
/// `.0` and `.255`.
pub fn address(first: u32, i: usize) -> Ipv4Addr {
    let n = first as usize - 1 + i;
    let (hi, lo) = (n / 254, n % 254 + 1);
    Ipv4Addr::new(
        127,
        10,
        u8::try_from(hi).unwrap_or(u8::MAX),
        u8::try_from(lo).unwrap_or(1),
    )
}

impl Testbed {
    /// True when OpenSSH's sshd is installed.
    pub fn available() -> bool {
        Path::new(SSHD).exists()
    }

    /// Starts the nodes in `dir` (created; keys and configuration go there).
    pub fn start(dir: &Path, options: &Options) -> Result<Testbed, TestbedError> {
        if !Testbed::available() {
            return Err(TestbedError::NoSshd);
        }
        std::fs::create_dir_all(dir).map_err(|source| TestbedError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let dir = dir.canonicalize().map_err(|source| TestbedError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        for key in ["host_ed25519", "client_ed25519"] {
            let path = dir.join(key);
            if !path.exists() {
                generate_key(&path, key)?;
            }
        }
        let root = run("id -u", Command::new("id").arg("-u"))? == "0";
        let user = if root {
            if run("id doptest", Command::new("id").arg(ROOT_LOGIN)).is_err() {
                run(
                    "useradd",
                    Command::new("useradd").args([
                        "-r",
                        "-M",
                        "-d",
                        "/nonexistent",
                        "-s",
                        "/bin/sh",
                        ROOT_LOGIN,
                    ]),
                )?;
            }
            // With UsePAM off, sshd treats useradd's '!' password as a locked account.
            run(
                "usermod",
                Command::new("usermod").args(["-p", "*", "-d", "/tmp", ROOT_LOGIN]),
            )?;
            // sshd refuses to start without its privilege separation directory.
            std::fs::create_dir_all("/run/sshd").map_err(|source| TestbedError::Io {
                path: PathBuf::from("/run/sshd"),
                source,
            })?;
            ROOT_LOGIN.to_string()
        } else {
            run("id -un", Command::new("id").arg("-un"))?
        };
        let addresses: Vec<Ipv4Addr> = (0..options.nodes)
            .map(|i| address(options.first, i))
            .collect();
        let mut testbed = Testbed {
            dir: dir.clone(),
            addresses: addresses.clone(),
            port: options.port,
            user,
            children: Vec::new(),
        };
        for (group, chunk) in addresses.chunks(ADDRESSES_PER_SSHD).enumerate() {
            let config = dir.join(format!("sshd_config.{group}"));
            let mut text = format!("Port {}\n", options.port);
            for a in chunk {
                text.push_str(&format!("ListenAddress {a}\n"));
            }
            text.push_str(&format!(
                "HostKey {dir}/host_ed25519\nPidFile {dir}/sshd.{group}.pid\n\
                 AuthorizedKeysFile {dir}/client_ed25519.pub\nPermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nMaxSessions {}\nMaxStartups {}\nAllowTcpForwarding yes\n\
                 LogLevel {}\nPrintMotd no\n{}",
                options.max_sessions,
                options.max_startups,
                options.log_level,
                options.extra_config,
                dir = dir.display(),
            ));
            write(&config, &text)?;
            run(
                "sshd -t",
                Command::new(SSHD).arg("-t").arg("-f").arg(&config),
            )?;
            let log = dir.join(format!("sshd.{group}.log"));
            let child = Command::new(SSHD)
                .arg("-D")
                .arg("-f")
                .arg(&config)
                .arg("-E")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| TestbedError::Setup {
                    what: "starting sshd".into(),
                    detail: e.to_string(),
                })?;
            testbed.children.push(child);
            for a in chunk {
                testbed.wait_listening(SocketAddr::from((*a, options.port)), &log)?;
            }
        }
        Ok(testbed)
    }

    fn wait_listening(&self, address: SocketAddr, log: &Path) -> Result<(), TestbedError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TestbedError::NotListening {
            address,
            seconds: 10,
            log: log.to_path_buf(),
        })
    }

    /// The directory with the keys, configuration and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The private key the nodes accept.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_ed25519")
    }

    /// OpenSSH's client, logging in to node `at` with the client key, host keys recorded in
    /// `known_hosts` (unchecked); the remote command is added by the caller.
    pub fn openssh(&self, at: usize, known_hosts: &Path) -> Command {
        let mut ssh = Command::new("ssh");
        ssh.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
        ])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "LogLevel=ERROR", "-p", &self.port.to_string(), "-i"])
        .arg(self.client_key())
        .arg(format!("{}@{}", self.user, self.addresses[at]));
        ssh
    }

    /// The nodes' public host key (`ssh-ed25519 AAAA… host_ed25519`).
    pub fn host_key(&self) -> PathBuf {
        self.dir.join("host_ed25519.pub")
    }

    /// Starts nodes in `dir` that accept the client key of the testbed directory `keys` (a
    /// testbed's [`dir`](Testbed::dir)): the key pair is copied into `dir` first; the host key
    /// is `dir`'s own.
    pub fn start_with_client_key_of(
        keys: &Path,
        dir: &Path,
        options: &Options,
    ) -> Result<Testbed, TestbedError> {
        std::fs::create_dir_all(dir).map_err(|source| TestbedError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        for key in ["client_ed25519", "client_ed25519.pub"] {
            let to = dir.join(key);
            std::fs::copy(keys.join(key), &to).map_err(|source| TestbedError::Io {
                path: to.clone(),
                source,
            })?;
        }
        Testbed::start(dir, options)
    }

    /// The process ids of the sshd processes.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Stops every sshd (by pid) and waits for it.
    pub fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }

    /// Kills the sshd processes and every session they started (a node that crashes), by pid.
    pub fn crash(&mut self) {
        let mut pids: Vec<u32> = Vec::new();
        for root in self.pids() {
            pids.extend(descendants(root));
        }
        self.stop();
        for pid in pids {
            // Only this testbed's sshd processes and their sessions.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }

    /// Leaves the sshd processes running when this value is dropped (for `cargo xtask testbed
    /// up`), returning their pids for a later `down`.
    pub fn detach(mut self) -> Vec<u32> {
        let pids = self.pids();
        self.children.clear();
        pids
    }
}

/// The processes below `pid` (children, their children, …), from `/proc`.
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // The parent is the second field after the parenthesised command name.
            let after = stat.rsplit_once(')')?.1;
            let ppid: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((child, ppid))
        })
        .collect();
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (child, parent) in &parents {
            if *parent == p && !found.contains(child) {
                found.push(*child);
                todo.push(*child);
            }
        }
    }
    found
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes a directory unusable while it lives: it is moved aside and a plain file takes its
/// place (as a provider whose storage is gone); dropping it puts the directory back, also when
/// a test fails, so that whatever runs from it can be stopped by the test's clean-up.
pub struct DirectoryAway {
    dir: PathBuf,
    aside: PathBuf,
}

impl DirectoryAway {
    /// Moves `dir` aside (to `<dir>.away`) and writes a file in its place.
    pub fn new(dir: &Path) -> std::io::Result<DirectoryAway> {
        let aside = dir.with_extension("away");
        std::fs::rename(dir, &aside)?;
        std::fs::write(dir, "not a directory: moved aside by a test\n")?;
        Ok(DirectoryAway {
            dir: dir.to_path_buf(),
            aside,
        })
    }
}

impl Drop for DirectoryAway {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.dir);
        let _ = std::fs::rename(&self.aside, &self.dir);
    }
}

/// A small file system (tmpfs) mounted for a test, to fill up: a full disk under a store or a
/// log directory. Unmounted when dropped, pass or fail. Needs root (CI runs as root).
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as mount takes it, e.g. `4m`) on `dir` (created when
    /// missing). Err with the reason when this machine cannot (not root, no `mount`).
    pub fn mount(dir: &Path, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Fills the disk with a file (`.filler`) until no byte fits; returns the file, whose
    /// removal makes room again.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join(".filler");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let block = vec![0u8; 64 * 1024];
            while f.write_all(&block).is_ok() {}
            // Then the last partial block, byte by byte in larger steps.
            while f.write_all(&block[..512]).is_ok() {}
            while f.write_all(&block[..1]).is_ok() {}
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// The log of a server a test starts: its standard error appended to `<dir>/server.log` (every
/// start of the same server appends), to show when the test fails.
pub fn server_log(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("the server log can be created")
}

/// Prints the end of `<dir>/server.log` when the current thread is panicking (a test failed),
/// so a slow or failing server can be diagnosed from the test's output.
pub fn show_server_log_on_failure(dir: &Path) {
    if std::thread::panicking() {
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "--- the server's log (last 60 lines) ---\n{}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        );
    }
}

/// Sends `signal` to a process; a pid that is gone (or does not fit a pid) is left alone.
pub fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory effects; a pid that is gone makes it fail with ESRCH.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Polls `ready` every 100 ms until it is true (`Ok`) or `limit` has passed (`Err`).
#[allow(clippy::result_unit_err)]
pub fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
