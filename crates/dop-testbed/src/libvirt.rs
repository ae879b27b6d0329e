//! The local libvirt that `cargo xtask libvirt up` brings up for the libvirt provider's
//! integration tests: Debian's libvirtd and virtlogd started by pid (no systemd), QEMU guests
//! in software emulation (TCG), a directory storage pool holding the guest image that
//! `cargo xtask vm-image` builds (a small Debian kernel and a busybox/dropbear initramfs whose
//! init reads a NoCloud seed the way cloud-init does).
//!
//! A test calls [`Libvirt::find`]; when there is no testbed it gets the reason and prints
//! `skipped: <reason>`:
//!
//! ```no_run
//! let lv = match dop_testbed::libvirt::Libvirt::find() {
//!     Ok(lv) => lv,
//!     Err(why) => {
//!         eprintln!("skipped: {why}");
//!         return;
//!     }
//! };
//! // libvirtd goes away and comes back; the running guests keep running.
//! lv.restart_libvirtd().unwrap();
//! ```

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::bed;
use crate::openstack::alive;
use crate::{signal, wait_for};

/// The environment variable that names the testbed's directory.
pub const DIR_ENV: &str = "DOP_LIBVIRT_DIR";
/// The testbed's directory below the workspace root when [`DIR_ENV`] is not set.
pub const DEFAULT_DIR: &str = "target/libvirt";
pub use crate::bed::TESTBED_JSON;
/// The connection URI of the testbed's libvirtd.
pub const URI: &str = "qemu:///system";
/// The storage pool of the guest image and of every volume a test makes.
pub const POOL: &str = "dop-test";
/// The pool's directory (below `/var/lib/libvirt/images`: QEMU runs as `libvirt-qemu`, which
/// must reach it).
pub const POOL_PATH: &str = "/var/lib/libvirt/images/dop-test";
/// The guest image's volume in [`POOL`] (raw; a guest's root disk is a qcow2 volume backed by
/// it).
pub const IMAGE: &str = "dop-guest.raw";
/// Where a domain's serial console log goes (`<serial><log file=…/>`).
pub const CONSOLE_DIR: &str = "/var/log/libvirt/qemu";
/// The XML namespace of the `<metadata>` element dopv marks its domains with: `down` removes
/// every domain that carries it.
pub const METADATA_NAMESPACE: &str = "https://dop.invalid/dopv/libvirt/1";
/// libvirtd's socket: accepting connections means it answers.
pub const LIBVIRTD_SOCKET: &str = "/run/libvirt/libvirt-sock";
/// The daemons' binaries.
pub const LIBVIRTD: &str = "/usr/sbin/libvirtd";
/// See [`LIBVIRTD`].
pub const VIRTLOGD: &str = "/usr/sbin/virtlogd";

/// A running libvirt testbed, as `testbed.json` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Libvirt {
    /// libvirtd's connection URI ([`URI`]).
    pub uri: String,
    /// The storage pool ([`POOL`]).
    pub pool: String,
    /// The pool's directory ([`POOL_PATH`]).
    pub pool_path: PathBuf,
    /// The guest image's volume in the pool ([`IMAGE`]).
    pub image: String,
    /// Where the domains' console logs go ([`CONSOLE_DIR`]).
    pub console_dir: PathBuf,
    /// libvirtd's pid file.
    pub libvirtd_pid_file: PathBuf,
    /// virtlogd's pid file.
    pub virtlogd_pid_file: PathBuf,
    /// Where the daemons log (`libvirtd.log`, `virtlogd.log`).
    pub log_dir: PathBuf,
    /// The testbed's directory.
    pub dir: PathBuf,
}

impl Libvirt {
    /// The running testbed of [`dir`], or why there is none (a sentence for `skipped: …`).
    pub fn find() -> Result<Libvirt, String> {
        Libvirt::find_in(&dir())
    }

    /// The running testbed whose directory is `dir`, or why there is none: `testbed.json` is
    /// missing or unreadable, libvirtd does not run or does not accept connections.
    pub fn find_in(dir: &Path) -> Result<Libvirt, String> {
        let path = dir.join(TESTBED_JSON);
        let text = bed::read_testbed_json(dir, "no libvirt testbed", "cargo xtask libvirt up")?;
        let lv = Libvirt::parse(&text, dir)?;
        if lv.libvirtd_pid().is_none() {
            return Err(format!(
                "no libvirt testbed: libvirtd does not run (no live pid in {}) although {} \
                 exists: run `cargo xtask libvirt up`",
                lv.libvirtd_pid_file.display(),
                path.display()
            ));
        }
        if !libvirtd_answers() {
            return Err(format!(
                "no libvirt testbed: libvirtd runs but {LIBVIRTD_SOCKET} refuses connections: \
                 run `cargo xtask libvirt up`"
            ));
        }
        Ok(lv)
    }

    /// Reads the text of a `testbed.json`; `dir` is the testbed's directory (the pid files
    /// and the log directory default to places in it when the file does not name them).
    pub fn parse(json: &str, dir: &Path) -> Result<Libvirt, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("testbed.json: {e}"))?;
        let string = |key: &str| bed::string(&v, key);
        let path = |key: &str, default: PathBuf| {
            v.get(key)
                .and_then(Value::as_str)
                .map_or(default, PathBuf::from)
        };
        Ok(Libvirt {
            uri: string("uri")?,
            pool: string("pool")?,
            pool_path: PathBuf::from(string("pool_path")?),
            image: string("image")?,
            console_dir: path("console_dir", PathBuf::from(CONSOLE_DIR)),
            libvirtd_pid_file: path("libvirtd_pid_file", dir.join("pids/libvirtd.pid")),
            virtlogd_pid_file: path("virtlogd_pid_file", dir.join("pids/virtlogd.pid")),
            log_dir: path("log_dir", dir.join("log")),
            dir: dir.to_path_buf(),
        })
    }

    /// The daemons as this testbed starts them.
    pub fn daemons(&self) -> Daemons {
        Daemons {
            libvirtd_pid_file: self.libvirtd_pid_file.clone(),
            virtlogd_pid_file: self.virtlogd_pid_file.clone(),
            log_dir: self.log_dir.clone(),
            uri: self.uri.clone(),
        }
    }

    /// libvirtd's pid when it runs.
    pub fn libvirtd_pid(&self) -> Option<u32> {
        live_pid(&self.libvirtd_pid_file, LIBVIRTD)
    }

    /// virtlogd's pid when it runs.
    pub fn virtlogd_pid(&self) -> Option<u32> {
        live_pid(&self.virtlogd_pid_file, VIRTLOGD)
    }

    /// A domain's console log (what its serial port printed): `<console_dir>/<name>-console.log`.
    pub fn console_log(&self, domain: &str) -> PathBuf {
        self.console_dir.join(format!("{domain}-console.log"))
    }

    /// Stops libvirtd by pid (SIGTERM, SIGKILL after 30 s) and waits until it is gone. The
    /// guests it started keep running.
    pub fn stop_libvirtd(&self) -> Result<(), String> {
        self.daemons().stop_libvirtd()
    }

    /// Starts libvirtd as `cargo xtask libvirt up` does and waits until it answers; does
    /// nothing when it runs.
    pub fn start_libvirtd(&self) -> Result<(), String> {
        self.daemons().start_libvirtd()
    }

    /// [`Libvirt::stop_libvirtd`] then [`Libvirt::start_libvirtd`]: what a host's libvirtd
    /// upgrade or crash looks like to a client. The running guests survive it and libvirtd
    /// finds them again.
    pub fn restart_libvirtd(&self) -> Result<(), String> {
        self.stop_libvirtd()?;
        self.start_libvirtd()
    }
}

/// libvirtd and virtlogd as the testbed runs them: daemonized (`-d`), each with its pid file,
/// warnings and errors logged to `<log_dir>/<daemon>.log`.
#[derive(Clone, Debug)]
pub struct Daemons {
    /// libvirtd's pid file.
    pub libvirtd_pid_file: PathBuf,
    /// virtlogd's pid file.
    pub virtlogd_pid_file: PathBuf,
    /// Where they log.
    pub log_dir: PathBuf,
    /// The URI that shows libvirtd answers.
    pub uri: String,
}

impl Daemons {
    /// The daemons of a testbed directory, at the places `cargo xtask libvirt up` uses.
    pub fn in_dir(dir: &Path) -> Daemons {
        Daemons {
            libvirtd_pid_file: dir.join("pids/libvirtd.pid"),
            virtlogd_pid_file: dir.join("pids/virtlogd.pid"),
            log_dir: dir.join("log"),
            uri: URI.to_string(),
        }
    }

    /// libvirtd's pid when it runs.
    pub fn libvirtd_pid(&self) -> Option<u32> {
        live_pid(&self.libvirtd_pid_file, LIBVIRTD)
    }

    /// virtlogd's pid when it runs.
    pub fn virtlogd_pid(&self) -> Option<u32> {
        live_pid(&self.virtlogd_pid_file, VIRTLOGD)
    }

    /// Starts virtlogd unless it runs (QEMU's console logs go through it).
    pub fn start_virtlogd(&self) -> Result<(), String> {
        if self.virtlogd_pid().is_some() {
            return Ok(());
        }
        self.spawn(VIRTLOGD, &self.virtlogd_pid_file)?;
        wait_for(Duration::from_secs(20), || self.virtlogd_pid().is_some())
            .map_err(|()| self.failure("virtlogd", "did not start within 20 s"))
    }

    /// Starts libvirtd unless it runs, and waits (60 s at most) until `virsh version` answers.
    pub fn start_libvirtd(&self) -> Result<(), String> {
        if self.libvirtd_pid().is_none() {
            self.spawn(LIBVIRTD, &self.libvirtd_pid_file)?;
        }
        wait_for(Duration::from_secs(60), || {
            if self.libvirtd_pid().is_none() && started_long_ago(&self.libvirtd_pid_file) {
                return true;
            }
            libvirtd_answers() && virsh_answers(&self.uri)
        })
        .map_err(|()| self.failure("libvirtd", "does not answer after 60 s"))?;
        if self.libvirtd_pid().is_none() {
            return Err(self.failure("libvirtd", "exited"));
        }
        Ok(())
    }

    /// Stops libvirtd by pid (SIGTERM, SIGKILL after 30 s) and waits until it is gone.
    pub fn stop_libvirtd(&self) -> Result<(), String> {
        stop(self.libvirtd_pid(), "libvirtd")
    }

    /// Stops virtlogd by pid (SIGTERM, SIGKILL after 30 s) and waits until it is gone.
    pub fn stop_virtlogd(&self) -> Result<(), String> {
        stop(self.virtlogd_pid(), "virtlogd")
    }

    fn log(&self, daemon: &str) -> PathBuf {
        self.log_dir.join(format!("{daemon}.log"))
    }

    fn failure(&self, daemon: &str, why: &str) -> String {
        let log = self.log(daemon);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "{daemon} {why}\n--- {} (last 20 lines) ---\n{}",
            log.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    /// Runs `<binary> -d -p <pid_file>`: the daemon forks, writes its pid file and the
    /// command returns. Its warnings and errors go to `<log_dir>/<name>.log`.
    fn spawn(&self, binary: &str, pid_file: &Path) -> Result<(), String> {
        let name = Path::new(binary)
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        for d in [pid_file.parent(), Some(self.log_dir.as_path())]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let _ = std::fs::remove_file(pid_file);
        let log = self.log(&name);
        let status = Command::new(binary)
            .arg("--daemon")
            .arg("--pid-file")
            .arg(pid_file)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env(
                "HOME",
                std::env::var_os("HOME").unwrap_or_else(|| "/root".into()),
            )
            .env("LC_ALL", "C.UTF-8")
            .env("LIBVIRT_LOG_OUTPUTS", format!("3:file:{}", log.display()))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot start {binary}: {e}"))?;
        if !status.success() {
            return Err(self.failure(&name, &format!("did not start ({status})")));
        }
        Ok(())
    }
}

/// True when something accepts connections on [`LIBVIRTD_SOCKET`].
pub fn libvirtd_answers() -> bool {
    UnixStream::connect(LIBVIRTD_SOCKET).is_ok()
}

/// True when `virsh -c <uri> version` succeeds (libvirtd answers and can reach QEMU's driver).
pub fn virsh_answers(uri: &str) -> bool {
    Command::new("virsh")
        .args(["-q", "-c", uri, "version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The pid a pid file records, when that process runs and is `binary` (a pid file from before
/// a reboot may name someone else's process now).
pub fn live_pid(pid_file: &Path, binary: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (alive(pid) && runs(pid, binary)).then_some(pid)
}

/// True when process `pid` runs `binary` (its executable, else its first argument).
pub fn runs(pid: u32, binary: &str) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    if exe.as_deref() == Some(Path::new(binary)) {
        return true;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    first == binary || Path::new(&*first).file_name() == Path::new(binary).file_name()
}

/// The processes running `binary`, from `/proc`.
pub fn pids_of(binary: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| alive(pid) && runs(pid, binary))
        .collect();
    pids.sort_unstable();
    pids
}

/// True when a pid file is older than a few seconds (a daemon that wrote it and is gone has
/// exited, not just started).
fn started_long_ago(pid_file: &Path) -> bool {
    std::fs::metadata(pid_file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > Duration::from_secs(3))
}

fn stop(pid: Option<u32>, name: &str) -> Result<(), String> {
    let Some(pid) = pid else { return Ok(()) };
    signal(pid, libc::SIGTERM);
    if wait_for(Duration::from_secs(30), || !alive(pid)).is_ok() {
        return Ok(());
    }
    signal(pid, libc::SIGKILL);
    wait_for(Duration::from_secs(10), || !alive(pid))
        .map_err(|()| format!("{name} (pid {pid}) is still running after SIGKILL"))
}

/// The testbed's directory: [`DIR_ENV`] when set, else [`DEFAULT_DIR`]; a relative path is
/// taken from the workspace root (tests run in their crate's directory, xtask wherever it was
/// called).
pub fn dir() -> PathBuf {
    bed::dir(DIR_ENV, DEFAULT_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "uri": "qemu:///system",
      "pool": "dop-test",
      "pool_path": "/var/lib/libvirt/images/dop-test",
      "image": "dop-guest.raw",
      "console_dir": "/var/log/libvirt/qemu",
      "libvirtd_pid_file": "/x/pids/libvirtd.pid",
      "virtlogd_pid_file": "/x/pids/virtlogd.pid",
      "log_dir": "/x/log"
    }"#;

    #[test]
    fn testbed_json_is_read() {
        let lv = Libvirt::parse(SAMPLE, Path::new("/x")).unwrap();
        assert_eq!(lv.uri, URI);
        assert_eq!(lv.pool, POOL);
        assert_eq!(lv.pool_path, Path::new(POOL_PATH));
        assert_eq!(lv.image, IMAGE);
        assert_eq!(lv.console_dir, Path::new(CONSOLE_DIR));
        assert_eq!(lv.libvirtd_pid_file, Path::new("/x/pids/libvirtd.pid"));
        assert_eq!(lv.virtlogd_pid_file, Path::new("/x/pids/virtlogd.pid"));
        assert_eq!(lv.log_dir, Path::new("/x/log"));
        assert_eq!(lv.dir, Path::new("/x"));
        assert_eq!(
            lv.console_log("web01"),
            Path::new("/var/log/libvirt/qemu/web01-console.log")
        );
        // No live pid file: nothing runs, and stopping what does not run is fine.
        assert_eq!(lv.libvirtd_pid(), None);
        assert_eq!(lv.virtlogd_pid(), None);
        lv.stop_libvirtd().unwrap();
    }

    #[test]
    fn optional_fields_default_to_places_in_the_directory() {
        let json = r#"{"uri": "qemu:///system", "pool": "p", "pool_path": "/p",
                       "image": "i.raw"}"#;
        let lv = Libvirt::parse(json, Path::new("/d")).unwrap();
        assert_eq!(lv.libvirtd_pid_file, Path::new("/d/pids/libvirtd.pid"));
        assert_eq!(lv.virtlogd_pid_file, Path::new("/d/pids/virtlogd.pid"));
        assert_eq!(lv.log_dir, Path::new("/d/log"));
        assert_eq!(lv.console_dir, Path::new(CONSOLE_DIR));
        let daemons = Daemons::in_dir(Path::new("/d"));
        assert_eq!(daemons.libvirtd_pid_file, lv.libvirtd_pid_file);
        assert_eq!(daemons.virtlogd_pid_file, lv.virtlogd_pid_file);
        assert_eq!(daemons.log_dir, lv.log_dir);
    }

    #[test]
    fn a_broken_testbed_json_says_what_is_missing() {
        let e = Libvirt::parse(r#"{"uri": "qemu:///system"}"#, Path::new("/x")).unwrap_err();
        assert!(e.contains("'pool'"), "{e}");
        let e = Libvirt::parse(r#"{"uri": 1}"#, Path::new("/x")).unwrap_err();
        assert!(e.contains("'uri'"), "{e}");
        assert!(Libvirt::parse("not json", Path::new("/x")).is_err());
    }

    #[test]
    fn without_a_testbed_the_reason_says_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = Libvirt::find_in(dir.path()).unwrap_err();
        assert!(e.contains("testbed.json missing"), "{e}");
        assert!(e.contains("cargo xtask libvirt up"), "{e}");
        // A testbed.json whose libvirtd is gone.
        let json = SAMPLE.replace("/x/", &format!("{}/", dir.path().display()));
        std::fs::write(dir.path().join(TESTBED_JSON), json).unwrap();
        let e = Libvirt::find_in(dir.path()).unwrap_err();
        assert!(e.contains("libvirtd does not run"), "{e}");
    }

    #[test]
    fn a_live_pid_must_run_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("x.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(live_pid(&pid_file, LIBVIRTD), None);
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        let me = me.to_str().unwrap();
        assert_eq!(live_pid(&pid_file, me), Some(std::process::id()));
        assert!(pids_of(me).contains(&std::process::id()));
        std::fs::write(&pid_file, "not a pid").unwrap();
        assert_eq!(live_pid(&pid_file, me), None);
    }

    #[test]
    fn the_default_directory_is_below_the_workspace_root() {
        if std::env::var_os(DIR_ENV).is_some() {
            return;
        }
        let d = dir();
        assert!(d.ends_with(DEFAULT_DIR), "{}", d.display());
        assert!(d
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("Cargo.toml")
            .exists());
    }

    #[test]
    fn libvirtd_restarts_and_answers_again() {
        let lv = match Libvirt::find() {
            Ok(lv) => lv,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        };
        let before = lv.libvirtd_pid().unwrap();
        lv.restart_libvirtd().unwrap();
        let after = lv.libvirtd_pid().expect("libvirtd runs again");
        assert_ne!(before, after);
        assert!(virsh_answers(&lv.uri));
        Libvirt::find().unwrap();
    }
}
