//! The vCenter simulator that `cargo xtask vsphere up` brings up for the vSphere provider's
//! integration tests: VMware's `vcsim` (from govmomi 0.24, built from Debian's packages) on
//! `127.0.82.1`, started by pid, its inventory in memory: datacenter `DC0`, cluster `DC0_C0`
//! with three hosts, datastore `LocalDS_0`, the network `VM Network`, and one of its VMs
//! marked as a template ([`TEMPLATE`]). `govc`, built beside it, makes changes behind dopv's
//! back.
//!
//! A test calls [`Vsphere::find`]; when there is no testbed it gets the reason and prints
//! `skipped: <reason>`:
//!
//! ```no_run
//! let vs = match dop_testbed::vsphere::Vsphere::find() {
//!     Ok(vs) => vs,
//!     Err(why) => {
//!         eprintln!("skipped: {why}");
//!         return;
//!     }
//! };
//! // A simulator of its own, on another port, stopped by pid when dropped.
//! let own = vs.start_private(std::path::Path::new("/tmp/x")).unwrap();
//! println!("{}", own.url);
//! ```

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::bed;
use crate::libvirt::live_pid;
use crate::wait_for;

/// The environment variable that names the testbed's directory.
pub const DIR_ENV: &str = "DOP_VSPHERE_DIR";
/// The testbed's directory below the workspace root when [`DIR_ENV`] is not set.
pub const DEFAULT_DIR: &str = "target/vsphere";
pub use crate::bed::TESTBED_JSON;
/// The loopback address vcsim listens on.
pub const ADDRESS: &str = "127.0.82.1";
/// The port of the shared simulator (`cargo xtask vsphere up`).
pub const PORT: u16 = 18443;
/// The simulator's inventory names.
pub const DATACENTER: &str = "DC0";
/// See [`DATACENTER`].
pub const CLUSTER: &str = "DC0_C0";
/// See [`DATACENTER`].
pub const DATASTORE: &str = "LocalDS_0";
/// See [`DATACENTER`].
pub const NETWORK: &str = "VM Network";
/// The simulator's VM that `up` marks as a template: what the tests clone.
pub const TEMPLATE: &str = "DC0_C0_RP0_VM0";
/// The login (vcsim accepts any user and password).
pub const USERNAME: &str = "dop";
/// See [`USERNAME`].
pub const PASSWORD: &str = "dop-test";
/// The `extraConfig` key dopv marks its VMs with: `down` has nothing to remove (the inventory
/// is in memory), the tests look for it.
pub const MARK_KEY: &str = "dopv.plan";

/// A running vCenter simulator, as `testbed.json` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vsphere {
    /// The SDK URL (`http://127.0.82.1:PORT/sdk`).
    pub url: String,
    /// The datacenter ([`DATACENTER`]).
    pub datacenter: String,
    /// The cluster ([`CLUSTER`]).
    pub cluster: String,
    /// The datastore ([`DATASTORE`]).
    pub datastore: String,
    /// The network ([`NETWORK`]).
    pub network: String,
    /// The template ([`TEMPLATE`]).
    pub template: String,
    /// The login.
    pub username: String,
    /// Its password.
    pub password: String,
    /// The vcsim binary.
    pub vcsim: PathBuf,
    /// The govc binary.
    pub govc: PathBuf,
    /// vcsim's pid file.
    pub pid_file: PathBuf,
    /// The testbed's directory.
    pub dir: PathBuf,
}

impl Vsphere {
    /// The running testbed of [`dir`], or why there is none (a sentence for `skipped: …`).
    pub fn find() -> Result<Vsphere, String> {
        Vsphere::find_in(&dir())
    }

    /// The running testbed whose directory is `dir`, or why there is none: `testbed.json` is
    /// missing or unreadable, vcsim does not run or does not accept connections.
    pub fn find_in(dir: &Path) -> Result<Vsphere, String> {
        let text = bed::read_testbed_json(dir, "no vSphere testbed", "cargo xtask vsphere up")?;
        let vs = Vsphere::parse(&text, dir)?;
        let Some(pid) = vs.pid() else {
            return Err(format!(
                "no vSphere testbed: vcsim does not run (no live pid in {}) although {} exists: \
                 run `cargo xtask vsphere up`",
                vs.pid_file.display(),
                dir.join(TESTBED_JSON).display()
            ));
        };
        let address = address_of(&vs.url)?;
        if TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_err() {
            return Err(format!(
                "no vSphere testbed: vcsim (pid {pid}) refuses connections on {address}: run \
                 `cargo xtask vsphere up`"
            ));
        }
        Ok(vs)
    }

    /// Reads the text of a `testbed.json`; `dir` is the testbed's directory.
    pub fn parse(json: &str, dir: &Path) -> Result<Vsphere, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("testbed.json: {e}"))?;
        let string = |key: &str| bed::string(&v, key);
        Ok(Vsphere {
            url: string("url")?,
            datacenter: string("datacenter")?,
            cluster: string("cluster")?,
            datastore: string("datastore")?,
            network: string("network")?,
            template: string("template")?,
            username: string("username")?,
            password: string("password")?,
            vcsim: PathBuf::from(string("vcsim")?),
            govc: PathBuf::from(string("govc")?),
            pid_file: PathBuf::from(string("pid_file")?),
            dir: dir.to_path_buf(),
        })
    }

    /// vcsim's pid when it runs.
    pub fn pid(&self) -> Option<u32> {
        live_pid(&self.pid_file, &self.vcsim.to_string_lossy())
    }

    /// `govc` against this simulator (`GOVC_URL` and the login set, the datacenter the
    /// default); the subcommand and its arguments are added by the caller.
    pub fn govc(&self) -> Command {
        govc_command(&self.govc, &self.url, &self.username, &self.password)
    }

    /// Runs `govc <args>` and returns its standard output, or its error output as the error.
    pub fn govc_run(&self, args: &[&str]) -> Result<String, String> {
        run_govc(self.govc().args(args), args)
    }

    /// Starts a simulator of its own on a free port of [`ADDRESS`] (its log in `dir`), with
    /// the same inventory and template as the shared one: for a test that stops it. Stopped
    /// by pid when the value is dropped.
    pub fn start_private(&self, dir: &Path) -> Result<PrivateVcsim, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = free_port()?;
        let child = spawn_vcsim(&self.vcsim, port, &dir.join("vcsim.log"), false)?;
        let mut own = PrivateVcsim {
            child: Some(child),
            url: url(port),
            vsphere: Vsphere {
                url: url(port),
                ..self.clone()
            },
        };
        wait_listening(port)
            .map_err(|e| format!("{e}; see {}", dir.join("vcsim.log").display()))?;
        prepare_inventory(&own.vsphere)?;
        own.url = own.vsphere.url.clone();
        Ok(own)
    }
}

/// A simulator a test started ([`Vsphere::start_private`]): killed by pid when dropped.
pub struct PrivateVcsim {
    child: Option<Child>,
    /// Its SDK URL.
    pub url: String,
    /// The testbed as seen through it (its URL; binaries and names as the shared one's).
    pub vsphere: Vsphere,
}

impl PrivateVcsim {
    /// Kills it (SIGKILL, by pid) and reaps it: a vCenter that goes away mid-call.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateVcsim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The SDK URL of a simulator on `port` of [`ADDRESS`].
pub fn url(port: u16) -> String {
    format!("http://{ADDRESS}:{port}/sdk")
}

fn address_of(url: &str) -> Result<SocketAddr, String> {
    url.strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .and_then(|rest| rest.split('/').next())
        .and_then(|host| host.parse().ok())
        .ok_or_else(|| format!("testbed.json: the url '{url}' is not http(s)://ADDRESS:PORT/…"))
}

/// A port on [`ADDRESS`] that nothing listens on now.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind((ADDRESS, 0))
        .map_err(|e| format!("cannot bind {ADDRESS}: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Starts `vcsim` listening on `port` of [`ADDRESS`] over plain HTTP, its output appended to
/// `log`. `detached`: in a process group of its own (it outlives the caller, `cargo xtask
/// vsphere up`).
pub fn spawn_vcsim(vcsim: &Path, port: u16, log: &Path, detached: bool) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(vcsim);
    command
        .args(["-l", &format!("{ADDRESS}:{port}"), "-tls=false"])
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err);
    if detached {
        command.process_group(0);
    }
    command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", vcsim.display()))
}

/// Waits (20 s at most) until something accepts connections on `port` of [`ADDRESS`].
pub fn wait_listening(port: u16) -> Result<(), String> {
    let address = SocketAddr::from((
        ADDRESS
            .parse::<std::net::Ipv4Addr>()
            .expect("a valid address"),
        port,
    ));
    wait_for(Duration::from_secs(20), || {
        TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
    })
    .map_err(|()| format!("vcsim does not listen on {address} after 20 s"))
}

/// Marks [`TEMPLATE`] as a template, powered off first (what a fresh simulator needs before
/// the tests clone it); nothing when it is one already.
pub fn prepare_inventory(vs: &Vsphere) -> Result<(), String> {
    let path = format!("/{}/vm/{}", vs.datacenter, vs.template);
    let (template, power) = vm_state(vs, &path)?;
    if template {
        return Ok(());
    }
    // The simulator's VMs run; a template cannot.
    if power == "poweredOn" {
        vs.govc_run(&["vm.power", "-off", "-force", &path])?;
    }
    vs.govc_run(&["vm.markastemplate", &path]).map(|_| ())
}

/// Whether the VM at `path` is a template, and its power state, as `govc vm.info -json` says.
pub fn vm_state(vs: &Vsphere, path: &str) -> Result<(bool, String), String> {
    let info = vs.govc_run(&["vm.info", "-json", path])?;
    let v: Value = serde_json::from_str(&info).map_err(|e| format!("govc vm.info -json: {e}"))?;
    let vm = v
        .get("VirtualMachines")
        .and_then(|m| m.get(0))
        .ok_or_else(|| format!("govc vm.info: no virtual machine at {path}"))?;
    let template = vm
        .pointer("/Config/Template")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let power = vm
        .pointer("/Runtime/PowerState")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok((template, power))
}

/// `govc` against `url` with a login.
pub fn govc_command(govc: &Path, url: &str, username: &str, password: &str) -> Command {
    let mut command = Command::new(govc);
    command
        .env("GOVC_URL", url)
        .env("GOVC_USERNAME", username)
        .env("GOVC_PASSWORD", password)
        .env("GOVC_INSECURE", "1")
        .env("GOVC_DATACENTER", DATACENTER)
        .stdin(Stdio::null());
    command
}

fn run_govc(command: &mut Command, args: &[&str]) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run govc: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "govc {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The testbed's directory: [`DIR_ENV`] when set, else [`DEFAULT_DIR`]; a relative path is
/// taken from the workspace root.
pub fn dir() -> PathBuf {
    bed::dir(DIR_ENV, DEFAULT_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "url": "http://127.0.82.1:18443/sdk",
      "datacenter": "DC0",
      "cluster": "DC0_C0",
      "datastore": "LocalDS_0",
      "network": "VM Network",
      "template": "DC0_C0_RP0_VM0",
      "username": "dop",
      "password": "dop-test",
      "vcsim": "/x/bin/vcsim",
      "govc": "/x/bin/govc",
      "pid_file": "/x/pids/vcsim.pid"
    }"#;

    #[test]
    fn testbed_json_is_read() {
        let vs = Vsphere::parse(SAMPLE, Path::new("/x")).unwrap();
        assert_eq!(vs.url, url(PORT));
        assert_eq!(vs.datacenter, DATACENTER);
        assert_eq!(vs.cluster, CLUSTER);
        assert_eq!(vs.datastore, DATASTORE);
        assert_eq!(vs.network, NETWORK);
        assert_eq!(vs.template, TEMPLATE);
        assert_eq!(vs.vcsim, Path::new("/x/bin/vcsim"));
        assert_eq!(vs.pid_file, Path::new("/x/pids/vcsim.pid"));
        assert_eq!(vs.dir, Path::new("/x"));
        assert_eq!(vs.pid(), None);
        assert_eq!(
            address_of(&vs.url).unwrap(),
            "127.0.82.1:18443".parse().unwrap()
        );
    }

    #[test]
    fn a_broken_testbed_json_says_what_is_missing() {
        let e =
            Vsphere::parse(r#"{"url": "http://127.0.82.1:1/sdk"}"#, Path::new("/x")).unwrap_err();
        assert!(e.contains("'datacenter'"), "{e}");
        assert!(Vsphere::parse("not json", Path::new("/x")).is_err());
        assert!(address_of("ftp://x").is_err());
    }

    #[test]
    fn without_a_testbed_the_reason_says_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = Vsphere::find_in(dir.path()).unwrap_err();
        assert!(e.contains("testbed.json missing"), "{e}");
        assert!(e.contains("cargo xtask vsphere up"), "{e}");
        let json = SAMPLE.replace("/x/", &format!("{}/", dir.path().display()));
        std::fs::write(dir.path().join(TESTBED_JSON), json).unwrap();
        let e = Vsphere::find_in(dir.path()).unwrap_err();
        assert!(e.contains("vcsim does not run"), "{e}");
    }

    #[test]
    fn a_private_simulator_has_the_template_and_stops_when_dropped() {
        let vs = match Vsphere::find() {
            Ok(vs) => vs,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let mut own = vs.start_private(dir.path()).unwrap();
        assert_ne!(own.url, vs.url);
        let (template, power) = vm_state(&own.vsphere, &format!("/DC0/vm/{TEMPLATE}")).unwrap();
        assert!(template);
        assert_eq!(power, "poweredOff");
        let address = address_of(&own.url).unwrap();
        own.stop();
        assert!(TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err());
    }
}
