//! The local OpenStack that `cargo xtask openstack up` brings up for the OpenStack provider's
//! integration tests: Debian's OpenStack (Zed) with Nova's fake compute driver and Cinder's fake
//! volume driver, every API on `127.0.0.1`, every process started by pid.
//!
//! A test calls [`OpenStack::find`]; when there is no stack it gets the reason and prints
//! `skipped: <reason>`:
//!
//! ```no_run
//! let os = match dop_testbed::openstack::OpenStack::find() {
//!     Ok(os) => os,
//!     Err(why) => {
//!         eprintln!("skipped: {why}");
//!         return;
//!     }
//! };
//! // Nova's API stops answering until `paused` is dropped, pass or fail.
//! let paused = os.pause("nova-api").unwrap();
//! # drop(paused);
//! ```

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::{bed, signal};

/// The environment variable that names the stack's directory.
pub const DIR_ENV: &str = "DOP_OPENSTACK_DIR";
/// The stack's directory below the workspace root when [`DIR_ENV`] is not set.
pub const DEFAULT_DIR: &str = "target/openstack";
pub use crate::bed::TESTBED_JSON;

/// The stack's processes in start order, each the name of its pid file (`<pid_dir>/<name>.pid`)
/// and of its log (`<log_dir>/<name>.log`): the names [`OpenStack::pause`] and
/// [`OpenStack::service_pid`] take.
pub const SERVICES: &[&str] = &[
    "epmd",
    "rabbitmq",
    "mariadb",
    "keystone",
    "placement",
    "nova-api",
    "nova-conductor",
    "nova-scheduler",
    "nova-compute",
    "neutron-server",
    "glance-api",
    "cinder-api",
    "cinder-scheduler",
    "cinder-volume",
];

/// The APIs [`OpenStack::find`] expects to accept connections: service and port on `127.0.0.1`.
pub const API_PORTS: &[(&str, u16)] = &[
    ("keystone", 5000),
    ("placement", 8778),
    ("nova-api", 8774),
    ("neutron-server", 9696),
    ("glance-api", 9292),
    ("cinder-api", 8776),
];

/// One Keystone login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The user's name.
    pub username: String,
    /// The user's password.
    pub password: String,
    /// The project the token is scoped to.
    pub project: String,
    /// The domain of the user and of the project (`default`).
    pub domain: String,
}

/// A running local OpenStack, as `testbed.json` describes it.
#[derive(Clone, Debug)]
pub struct OpenStack {
    /// Keystone's v3 URL, `http://127.0.0.1:5000/v3`.
    pub auth_url: String,
    /// The region of every endpoint (`RegionOne`).
    pub region: String,
    /// The cloud's administrator.
    pub admin: Account,
    /// The non-admin user the tests use (role `member` in project `demo`).
    pub demo: Account,
    /// A non-admin user whose project may start no server (compute quota `instances` = 0).
    pub quota: Account,
    /// The public image's name (`cirros-fake`, 1 MiB, raw).
    pub image: String,
    /// The flavors' names (`m1.tiny`, `m1.small`, `m1.medium`, and `m1.nohost` (a 2 PB disk), which no host can take).
    pub flavors: Vec<String>,
    /// The shared tenant networks' names (`dop-net`, `dop-net2`).
    pub networks: Vec<String>,
    /// Their subnets' names (`dop-sub` 10.99.0.0/24, `dop-sub2` 10.98.0.0/24), both on the
    /// demo project's router, so floating IPs associate to ports on them.
    pub subnets: Vec<String>,
    /// The external network floating IPs come from (`public`, 203.0.113.0/24).
    pub external_network: String,
    /// Security groups of the demo project (`dop-web`: tcp 80 in, `dop-ssh`: tcp 22 in).
    pub security_groups: Vec<String>,
    /// Where the pid files are: `<pid_dir>/<service>.pid`.
    pub pid_dir: PathBuf,
    /// Where the services' logs are: `<log_dir>/<service>.log`.
    pub log_dir: PathBuf,
    /// The stack's directory.
    pub dir: PathBuf,
}

impl OpenStack {
    /// The running stack of [`dir`], or why there is none (a sentence for `skipped: …`).
    pub fn find() -> Result<OpenStack, String> {
        OpenStack::find_in(&dir())
    }

    /// The running stack whose directory is `dir`, or why there is none: `testbed.json` is
    /// missing or unreadable, or one of the [`API_PORTS`] refuses connections.
    pub fn find_in(dir: &Path) -> Result<OpenStack, String> {
        let path = dir.join(TESTBED_JSON);
        let text = bed::read_testbed_json(dir, "no local OpenStack", "cargo xtask openstack up")?;
        let os = OpenStack::parse(&text, dir)?;
        for (service, port) in API_PORTS {
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
            if TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_err() {
                return Err(format!(
                    "no local OpenStack: {service} does not answer on {address} although {} \
                     exists: run `cargo xtask openstack up`",
                    path.display()
                ));
            }
        }
        Ok(os)
    }

    /// Reads the text of a `testbed.json`; `dir` is the stack's directory (the pid and log
    /// directories default to `dir/pids` and `dir/log` when the file does not name them).
    pub fn parse(json: &str, dir: &Path) -> Result<OpenStack, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("testbed.json: {e}"))?;
        let string = |key: &str| bed::string(&v, key);
        let strings = |key: &str| -> Result<Vec<String>, String> {
            v.get(key)
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
                .ok_or_else(|| format!("testbed.json: no list of strings '{key}'"))
        };
        let account = |key: &str| -> Result<Account, String> {
            let a = v
                .get(key)
                .ok_or_else(|| format!("testbed.json: no account '{key}'"))?;
            let field = |name: &str| {
                a.get(name)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| format!("testbed.json: account '{key}' has no '{name}'"))
            };
            Ok(Account {
                username: field("username")?,
                password: field("password")?,
                project: field("project")?,
                domain: field("domain").unwrap_or_else(|_| "default".into()),
            })
        };
        let path = |key: &str, default: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .map_or_else(|| dir.join(default), PathBuf::from)
        };
        Ok(OpenStack {
            auth_url: string("auth_url")?,
            region: string("region").unwrap_or_else(|_| "RegionOne".into()),
            admin: account("admin")?,
            demo: account("demo")?,
            quota: account("quota")?,
            image: string("image")?,
            flavors: strings("flavors")?,
            networks: strings("networks").unwrap_or_default(),
            subnets: strings("subnets")?,
            external_network: string("external_network")?,
            security_groups: strings("security_groups")?,
            pid_dir: path("pid_dir", "pids"),
            log_dir: path("log_dir", "log"),
            dir: dir.to_path_buf(),
        })
    }

    /// The pid of one of the [`SERVICES`] when its process is running.
    pub fn service_pid(&self, service: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_dir.join(format!("{service}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    /// The log of one of the [`SERVICES`] (its standard output and error).
    pub fn log(&self, service: &str) -> PathBuf {
        self.log_dir.join(format!("{service}.log"))
    }

    /// Freezes one of the [`SERVICES`] (SIGSTOP to its process and every process below it,
    /// e.g. nova-api's forked workers): its port still accepts connections but nothing answers.
    /// It runs again (SIGCONT) when the returned guard is dropped, pass or fail.
    pub fn pause(&self, service: &str) -> Result<Paused, String> {
        let pid = self
            .service_pid(service)
            .ok_or_else(|| format!("{service} is not running (no live pid in {service}.pid)"))?;
        // The parent first, so that it forks no new worker while its children are stopped.
        signal(pid, libc::SIGSTOP);
        let mut pids = vec![pid];
        for p in process_tree(pid) {
            signal(p, libc::SIGSTOP);
            pids.push(p);
        }
        Ok(Paused {
            service: service.to_string(),
            pids,
        })
    }
}

/// A paused service (see [`OpenStack::pause`]): resumed when dropped.
#[derive(Debug)]
pub struct Paused {
    service: String,
    pids: Vec<u32>,
}

impl Paused {
    /// The service's name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The stopped processes: the service's pid first, then those below it.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Resumes the service now (the same as dropping the guard).
    pub fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        for &pid in self.pids.iter().rev() {
            signal(pid, libc::SIGCONT);
        }
    }
}

/// The stack's directory: [`DIR_ENV`] when set, else [`DEFAULT_DIR`]; a relative path is taken
/// from the workspace root (tests run in their crate's directory, xtask wherever it was called).
pub fn dir() -> PathBuf {
    bed::dir(DIR_ENV, DEFAULT_DIR)
}

/// True when `pid` is a running process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The processes below `pid` (children, their children, …), from `/proc`, parents first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut found = crate::descendants(pid);
    // descendants() walks depth-first from a stack; put every parent before its children.
    found.sort_by_key(|p| depth_below(*p, pid));
    found
}

fn depth_below(mut p: u32, root: u32) -> usize {
    let mut depth = 0;
    while p != root && depth < 64 {
        let Some(parent) = parent_of(p) else { break };
        p = parent;
        depth += 1;
    }
    depth
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "auth_url": "http://127.0.0.1:5000/v3",
      "region": "RegionOne",
      "admin": {"username": "admin", "password": "admin", "project": "admin", "domain": "default"},
      "demo": {"username": "demo", "password": "demo", "project": "demo", "domain": "default"},
      "quota": {"username": "dop-quota", "password": "dop-quota", "project": "dop-quota",
                "domain": "default"},
      "image": "cirros-fake",
      "flavors": ["m1.tiny", "m1.small", "m1.medium"],
      "networks": ["dop-net", "dop-net2"],
      "subnets": ["dop-sub", "dop-sub2"],
      "external_network": "public",
      "security_groups": ["dop-web", "dop-ssh"],
      "pid_dir": "/x/pids",
      "log_dir": "/x/log"
    }"#;

    #[test]
    fn testbed_json_is_read() {
        let os = OpenStack::parse(SAMPLE, Path::new("/x")).unwrap();
        assert_eq!(os.auth_url, "http://127.0.0.1:5000/v3");
        assert_eq!(os.demo.username, "demo");
        assert_eq!(os.quota.project, "dop-quota");
        assert_eq!(os.admin.domain, "default");
        assert_eq!(os.flavors, ["m1.tiny", "m1.small", "m1.medium"]);
        assert_eq!(os.subnets, ["dop-sub", "dop-sub2"]);
        assert_eq!(os.networks, ["dop-net", "dop-net2"]);
        assert_eq!(os.external_network, "public");
        assert_eq!(os.security_groups, ["dop-web", "dop-ssh"]);
        assert_eq!(os.pid_dir, Path::new("/x/pids"));
        assert_eq!(os.log("nova-api"), Path::new("/x/log/nova-api.log"));
        // No live pid file: not running, and nothing to pause.
        assert_eq!(os.service_pid("nova-api"), None);
        assert!(os.pause("nova-api").unwrap_err().contains("not running"));
    }

    #[test]
    fn a_broken_testbed_json_says_what_is_missing() {
        let e = OpenStack::parse(r#"{"auth_url": "x"}"#, Path::new("/x")).unwrap_err();
        assert!(e.contains("admin"), "{e}");
        assert!(OpenStack::parse("not json", Path::new("/x")).is_err());
    }

    #[test]
    fn without_a_stack_the_reason_says_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = OpenStack::find_in(dir.path()).unwrap_err();
        assert!(e.contains("testbed.json missing"), "{e}");
        assert!(e.contains("cargo xtask openstack up"), "{e}");
    }

    #[test]
    fn the_default_directory_is_below_the_workspace_root() {
        let root = crate::workspace_root().unwrap();
        assert!(root.join("Cargo.toml").exists());
        assert!(root.join("crates/dop-testbed").is_dir());
    }

    /// True when `GET /` on 127.0.0.1:port gets an answer within two seconds.
    fn answers(port: u16) -> bool {
        use std::io::{Read, Write};
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut buf = [0u8; 16];
        matches!(stream.read(&mut buf), Ok(n) if n > 0)
    }

    #[test]
    fn a_paused_service_stops_answering_until_the_guard_is_dropped() {
        let os = match OpenStack::find() {
            Ok(os) => os,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        };
        assert!(answers(8774), "nova-api answers before the pause");
        {
            let paused = os.pause("nova-api").unwrap();
            assert_eq!(paused.service(), "nova-api");
            assert_eq!(Some(paused.pids()[0]), os.service_pid("nova-api"));
            // Connections are still accepted (the socket is open), but nothing answers.
            assert!(!answers(8774), "a paused nova-api answered");
        }
        assert!(answers(8774), "nova-api answers again once resumed");
    }

    #[test]
    fn a_process_tree_lists_parents_first() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30; wait"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while process_tree(pid).len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let tree = process_tree(pid);
        assert_eq!(tree.len(), 2, "{tree:?}");
        assert!(tree.iter().all(|p| alive(*p)));
        assert!(alive(pid));
        let _ = child.kill();
        let _ = child.wait();
        for p in tree {
            signal(p, libc::SIGKILL);
        }
        assert!(!alive(pid));
    }
}
