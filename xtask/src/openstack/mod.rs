//! `cargo xtask openstack up|down|status`: a real OpenStack on this machine for the OpenStack
//! provider's integration tests (see `dop_testbed::openstack`, which the tests use to find it).
//!
//! Debian 12's OpenStack Zed: Keystone and Placement under uwsgi, Nova (API, conductor,
//! scheduler, compute with the fake driver: no guest boots, servers go ACTIVE), Neutron (ML2 with
//! the tiny `fakebind` mechanism driver of `xtask/openstack/fakebind_ml2.py`: no agent), Glance
//! (file store), Cinder (the fake volume driver), on MariaDB and RabbitMQ. Only the `python3-*`
//! libraries are installed, not the service packages (they would pull libvirt, LVM, iSCSI and
//! start system services); the paste configurations come from the `*-common` packages, unpacked.
//!
//! Everything lives in one directory (`$DOP_OPENSTACK_DIR`, else `target/openstack`), listens
//! on 127.0.0.1 only and is started by pid (`pids/<service>.pid`): no systemd, no system
//! service. `down` stops every one of them and throws the databases away, so each `up` after a
//! `down` starts from a clean cloud.
//!
//! Its parts, one job each: `lifecycle` (up, down, status), `config` (the run directory),
//! `database` (MariaDB and the schemas), `process` (the services by pid), `probe` (whether a
//! service answers) and `seed` (what the tests find, made through the REST APIs).

use std::path::PathBuf;

mod config;
mod database;
mod lifecycle;
mod probe;
mod process;
mod seed;

/// The URLs of the stack's APIs.
const KEYSTONE: &str = "http://127.0.0.1:5000/v3";
const PLACEMENT: &str = "http://127.0.0.1:8778";
const NOVA: &str = "http://127.0.0.1:8774/v2.1";
const NEUTRON: &str = "http://127.0.0.1:9696/v2.0";
const GLANCE: &str = "http://127.0.0.1:9292/v2";
const CINDER: &str = "http://127.0.0.1:8776/v3";

/// `cargo xtask openstack up|down|status`.
pub fn run(args: &[String]) -> Result<(), String> {
    let stack = Stack {
        dir: dop_testbed::openstack::dir(),
    };
    match args.first().map(String::as_str) {
        Some("up") => stack.up(),
        Some("down") => stack.down(),
        Some("status") => stack.status(),
        _ => Err("usage: cargo xtask openstack up|down|status".into()),
    }
}

/// The stack's directory and its layout.
struct Stack {
    dir: PathBuf,
}

impl Stack {
    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn etc(&self, file: &str) -> PathBuf {
        self.dir.join("run/etc").join(file)
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("run/bin").join(name)
    }

    fn pid_dir(&self) -> PathBuf {
        self.dir.join("pids")
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{name}.log"))
    }

    fn pid_file(&self, service: &str) -> PathBuf {
        self.pid_dir().join(format!("{service}.pid"))
    }
}
