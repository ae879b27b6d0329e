//! Bringing the stack up and down, and its status: the packages installed, the services
//! started in order and waited for, and every process stopped by pid.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dop_testbed::openstack::{SERVICES, TESTBED_JSON};
use dop_testbed::signal;

use crate::host::{installed, mkdir, RemoveOnDrop};

use super::probe::{tcp_accepts, Check};
use super::process::{run_appending, tail};
use super::seed::{catalog, Api};
use super::{Stack, CINDER, PLACEMENT};

/// What `up` installs when missing: the OpenStack libraries (not the service packages), uwsgi,
/// RabbitMQ, MariaDB and its Python driver.
const PACKAGES: &[&str] = &[
    "python3-keystone",
    "python3-nova",
    "python3-neutron",
    "python3-glance",
    "python3-cinder",
    "python3-placement",
    "python3-pymysql",
    "uwsgi-core",
    "uwsgi-plugin-python3",
    "rabbitmq-server",
    "mariadb-server",
];
/// Downloaded and unpacked (never installed) for their paste configurations.
const COMMON_PACKAGES: &[&str] = &[
    "nova-common",
    "neutron-common",
    "glance-common",
    "cinder-common",
];

/// Every port the stack listens on; `up` refuses to start when one is taken.
const PORTS: &[u16] = &[4369, 5672, 25672, 3306, 5000, 8778, 8774, 9696, 9292, 8776];
/// The compute host of Nova's fake driver.
const COMPUTE_HOST: &str = "fakecompute1";

impl Stack {
    // ---- up ----------------------------------------------------------------------------

    pub(super) fn up(&self) -> Result<(), String> {
        let start = Instant::now();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let why = "`cargo xtask openstack up` installs packages and starts MariaDB, \
                       RabbitMQ and OpenStack as root: run it as root";
            return Err(why.into());
        }
        fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        if self.check_all().iter().all(Check::up) {
            if self.dir.join(TESTBED_JSON).exists() {
                println!(
                    "openstack: already up in {} (checked in {:.1} s)",
                    self.dir.display(),
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            // Running but never seeded (an earlier seed failed): seed only.
            phase("seed", || self.seed())?;
            return self.finish(start);
        }
        phase("install", || self.install())?;
        if SERVICES.iter().any(|s| self.pid_file(s).exists()) {
            println!("openstack: stopping what an earlier bring-up left running");
            self.stop_all();
        }
        match self.bring_up() {
            Ok(()) => self.finish(start),
            Err(e) => {
                eprintln!("openstack: bring-up failed; stopping what it started");
                let _ = fs::remove_file(self.dir.join(TESTBED_JSON));
                self.stop_all();
                Err(e)
            }
        }
    }

    fn bring_up(&self) -> Result<(), String> {
        phase("configuration", || self.prepare())?;
        phase("MariaDB and RabbitMQ", || self.start_infrastructure())?;
        phase("database schemas", || self.sync_databases())?;
        phase("Keystone, Placement and the catalog", || {
            self.start_identity()
        })?;
        phase("Nova, Neutron, Glance and Cinder", || self.start_services())?;
        phase("compute host and volume backend", || self.wait_backends())?;
        phase("seed", || self.seed())
    }

    fn finish(&self, start: Instant) -> Result<(), String> {
        self.write_testbed_json()?;
        let (rss, pss) = self.memory_kib();
        println!(
            "openstack: up in {:.0} s; {} processes, {} MiB of memory (PSS; RSS sum {} MiB); \
             {} describes it; stop it with `cargo xtask openstack down`",
            start.elapsed().as_secs_f64(),
            self.stack_pids().len(),
            pss / 1024,
            rss / 1024,
            self.dir.join(TESTBED_JSON).display()
        );
        Ok(())
    }

    /// Installs the missing packages and unpacks the `*-common` packages' configuration.
    fn install(&self) -> Result<(), String> {
        let log = self.dir.join("install.log");
        let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
        if !missing.is_empty() {
            println!(
                "openstack: installing {} with apt-get (about 2 minutes), log in {}",
                missing.join(" "),
                log.display()
            );
            apt(&log, &["update", "-q"])?;
            // No package may start a system service (MariaDB, RabbitMQ, epmd): the stack
            // starts its own, bound to loopback, by pid.
            let policy = Path::new("/usr/sbin/policy-rc.d");
            let _guard = if policy.exists() {
                None
            } else {
                fs::write(policy, "#!/bin/sh\n# cargo xtask openstack up\nexit 101\n")
                    .and_then(|()| fs::set_permissions(policy, fs::Permissions::from_mode(0o755)))
                    .map_err(|e| format!("{}: {e}", policy.display()))?;
                Some(RemoveOnDrop(policy.to_path_buf()))
            };
            let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
            args.extend(&missing);
            apt(&log, &args)?;
        }
        let pkg = self.dir.join("pkg");
        let stamp = pkg.join(".unpacked");
        if !stamp.exists() {
            let debs = self.dir.join("debs");
            let _ = fs::remove_dir_all(&debs);
            let _ = fs::remove_dir_all(&pkg);
            mkdir(&debs)?;
            let download = |log: &Path| {
                let mut cmd = Command::new("apt-get");
                cmd.arg("download").args(COMMON_PACKAGES).current_dir(&debs);
                run_appending(log, &mut cmd)
            };
            if download(&log).is_err() {
                // The package lists may be missing or older than the mirror.
                apt(&log, &["update", "-q"])?;
                download(&log)?;
            }
            for deb in fs::read_dir(&debs).map_err(|e| e.to_string())?.flatten() {
                let mut cmd = Command::new("dpkg-deb");
                cmd.arg("-x").arg(deb.path()).arg(&pkg);
                run_appending(&log, &mut cmd)?;
            }
            fs::write(&stamp, "").map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// epmd, RabbitMQ (left booting) and MariaDB with the services' databases.
    fn start_infrastructure(&self) -> Result<(), String> {
        let taken: Vec<String> = PORTS
            .iter()
            .filter(|p| tcp_accepts(**p))
            .map(ToString::to_string)
            .collect();
        if !taken.is_empty() {
            return Err(format!(
                "port(s) {} of 127.0.0.1 are taken by another process (`ss -ltnp` names it)",
                taken.join(", ")
            ));
        }
        // RabbitMQ's Erlang registers with epmd; started here, in the foreground, so that
        // `down` can stop it by pid (Erlang would otherwise start a daemon of its own). Through
        // a link in run/bin, so that its command line, like every other process's of the stack,
        // names the run directory.
        std::os::unix::fs::symlink("/usr/bin/epmd", self.bin("epmd"))
            .map_err(|e| format!("{}: {e}", self.bin("epmd").display()))?;
        let mut epmd = Command::new(self.bin("epmd"));
        epmd.args(["-address", "127.0.0.1", "-port", "4369"]);
        self.spawn("epmd", &mut epmd)?;
        self.wait("epmd", "port 4369", 10, || tcp_accepts(4369))?;

        let rabbit = self.run_dir().join("rabbitmq");
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        cmd.current_dir(&rabbit)
            // The Erlang cookie goes there.
            .env("HOME", &rabbit)
            // `exec erl` instead of a shell that waits for it: the pid is the broker's.
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .env("RABBITMQ_NODENAME", "rabbit@localhost")
            .env("RABBITMQ_USE_LONGNAME", "false")
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", "5672")
            .env("RABBITMQ_DIST_PORT", "25672")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_MNESIA_BASE", rabbit.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", rabbit.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_PID_FILE", rabbit.join("rabbit.pid"))
            .env("RABBITMQ_CONFIG_FILE", self.etc("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", self.etc("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.etc("enabled_plugins"));
        self.spawn("rabbitmq", &mut cmd)?;
        self.start_mariadb()
    }

    /// Keystone and Placement under uwsgi, then the catalog, the `service` project and role.
    fn start_identity(&self) -> Result<(), String> {
        let keystone_conf = format!(
            "OS_KEYSTONE_CONFIG_FILES={}",
            self.etc("keystone.conf").display()
        );
        self.spawn(
            "keystone",
            &mut uwsgi(5000, "/usr/bin/keystone-wsgi-public", &keystone_conf),
        )?;
        let placement_conf = format!(
            "OS_PLACEMENT_CONFIG_DIR={}",
            self.etc("placement").display()
        );
        self.spawn(
            "placement",
            &mut uwsgi(8778, "/usr/bin/placement-api", &placement_conf),
        )?;
        self.wait_answers("keystone", 60)?;
        self.wait_answers("placement", 60)?;
        let api =
            Api::login("admin", "admin", "admin").map_err(|e| self.failure("keystone", &e))?;
        catalog(&api).map_err(|e| self.failure("keystone", &e))
    }

    /// Nova, Neutron, Glance and Cinder, once RabbitMQ is up; waits for their APIs.
    fn start_services(&self) -> Result<(), String> {
        self.wait("rabbitmq", "AMQP on port 5672", 90, || tcp_accepts(5672))?;
        let conf = |f: &str| self.etc(f).to_string_lossy().into_owned();
        for (service, file, extra) in [
            ("nova-api", "nova.conf", None),
            ("nova-conductor", "nova.conf", None),
            ("nova-scheduler", "nova.conf", None),
            ("nova-compute", "nova.conf", None),
            ("neutron-server", "neutron.conf", Some("ml2_conf.ini")),
            ("glance-api", "glance-api.conf", None),
            ("cinder-api", "cinder.conf", None),
            ("cinder-volume", "cinder.conf", None),
            ("cinder-scheduler", "cinder.conf", None),
        ] {
            if service == "cinder-scheduler" {
                // The scheduler asks the volume services for their backends once, when it
                // starts: after the volume service listens, it is heard at once.
                let log = self.log("cinder-volume");
                let _ = self.wait("cinder-volume", "its RPC server", 60, || {
                    fs::read_to_string(&log)
                        .is_ok_and(|l| l.contains("Initializing RPC dependent components"))
                });
            }
            let mut cmd = Command::new(self.bin(service));
            cmd.args(["--config-file", &conf(file)]);
            if let Some(extra) = extra {
                cmd.args(["--config-file", &conf(extra)]);
            }
            if service == "neutron-server" {
                // The fakebind mechanism driver and its entry point.
                cmd.env("PYTHONPATH", self.run_dir().join("pylib"));
            }
            self.spawn(service, &mut cmd)?;
        }
        for service in ["nova-api", "neutron-server", "glance-api", "cinder-api"] {
            self.wait_answers(service, 120)?;
        }
        Ok(())
    }

    /// Waits for the fake compute host in Placement, maps it to cell1, and waits for Cinder's
    /// scheduler to know the fake volume backend: until then servers and volumes would fail.
    fn wait_backends(&self) -> Result<(), String> {
        let api = Api::login("admin", "admin", "admin")?;
        self.wait(
            "nova-compute",
            "its resource provider in Placement",
            120,
            || {
                api.get(&format!("{PLACEMENT}/resource_providers"))
                    .is_ok_and(|v| {
                        v["resource_providers"]
                            .as_array()
                            .is_some_and(|a| !a.is_empty())
                    })
            },
        )?;
        let nova = self.etc("nova.conf").to_string_lossy().into_owned();
        let mapped = || {
            self.sql(&format!(
                "SELECT COUNT(*) FROM nova_api.host_mappings WHERE host = '{COMPUTE_HOST}'"
            ))
            .is_ok_and(|n| n.trim() != "0")
        };
        // Mapped now rather than by the scheduler's periodic discovery, or the first servers
        // fail with HostMappingNotFound.
        let start = Instant::now();
        loop {
            let mut discover = Command::new(self.bin("nova-manage"));
            discover.args([
                "--config-file",
                &nova,
                "cell_v2",
                "discover_hosts",
                "--verbose",
            ]);
            self.run_logged("nova-manage", "nova-compute", &mut discover)?;
            if mapped() {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(self.failure("nova-compute", "its host was never mapped to cell1"));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let pools = format!("{CINDER}/{}/scheduler-stats/get_pools", api.project_id);
        self.wait(
            "cinder-volume",
            "the fake backend in cinder-scheduler",
            120,
            || {
                api.get(&pools)
                    .is_ok_and(|v| v["pools"].as_array().is_some_and(|a| !a.is_empty()))
            },
        )
    }

    // ---- down, status ------------------------------------------------------------------

    pub(super) fn down(&self) -> Result<(), String> {
        let start = Instant::now();
        // First, so that no test finds a stack that is going away.
        for f in [TESTBED_JSON, "adminrc", "demorc"] {
            let _ = fs::remove_file(self.dir.join(f));
        }
        let stopped = self.stop_all();
        let left = self.leftovers();
        for (pid, line) in &left {
            eprintln!("openstack: killing leftover process {pid}: {line}");
            signal(*pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(if left.is_empty() { 0 } else { 500 }));
        // The databases and the broker's state go too: the next `up` starts a clean cloud.
        // The logs stay for a look after the fact; `up` clears them.
        let _ = fs::remove_dir_all(self.run_dir());
        let _ = fs::remove_dir_all(self.pid_dir());
        let still: Vec<u32> = self.leftovers().iter().map(|(p, _)| *p).collect();
        if !still.is_empty() {
            return Err(format!("processes of the stack still run: {still:?}"));
        }
        println!(
            "openstack: down ({stopped} processes stopped in {:.1} s; logs kept in {})",
            start.elapsed().as_secs_f64(),
            self.log_dir().display()
        );
        Ok(())
    }

    pub(super) fn status(&self) -> Result<(), String> {
        let checks = self.check_all();
        for c in &checks {
            let pid = c.pid.map_or_else(|| "-".to_string(), |p| p.to_string());
            let state = if c.running {
                "running"
            } else if c.pid.is_some() {
                "NOT RUNNING"
            } else {
                "not started"
            };
            let answer = match c.answers {
                Some(false) => format!("  NOT ANSWERING: {}", c.detail),
                Some(true) => format!("  {}", c.detail),
                None => String::new(),
            };
            println!("{:<17} pid {pid:<8} {state}{answer}", c.service);
        }
        let down = checks.iter().filter(|c| !c.up()).count();
        let json = self.dir.join(TESTBED_JSON);
        if down == 0 {
            let (rss, pss) = self.memory_kib();
            println!(
                "all {} services up; {} MiB of memory (PSS; RSS sum {} MiB); {}",
                checks.len(),
                pss / 1024,
                rss / 1024,
                if json.exists() {
                    format!("{} present", json.display())
                } else {
                    format!("{} MISSING (not seeded)", json.display())
                }
            );
            Ok(())
        } else {
            Err(format!(
                "{down} of {} services not up (`cargo xtask openstack up` starts them)",
                checks.len()
            ))
        }
    }
}

/// Prints how long a phase of `up` took.
fn phase<T>(name: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let start = Instant::now();
    let result = f();
    let failed = if result.is_err() { " (failed)" } else { "" };
    println!(
        "openstack: {name}: {:.1} s{failed}",
        start.elapsed().as_secs_f64()
    );
    result
}

fn uwsgi(port: u16, wsgi_file: &str, env: &str) -> Command {
    let mut cmd = Command::new("uwsgi-core");
    cmd.args(["--plugin", "python3", "--http-socket"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--wsgi-file", wsgi_file, "--env", env])
        .args(["--master", "--processes", "1", "--threads", "4"])
        .args(["--die-on-term", "--need-app"])
        // uwsgi resets kept-alive connections: clients must not reuse them.
        .args(["--add-header", "Connection: close"]);
    cmd
}

fn apt(log: &Path, args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-o", "DPkg::Lock::Timeout=600"])
        .args(args);
    run_appending(log, &mut cmd).map_err(|e| {
        format!(
            "{e}\n--- {} (last 30 lines) ---\n{}",
            log.display(),
            tail(log, 30)
        )
    })
}
