//! The Puppet server that `cargo xtask puppet up` brings up for the Puppet tests: Debian's
//! `puppetserver` (a JVM with a small heap) started by pid on a loopback address, its
//! configuration, CA, code directory and logs in the bed's directory, never `/etc/puppet`.
//!
//! The server reads the Hiera data dop writes from the bed's `hiera/` directory (a test points
//! dop's `hiera_dir` at [`Puppet::hiera_dir`]) and its CA asks `dop-puppet-autosign` (the
//! workspace's build) whether to sign a request, through the wrapper script [`AUTOSIGN`]. Its
//! production environment has a `site.pp` that includes the class `role::<role>` of the node's
//! Hiera `role`; the role classes write [`ROLE_FILE`] on the node with the Hiera value
//! [`VALUE_KEY`].
//!
//! A test calls [`Puppet::find`]; when there is no server it gets the reason and prints
//! `skipped: <reason>`:
//!
//! ```no_run
//! let puppet = match dop_testbed::puppet::Puppet::find() {
//!     Ok(p) => p,
//!     Err(why) => {
//!         eprintln!("skipped: {why}");
//!         return;
//!     }
//! };
//! println!("agents use --server {} --serverport {}", puppet.server, puppet.port);
//! ```

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::bed;
use crate::libvirt::live_pid;

/// The environment variable that names the bed's directory.
pub const DIR_ENV: &str = "DOP_PUPPET_DIR";
/// The bed's directory below the workspace root when [`DIR_ENV`] is not set.
pub const DEFAULT_DIR: &str = "target/puppet";
pub use crate::bed::TESTBED_JSON;
/// The loopback address the server listens on.
pub const ADDRESS: &str = "127.0.81.1";
/// Its port.
pub const PORT: u16 = 8140;
/// The server's certname (its certificate also names [`ADDRESS`], which agents connect to).
pub const CERTNAME: &str = "puppet.dop.test";
/// The program the server runs (a JVM).
pub const JAVA: &str = "/usr/bin/java";
/// The wrapper the CA runs as its `autosign` policy executable, in the bed's directory.
pub const AUTOSIGN: &str = "autosign";
/// The file a role class writes on the node.
pub const ROLE_FILE: &str = "/var/lib/dop-puppet-test/role";
/// The Hiera key whose value the role classes write into [`ROLE_FILE`].
pub const VALUE_KEY: &str = "dop_test::value";

/// A running Puppet server bed, as `testbed.json` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Puppet {
    /// The address agents connect to ([`ADDRESS`]).
    pub server: String,
    /// The port ([`PORT`]).
    pub port: u16,
    /// The server's certname ([`CERTNAME`]).
    pub certname: String,
    /// The Hiera data directory the server reads (dop's `hiera_dir` for the tests).
    pub hiera_dir: PathBuf,
    /// Where `dop-puppet-autosign` logs its decisions (one JSON line each).
    pub autosign_log: PathBuf,
    /// The CA's directory (`signed/<certname>.pem` for each signed node).
    pub ca_dir: PathBuf,
    /// The server's pid file.
    pub pid_file: PathBuf,
    /// Where the server logs.
    pub log_dir: PathBuf,
    /// The bed's directory.
    pub dir: PathBuf,
}

/// The bed's directory: [`DIR_ENV`] when set, else [`DEFAULT_DIR`] below the workspace root.
pub fn dir() -> PathBuf {
    bed::dir(DIR_ENV, DEFAULT_DIR)
}

impl Puppet {
    /// The running server of [`dir`], or why there is none (a sentence for `skipped: …`).
    pub fn find() -> Result<Puppet, String> {
        Puppet::find_in(&dir())
    }

    /// The running server whose bed is `dir`, or why there is none: `testbed.json` is missing
    /// or unreadable, the server does not run or does not accept connections.
    pub fn find_in(dir: &Path) -> Result<Puppet, String> {
        let text = bed::read_testbed_json(dir, "no Puppet server", "cargo xtask puppet up")?;
        let puppet = Puppet::parse(&text, dir)?;
        if puppet.pid().is_none() {
            return Err(format!(
                "no Puppet server: it does not run (no live pid in {}): run `cargo xtask \
                 puppet up`",
                puppet.pid_file.display()
            ));
        }
        if !puppet.answers() {
            return Err(format!(
                "no Puppet server: it runs but {}:{} refuses connections: run `cargo xtask \
                 puppet up`",
                puppet.server, puppet.port
            ));
        }
        Ok(puppet)
    }

    /// Reads the text of a `testbed.json`; `dir` is the bed's directory.
    pub fn parse(json: &str, dir: &Path) -> Result<Puppet, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("testbed.json: {e}"))?;
        let string = |key: &str| bed::string(&v, key);
        let port = v
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("testbed.json: no port")?;
        Ok(Puppet {
            server: string("server")?,
            port,
            certname: string("certname")?,
            hiera_dir: PathBuf::from(string("hiera_dir")?),
            autosign_log: PathBuf::from(string("autosign_log")?),
            ca_dir: PathBuf::from(string("ca_dir")?),
            pid_file: PathBuf::from(string("pid_file")?),
            log_dir: PathBuf::from(string("log_dir")?),
            dir: dir.to_path_buf(),
        })
    }

    /// The server's pid when it runs.
    pub fn pid(&self) -> Option<u32> {
        live_pid(&self.pid_file, JAVA)
    }

    /// True when the server accepts connections on its address and port.
    pub fn answers(&self) -> bool {
        answers(&self.server, self.port)
    }

    /// True when the CA has signed a certificate for `certname`.
    pub fn signed(&self, certname: &str) -> bool {
        self.ca_dir
            .join("signed")
            .join(format!("{certname}.pem"))
            .exists()
    }

    /// Makes the CA forget `certname`: its signed certificate and its pending request are
    /// removed, so a test that ran before leaves nothing that refuses the next one's request.
    pub fn forget(&self, certname: &str) {
        for sub in ["signed", "requests"] {
            let _ = std::fs::remove_file(self.ca_dir.join(sub).join(format!("{certname}.pem")));
        }
    }

    /// The decisions `dop-puppet-autosign` logged for `certname` (its JSON lines).
    pub fn autosign_decisions(&self, certname: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.autosign_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|d| d["certname"] == certname)
            .collect()
    }
}

/// True when something accepts TCP connections on `address:port`.
pub fn answers(address: &str, port: u16) -> bool {
    address.parse::<std::net::IpAddr>().ok().is_some_and(|ip| {
        TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2)).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_testbed_json_is_read_and_a_missing_one_says_how_to_make_it() {
        let json = r#"{"server": "127.0.81.1", "port": 8140, "certname": "puppet.dop.test",
            "hiera_dir": "/b/hiera", "autosign_log": "/b/log/autosign.log", "ca_dir": "/b/ca",
            "pid_file": "/b/pids/puppetserver.pid", "log_dir": "/b/log"}"#;
        let p = Puppet::parse(json, Path::new("/b")).unwrap();
        assert_eq!((p.server.as_str(), p.port), ("127.0.81.1", 8140));
        assert_eq!(p.hiera_dir, Path::new("/b/hiera"));
        assert!(Puppet::parse(r#"{"server": "x"}"#, Path::new("/b")).is_err());
        let empty = tempfile::tempdir().unwrap();
        let why = Puppet::find_in(empty.path()).unwrap_err();
        assert!(
            why.starts_with("no Puppet server") && why.ends_with("run `cargo xtask puppet up`"),
            "{why}"
        );
    }
}
