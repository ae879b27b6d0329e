//! `local`: each node a lightweight container on this host, made by dopv.
//!
//! As root a node is a set of namespaces started by `unshare`: its own hostname (UTS), its own
//! processes (PID: its sshd is the only thing in it at boot), and its own file system view
//! (mount): `/etc` is an overlay on the host's (users and programs as on the host, every change
//! private to the node), `/root`, `/home` and `/var` are the node's own directories, `/tmp` and
//! `/run` are fresh on every boot. Its sshd listens on the node's own loopback address (the
//! plan's static 127.x.y.z interface address) and the infrastructure's `ssh_port`, with a host
//! key made when the node is created and the plan's credentials installed. `shutdown -r`,
//! `reboot` and `poweroff` inside the node restart or stop it, as on a machine. Data disks are
//! image files in a pool directory, hard-linked into the node (`/var/lib/dop-disks`) while
//! attached.
//!
//! Without root there are no namespaces: a node is one sshd on its address, sharing the host's
//! file system and hostname, and only the current user can log in. dopv says so when it
//! creates such a node.
//!
//! On disk, under the provider's directory (`<store>/local` unless configured):
//!
//! ```text
//! nodes/<plan>/<node>/   node.json (its "hardware"), booted.json (what it runs with),
//!                        etc/{upper,work} root/ home/ var/ disks/ control/, console.log,
//!                        supervisor.pid, init.sh, supervise.sh, power.sh
//! pools/<pool>/<plan>--<node>--<disk>.img
//! ```
//!
//! A node runs under a supervisor shell in its own session; powering off kills that session.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dop_core::plan::{CredentialKind, DataDisk, Dns, IpSetting, ProviderKind};
use dop_core::DataSize;
use dop_run::logs::NodeLog;
use serde::{Deserialize, Serialize};

use crate::actual::{Actual, ActualDisk, ActualInterface, Power, SshEndpoint};
use crate::provider::{ChangeKind, NodeSpec, Provider, ProviderError, Result};
use crate::state::DiskRecord;

/// How long a node may take to answer on its SSH port after power-on, or to go quiet after
/// power-off.
const POWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The `local` provider for one plan. Its operations block (processes, files), so they run in
/// `tokio::task::block_in_place`: call it from a multi-thread runtime (the command line's and
/// dopc's are).
pub struct Local {
    root: PathBuf,
    plan: String,
    /// Root can make namespaces; anyone else gets plain sshd processes.
    namespaces: bool,
}

/// A node's "hardware": what it boots with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct NodeConfig {
    fqdn: String,
    address: IpAddr,
    port: u16,
    cores: u32,
    memory: DataSize,
    storage: DataSize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    interfaces: Vec<ActualInterface>,
    #[serde(default)]
    dns: Dns,
    users: Vec<String>,
    namespaces: bool,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::new(format!("{what} {}: {e}", path.display()))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_error("cannot write", &tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error("cannot write", path, e))
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| io_error("cannot create", path, e))
}

/// The node's address: its first static address in 127.0.0.0/8.
fn loopback_address(spec: &NodeSpec) -> Option<IpAddr> {
    spec.node.interfaces.iter().find_map(|i| match i.ip {
        IpSetting::Static(ip @ IpAddr::V4(v4)) if v4.is_loopback() => Some(ip),
        _ => None,
    })
}

fn interfaces(spec: &NodeSpec) -> Vec<ActualInterface> {
    ActualInterface::planned(&spec.node.interfaces)
}

/// The users a node's credentials log in as, sorted, without repeats.
fn users(spec: &NodeSpec) -> Vec<String> {
    let mut users: Vec<String> = spec
        .credentials
        .iter()
        .filter_map(|c| match &c.kind {
            CredentialKind::SshKey { username, .. }
            | CredentialKind::UsernamePassword { username, .. } => Some(username.clone()),
            CredentialKind::Kerberos { .. } => None,
        })
        .collect();
    users.sort();
    users.dedup();
    users
}

fn process_alive(pid: i32) -> bool {
    // A zombie (its parent has not reaped it yet) is dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

impl Local {
    /// The provider for `plan`'s local nodes under `root`.
    pub fn new(root: &Path, plan: &str) -> Local {
        Local {
            root: root.to_path_buf(),
            plan: plan.to_string(),
            // SAFETY: geteuid has no preconditions.
            namespaces: unsafe { libc::geteuid() } == 0,
        }
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(&self.plan).join(node)
    }

    fn config(&self, spec: &NodeSpec) -> Result<NodeConfig> {
        let address = loopback_address(spec)
            .ok_or_else(|| ProviderError::new("the node has no static address in 127.0.0.0/8"))?;
        let sizing = spec
            .node
            .sizing(ProviderKind::Local)
            .expect("local nodes are sized by flavors");
        Ok(NodeConfig {
            fqdn: spec.node.fqdn.trim_end_matches('.').to_string(),
            address,
            port: spec.ssh_port,
            cores: sizing.cores,
            memory: sizing.memory,
            storage: sizing.storage,
            image: spec.node.image.clone(),
            interfaces: interfaces(spec),
            dns: spec.node.dns.clone(),
            users: users(spec),
            namespaces: self.namespaces,
        })
    }

    fn read_config(dir: &Path, file: &str) -> Option<NodeConfig> {
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn supervisor(&self, dir: &Path) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(dir.join("supervisor.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy());
        (ours && process_alive(pid)).then_some(pid)
    }

    /// Writes what the node boots with: hardware, hostname, sshd configuration, credentials,
    /// resolver, scripts.
    fn write_boot_files(&self, dir: &Path, spec: &NodeSpec) -> Result<NodeConfig> {
        // Checked with the plan already; again here, where the names become paths and lines.
        for user in users(spec) {
            dop_core::plan::check_login_name(&user).map_err(ProviderError::new)?;
        }
        let config = self.config(spec)?;
        let control = dir.join("control");
        mkdir(&control.join("authorized_keys"))?;
        let mut passwords = String::new();
        let mut keys: std::collections::BTreeMap<String, String> =
            std::collections::BTreeMap::new();
        for credential in &spec.credentials {
            match &credential.kind {
                CredentialKind::SshKey {
                    username,
                    public_key,
                    private_key,
                } => {
                    let key = match (public_key, private_key) {
                        (Some(p), _) => p.load().map_err(|e| {
                            ProviderError::new(format!("credential '{}': {e}", credential.name))
                        })?,
                        (None, Some(p)) => public_of(
                            dir,
                            &p.load().map_err(|e| {
                                ProviderError::new(format!("credential '{}': {e}", credential.name))
                            })?,
                        )
                        .map_err(|e| {
                            ProviderError::new(format!("credential '{}': {e}", credential.name))
                        })?,
                        (None, None) => continue,
                    };
                    let entry = keys.entry(username.clone()).or_default();
                    entry.push_str(key.trim());
                    entry.push('\n');
                }
                CredentialKind::UsernamePassword { username, password } => {
                    let secret = password.load().map_err(|e| {
                        ProviderError::new(format!("credential '{}': {e}", credential.name))
                    })?;
                    // chpasswd reads `user:password` lines: a newline would set another user's.
                    if secret.contains(['\n', '\r']) {
                        return Err(ProviderError::new(format!(
                            "credential '{}': the password holds a line break, which a local \
                             node cannot take (chpasswd reads one password per line)",
                            credential.name
                        )));
                    }
                    passwords.push_str(&format!("{username}:{secret}\n"));
                }
                CredentialKind::Kerberos { .. } => {}
            }
        }
        // Keys of users no longer named are removed.
        if let Ok(entries) = std::fs::read_dir(control.join("authorized_keys")) {
            for e in entries.flatten() {
                if !keys.contains_key(&*e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for (user, text) in &keys {
            write(&control.join("authorized_keys").join(user), text, 0o644)?;
        }
        write(&control.join("passwords"), &passwords, 0o600)?;
        let mut resolv = String::new();
        for s in &config.dns.name_servers {
            resolv.push_str(&format!("nameserver {s}\n"));
        }
        if !config.dns.search_domains.is_empty() {
            resolv.push_str(&format!("search {}\n", config.dns.search_domains.join(" ")));
        }
        write(&control.join("resolv.conf"), &resolv, 0o644)?;
        write(&dir.join("hostname"), &format!("{}\n", config.fqdn), 0o644)?;
        let (host_key, keys_file) = if self.namespaces {
            (
                "/etc/ssh/ssh_host_ed25519_key".to_string(),
                "/run/dop/authorized_keys/%u".to_string(),
            )
        } else {
            (
                dir.join("ssh_host_ed25519_key").display().to_string(),
                control.join("authorized_keys/%u").display().to_string(),
            )
        };
        let sshd_config = format!(
            "# Written by dopv for the local node {node}.\nListenAddress {addr}\nHostKey {host_key}\n\
             AuthorizedKeysFile {keys_file}\nPermitRootLogin yes\nPubkeyAuthentication yes\n\
             PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\n\
             PidFile none\nMaxSessions 10\nMaxStartups 100:30:200\nAllowTcpForwarding yes\n\
             Subsystem sftp internal-sftp\nPrintMotd no\nLogLevel VERBOSE\n",
            node = spec.node.name,
            addr = SocketAddr::new(config.address, config.port),
        );
        let sshd_path = if self.namespaces {
            dir.join("etc/upper/ssh/dop_sshd_config")
        } else {
            dir.join("sshd_config")
        };
        write(&sshd_path, &sshd_config, 0o644)?;
        write(&dir.join("init.sh"), INIT_SH, 0o755)?;
        write(&dir.join("supervise.sh"), SUPERVISE_SH, 0o755)?;
        write(&dir.join("power.sh"), POWER_SH, 0o755)?;
        write(
            &dir.join("node.json"),
            &serde_json::to_string_pretty(&config).unwrap_or_default(),
            0o644,
        )?;
        Ok(config)
    }

    /// Puppet's `csr_attributes.yaml` with the node's autosign challenge, where its agent reads
    /// it: `/etc/puppetlabs/puppet/` inside the node (its `/etc` overlay); without namespaces
    /// the node shares this host's `/etc`, so it goes into the node's directory instead.
    fn hand_over_puppet_challenge(&self, dir: &Path, spec: &NodeSpec) -> Result<()> {
        let Some(challenge) = &spec.puppet_challenge else {
            return Ok(());
        };
        let path = if self.namespaces {
            let relative = dop_puppet::challenge::CSR_ATTRIBUTES_PATH.trim_start_matches("/etc/");
            dir.join("etc/upper").join(relative)
        } else {
            dir.join("csr_attributes.yaml")
        };
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        write(
            &path,
            &dop_puppet::challenge::csr_attributes(challenge),
            0o600,
        )
    }

    fn start(&self, dir: &Path, config: &NodeConfig, log: &NodeLog) -> Result<()> {
        if self.supervisor(dir).is_some() {
            return Ok(());
        }
        let addr = SocketAddr::new(config.address, config.port);
        if listening(addr) {
            return Err(ProviderError::new(format!(
                "{addr} is in use by another process: the node's sshd cannot listen there \
                 (choose another address or `ssh_port`)"
            )));
        }
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("console.log"))
            .map_err(|e| io_error("cannot open", &dir.join("console.log"), e))?;
        let console2 = console
            .try_clone()
            .map_err(|e| io_error("cannot open", &dir.join("console.log"), e))?;
        // `setsid -f` forks: the supervisor is not our child, so it outlives dopv and never
        // waits as a zombie of ours; it writes its own pid.
        let status = std::process::Command::new("setsid")
            .arg("-f")
            .arg("sh")
            .arg(dir.join("supervise.sh"))
            .arg(dir)
            .arg(if self.namespaces {
                "namespaces"
            } else {
                "plain"
            })
            .stdin(std::process::Stdio::null())
            .stdout(console)
            .stderr(console2)
            .status()
            .map_err(|e| ProviderError::new(format!("cannot start the node (setsid): {e}")))?;
        if !status.success() {
            return Err(ProviderError::new(format!(
                "cannot start the node: setsid {status}"
            )));
        }
        let started = Instant::now();
        let mut heartbeat =
            super::Heartbeat::new(format!("the node to answer SSH on {addr}"), POWER_TIMEOUT);
        loop {
            heartbeat.tick("no SSH banner yet");
            if super::ssh_answers(addr) {
                log.line(&format!("local: the node answers on {addr}"));
                return Ok(());
            }
            let supervisor_gone =
                started.elapsed() > Duration::from_secs(2) && self.supervisor(dir).is_none();
            if supervisor_gone || started.elapsed() > POWER_TIMEOUT {
                let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
                let tail: Vec<&str> = console.lines().rev().take(8).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(ProviderError::new(format!(
                    "the node did not answer on {addr} within {} s; its console says:\n{}",
                    POWER_TIMEOUT.as_secs(),
                    tail.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&self, dir: &Path, log: &NodeLog) -> Result<()> {
        let Some(pid) = self.supervisor(dir) else {
            return Ok(());
        };
        // The supervisor leads its own session and process group; `unshare --kill-child` takes
        // the node's PID namespace down with it.
        // SAFETY: kill has no memory preconditions.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let addr = Self::read_config(dir, "booted.json")
            .or_else(|| Self::read_config(dir, "node.json"))
            .map(|c| SocketAddr::new(c.address, c.port));
        let started = Instant::now();
        while process_alive(pid) || addr.is_some_and(listening) {
            if started.elapsed() > POWER_TIMEOUT {
                return Err(ProviderError::new(format!(
                    "the node did not stop within {} s (supervisor pid {pid})",
                    POWER_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        log.line("local: the node is off");
        Ok(())
    }

    /// Runs a command inside the running node (its mount namespace).
    fn inside(&self, dir: &Path, script: &str) -> Result<()> {
        let Some(pid) = self.init_pid(dir) else {
            return Ok(());
        };
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "--", "sh", "-c", script])
            .output()
            .map_err(|e| ProviderError::new(format!("nsenter: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ProviderError::new(format!(
                "inside the node, `{script}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// The host pid of the node's init (the child of its `unshare`).
    fn init_pid(&self, dir: &Path) -> Option<i32> {
        if !self.namespaces {
            return None;
        }
        let unshare: i32 = std::fs::read_to_string(dir.join("control/unshare.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let children =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    fn pool_file(&self, spec: &NodeSpec, disk: &DataDisk) -> PathBuf {
        let pool = disk
            .pool
            .clone()
            .or_else(|| spec.node.infrastructure_properties.default_pool.clone())
            .unwrap_or_else(|| "default".into());
        self.root.join("pools").join(pool).join(format!(
            "{}--{}--{}.img",
            self.plan, spec.node.name, disk.name
        ))
    }
}

/// The public key of a private key, by `ssh-keygen -y` on a private temporary file.
fn public_of(dir: &Path, private: &str) -> std::result::Result<String, String> {
    let tmp = dir.join("control/.derive-key");
    write(&tmp, private, 0o600).map_err(|e| e.0)?;
    let out = std::process::Command::new("ssh-keygen")
        .args(["-y", "-f"])
        .arg(&tmp)
        .output();
    let _ = std::fs::remove_file(&tmp);
    match out {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "the public key cannot be derived from the private key: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("ssh-keygen: {e}")),
    }
}

#[async_trait]
impl Provider for Local {
    async fn check(&self) -> Result<()> {
        mkdir(&self.root)?;
        for program in ["setsid", "sshd", "ssh-keygen"]
            .iter()
            .chain(if self.namespaces {
                &["unshare", "nsenter"][..]
            } else {
                &[][..]
            })
        {
            let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(program).exists());
            if !found {
                return Err(ProviderError::new(format!(
                    "the local provider needs `{program}` (install openssh-server and util-linux)"
                )));
            }
        }
        Ok(())
    }

    fn check_node(&self, spec: &NodeSpec) -> Vec<String> {
        let mut problems = Vec::new();
        if loopback_address(spec).is_none() {
            problems.push(
                "a local node needs an interface with a static address in 127.0.0.0/8 (its sshd \
                 listens there), e.g. interfaces: {eth0: {network: lo, ip: 127.0.10.11}}"
                    .to_string(),
            );
        }
        for user in users(spec) {
            if let Err(e) = dop_core::plan::check_login_name(&user) {
                problems.push(format!("a local node's logins become file names: {e}"));
            }
        }
        if users(spec).is_empty() {
            problems.push(
                "a local node needs 'credentials' (an ssh_key or username_password credential) \
                 so that someone can log in"
                    .to_string(),
            );
        }
        problems
    }

    fn expected(&self, spec: &NodeSpec) -> Actual {
        let sizing = spec.node.sizing(ProviderKind::Local);
        let disks = ActualDisk::planned(&spec.node.disks);
        Actual {
            exists: true,
            power: Some(Power::On),
            fqdn: Some(spec.node.fqdn.trim_end_matches('.').to_string()),
            image: spec.node.image.clone(),
            cores: sizing.map(|s| s.cores),
            memory: sizing.map(|s| s.memory),
            storage: sizing.map(|s| s.storage),
            interfaces: Some(interfaces(spec)),
            disks: Some(disks),
            credentials: Some(users(spec)),
            dns: Some(spec.node.dns.clone()),
            tags: None,
            ssh_port: Some(spec.ssh_port),
            flavor: None,
            security_groups: None,
            ssh: loopback_address(spec).map(|a| SshEndpoint {
                address: a.to_string(),
                port: spec.ssh_port,
            }),
        }
    }

    async fn read(&self, spec: &NodeSpec) -> Result<Actual> {
        // The node's processes and files are blocking work: off the async workers.
        tokio::task::block_in_place(|| {
            let dir = self.node_dir(&spec.node.name);
            let Some(config) = Self::read_config(&dir, "node.json") else {
                return Ok(Actual::default());
            };
            let on = self.supervisor(&dir).is_some();
            // A running node shows what it booted with; a change that needs a reboot shows after it.
            let running = if on {
                Self::read_config(&dir, "booted.json").unwrap_or_else(|| config.clone())
            } else {
                config.clone()
            };
            let mut disks = Vec::new();
            if let Ok(entries) = std::fs::read_dir(dir.join("disks")) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let (Some(name), Ok(meta)) = (name.strip_suffix(".img"), e.metadata()) {
                        disks.push(ActualDisk {
                            name: name.to_string(),
                            size: DataSize(meta.len()),
                        });
                    }
                }
            }
            disks.sort_by(|a, b| a.name.cmp(&b.name));
            let mut users: Vec<String> = std::fs::read_dir(dir.join("control/authorized_keys"))
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let passwords =
                std::fs::read_to_string(dir.join("control/passwords")).unwrap_or_default();
            users.extend(
                passwords
                    .lines()
                    .filter_map(|l| l.split_once(':').map(|(u, _)| u.to_string())),
            );
            users.sort();
            users.dedup();
            Ok(Actual {
                exists: true,
                power: Some(if on { Power::On } else { Power::Off }),
                fqdn: Some(running.fqdn),
                image: running.image,
                cores: Some(running.cores),
                memory: Some(running.memory),
                storage: Some(running.storage),
                interfaces: Some(running.interfaces),
                disks: Some(disks),
                credentials: Some(users),
                dns: Some(config.dns),
                tags: None,
                ssh_port: Some(running.port),
                flavor: None,
                security_groups: None,
                ssh: Some(SshEndpoint {
                    address: running.address.to_string(),
                    port: running.port,
                }),
            })
        })
    }

    async fn create(&self, spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        // The node's processes and files are blocking work: off the async workers.
        tokio::task::block_in_place(|| {
            let dir = self.node_dir(&spec.node.name);
            if dir.join("node.json").exists() {
                return Err(ProviderError::new(format!(
                    "a local node exists already in {}",
                    dir.display()
                )));
            }
            if dir.exists() {
                // Half made by a run that was killed: nothing in it is in use (no node.json, so
                // never started).
                self.stop(&dir, log)?;
                std::fs::remove_dir_all(&dir).map_err(|e| io_error("cannot clean up", &dir, e))?;
                log.line("local: removed a half-made node left by an interrupted run");
            }
            if !self.namespaces {
                log.line(
                    "local: not running as root, so this node has no namespaces: it shares this \
                     host's hostname and file system, and only the current user can log in",
                );
            }
            for sub in [
                "etc/upper/ssh",
                "etc/work",
                "root",
                "home",
                "var",
                "disks",
                "control",
            ] {
                mkdir(&dir.join(sub))?;
            }
            let key = if self.namespaces {
                dir.join("etc/upper/ssh/ssh_host_ed25519_key")
            } else {
                dir.join("ssh_host_ed25519_key")
            };
            let out = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C"])
                .arg(&spec.node.name)
                .arg("-f")
                .arg(&key)
                .output()
                .map_err(|e| ProviderError::new(format!("ssh-keygen: {e}")))?;
            if !out.status.success() {
                return Err(ProviderError::new(format!(
                    "ssh-keygen could not make the host key: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            self.write_boot_files(&dir, spec)?;
            self.hand_over_puppet_challenge(&dir, spec)?;
            log.line(&format!("local: created the node in {}", dir.display()));
            Ok(())
        })
    }

    async fn destroy(&self, spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        // The node's processes and files are blocking work: off the async workers.
        tokio::task::block_in_place(|| {
            let dir = self.node_dir(&spec.node.name);
            self.stop(&dir, log)?;
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error("cannot remove", &dir, e))
                }
                _ => {}
            }
            log.line(&format!("local: removed {}", dir.display()));
            Ok(())
        })
    }

    async fn power(&self, spec: &NodeSpec, on: bool, log: &NodeLog) -> Result<()> {
        // The node's processes and files are blocking work: off the async workers.
        tokio::task::block_in_place(|| {
            let dir = self.node_dir(&spec.node.name);
            if on {
                let config = Self::read_config(&dir, "node.json")
                    .ok_or_else(|| ProviderError::new("the node does not exist"))?;
                self.start(&dir, &config, log)
            } else {
                self.stop(&dir, log)
            }
        })
    }

    fn change_kind(&self, field: &str) -> ChangeKind {
        match field {
            "credentials" | "dns" | "disks" | "power" => ChangeKind::InPlace,
            // The node's "hardware" and identity take effect when it boots.
            "cores" | "memory" | "storage" | "flavor" | "fqdn" | "ssh_port" => ChangeKind::Reboot,
            _ => ChangeKind::Redeploy,
        }
    }

    async fn apply(&self, spec: &NodeSpec, field: &str, log: &NodeLog) -> Result<()> {
        // The node's processes and files are blocking work: off the async workers.
        tokio::task::block_in_place(|| {
            let dir = self.node_dir(&spec.node.name);
            self.write_boot_files(&dir, spec)?;
            match field {
                "dns" => self.inside(&dir, "cp /run/dop/resolv.conf /etc/resolv.conf")?,
                "credentials" => self.inside(
                    &dir,
                    "[ ! -s /run/dop/passwords ] || chpasswd < /run/dop/passwords",
                )?,
                _ => {}
            }
            log.line(&format!("local: '{field}' set"));
            Ok(())
        })
    }

    async fn add_disk(&self, spec: &NodeSpec, disk: &DataDisk) -> Result<DiskRecord> {
        let file = self.pool_file(spec, disk);
        if let Some(parent) = file.parent() {
            mkdir(parent)?;
        }
        // The image name is the node's and the disk's: one that exists was made by a run that
        // was killed before it recorded the disk, and is taken over.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&file)
            .map_err(|e| io_error("cannot create the disk image", &file, e))?;
        f.set_len(disk.size.bytes())
            .map_err(|e| io_error("cannot size the disk image", &file, e))?;
        if !disk.thin {
            use std::os::fd::AsRawFd;
            // SAFETY: the descriptor is open for the duration of the call.
            let r = unsafe {
                libc::posix_fallocate(f.as_raw_fd(), 0, disk.size.bytes() as libc::off_t)
            };
            if r != 0 {
                let _ = std::fs::remove_file(&file);
                return Err(io_error(
                    "cannot allocate the disk image",
                    &file,
                    std::io::Error::from_raw_os_error(r),
                ));
            }
        }
        Ok(DiskRecord {
            name: disk.name.clone(),
            id: file.display().to_string(),
            pool: disk
                .pool
                .clone()
                .or_else(|| spec.node.infrastructure_properties.default_pool.clone()),
            size: disk.size.bytes(),
            node: spec.node.name.clone(),
        })
    }

    async fn attach_disk(&self, spec: &NodeSpec, disk: &DiskRecord) -> Result<()> {
        let link = self
            .node_dir(&spec.node.name)
            .join("disks")
            .join(format!("{}.img", disk.name));
        if link.exists() {
            return Ok(());
        }
        std::fs::hard_link(&disk.id, &link)
            .map_err(|e| io_error(&format!("cannot attach {} as", disk.id), &link, e))
    }

    async fn detach_disk(&self, spec: &NodeSpec, disk: &DiskRecord) -> Result<()> {
        let link = self
            .node_dir(&spec.node.name)
            .join("disks")
            .join(format!("{}.img", disk.name));
        match std::fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error("cannot detach", &link, e))
            }
            _ => Ok(()),
        }
    }

    async fn destroy_disk(&self, _spec: &NodeSpec, disk: &DiskRecord) -> Result<()> {
        match std::fs::remove_file(&disk.id) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error("cannot delete the disk", Path::new(&disk.id), e))
            }
            _ => Ok(()),
        }
    }
}

/// Powers off every local node under `root` (all plans): for tests and the demo, which must
/// leave no process behind. Returns how many were running.
pub fn stop_all(root: &Path) -> usize {
    let mut stopped = 0;
    let plans = std::fs::read_dir(root.join("nodes"))
        .into_iter()
        .flatten()
        .flatten();
    for plan in plans {
        for node in std::fs::read_dir(plan.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let provider = Local::new(root, &plan.file_name().to_string_lossy());
            let dir = node.path();
            if let Some(pid) = provider.supervisor(&dir) {
                // SAFETY: kill has no memory preconditions.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                stopped += 1;
            }
        }
    }
    stopped
}

/// The supervisor: boots the node, boots it again after a reboot from inside, ends on power-off.
const SUPERVISE_SH: &str = r#"#!/bin/sh
# dop local node supervisor (written by dopv): boots the node; boots it again when it was
# rebooted from inside; ends when it was powered off.
NODE="$1"
echo $$ > "$NODE/supervisor.pid"
while :; do
  rm -f "$NODE/control/power"
  cp "$NODE/node.json" "$NODE/booted.json"
  echo "$(date -u +%FT%TZ) boot"
  if [ "$2" = namespaces ]; then
    unshare --mount --uts --pid --fork --kill-child --mount-proc sh "$NODE/init.sh" "$NODE" &
    echo $! > "$NODE/control/unshare.pid"
    wait $!
  else
    /usr/sbin/sshd -D -e -f "$NODE/sshd_config"
  fi
  [ "$(cat "$NODE/control/power" 2>/dev/null)" = reboot ] || break
  echo "$(date -u +%FT%TZ) reboot"
done
echo "$(date -u +%FT%TZ) power off"
"#;

/// The node's init (PID 1 of its namespace).
const INIT_SH: &str = r#"#!/bin/sh
# dop local node init (written by dopv): PID 1 of the node.
set -e
NODE="$1"
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/dop-node /run/dop /run/sshd
mount --bind "$NODE" /run/dop-node
mount --bind /run/dop-node/control /run/dop
mount -t overlay overlay -o lowerdir=/etc,upperdir=/run/dop-node/etc/upper,workdir=/run/dop-node/etc/work /etc
for d in root home var; do mount --bind /run/dop-node/$d /$d; done
mkdir -p /var/lib/dop-disks /var/log /var/tmp
mount --bind /run/dop-node/disks /var/lib/dop-disks
mount -t tmpfs -o mode=1777 tmpfs /tmp
for f in shutdown reboot poweroff halt; do
  for d in /usr/sbin /sbin; do
    if [ -e "$d/$f" ]; then mount --bind /run/dop-node/power.sh "$d/$f"; break; fi
  done
done
hostname "$(cat /run/dop-node/hostname)"
umount -l /run/dop-node
rmdir /run/dop-node
cp /run/dop/resolv.conf /etc/resolv.conf
[ ! -s /run/dop/passwords ] || chpasswd < /run/dop/passwords
# Without PAM, sshd refuses accounts whose password field is locked ('!'), even for keys.
for u in $(ls /run/dop/authorized_keys); do
  if grep -q "^$u:!" /etc/shadow; then usermod -p '*' "$u"; fi
done
set +e
/usr/sbin/sshd -D -e -f /etc/ssh/dop_sshd_config &
SSHD=$!
trap 'exit 0' TERM INT HUP
wait $SSHD
"#;

/// shutdown / reboot / poweroff / halt inside a node (there is no systemd there).
const POWER_SH: &str = r#"#!/bin/sh
# dop local node power control (written by dopv), bound over shutdown, reboot, poweroff, halt.
action=poweroff
case "$(basename "$0")" in reboot) action=reboot ;; esac
for a in "$@"; do case "$a" in -r|--reboot|reboot) action=reboot ;; esac; done
echo "$action" > /run/dop/power
echo "the node goes down for $action now"
( sleep 1; kill -TERM 1 ) </dev/null >/dev/null 2>&1 &
exit 0
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use dop_core::plan::{ContentSource, Credential};

    /// A local node of a valid plan, with `credentials` put on it as a library caller (or a
    /// plan stored before the plan check) could hand them in.
    fn spec_with(credentials: Vec<CredentialKind>) -> NodeSpec {
        let text = "name: p\ninfrastructures: {lab: {type: local, networks: {lo: {ip_pool: \
                    {from: 127.0.90.1, to: 127.0.90.250}, ip_netmask: 255.255.255.0, \
                    ip_defgw: false}}}}\nnodes:\n  n1: {infrastructure: lab, interfaces: \
                    {eth0: {network: lo, ip: 127.0.90.11}}}\n";
        let loaded = dop_core::load_str(text, None, &dop_core::LookupSettings::default());
        let plan = loaded
            .plan
            .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
        NodeSpec {
            plan: "p".into(),
            node: plan.nodes[0].clone(),
            ssh_port: 2290,
            credentials: credentials
                .into_iter()
                .enumerate()
                .map(|(i, kind)| Credential {
                    name: format!("c{i}"),
                    kind,
                })
                .collect(),
            puppet_challenge: None,
        }
    }

    fn key_for(username: &str) -> CredentialKind {
        CredentialKind::SshKey {
            username: username.into(),
            public_key: Some(ContentSource::Literal("ssh-ed25519 AAAA x".into())),
            private_key: None,
        }
    }

    #[test]
    fn logins_that_are_not_user_names_are_refused_before_any_file_is_written() {
        let root = tempfile::tempdir().unwrap();
        let local = Local::new(root.path(), "p");
        let spec = spec_with(vec![key_for("../../../escaped")]);
        let problems = local.check_node(&spec);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("'../../../escaped' is not a POSIX user name")),
            "{problems:?}"
        );
        let dir = root.path().join("nodes/p/n1");
        let err = local.write_boot_files(&dir, &spec).unwrap_err();
        assert!(
            err.to_string().contains("is not a POSIX user name"),
            "{err}"
        );
        assert!(!dir.exists(), "nothing was written");
        assert!(!root.path().join("escaped").exists());
        // A name that is one passes both.
        let fine = spec_with(vec![key_for("deploy_user-2")]);
        assert!(
            local.check_node(&fine).is_empty(),
            "{:?}",
            local.check_node(&fine)
        );
    }

    #[test]
    fn a_password_with_a_line_break_is_refused_not_fed_to_chpasswd() {
        let root = tempfile::tempdir().unwrap();
        let local = Local::new(root.path(), "p");
        let spec = spec_with(vec![CredentialKind::UsernamePassword {
            username: "me".into(),
            password: ContentSource::Literal("secret\nroot:owned".into()),
        }]);
        let dir = root.path().join("nodes/p/n1");
        let err = local.write_boot_files(&dir, &spec).unwrap_err();
        assert!(
            err.to_string().contains("the password holds a line break"),
            "{err}"
        );
        assert!(!dir.join("control/passwords").exists());
    }
}
