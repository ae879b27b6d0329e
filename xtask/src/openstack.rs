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

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dop_testbed::openstack::{alive, process_tree, SERVICES, TESTBED_JSON};
use dop_testbed::signal;
use serde_json::{json, Value};

use crate::host::{installed, mkdir, write, RemoveOnDrop};

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

/// The services' PATH: Debian's own python3 (a developer's pyenv or venv python lacks the
/// OpenStack libraries).
const PATH: &str = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin";
const DB: &str = "mysql+pymysql://os:os@127.0.0.1";
const MQ: &str = "rabbit://guest:guest@127.0.0.1:5672/";
const DATABASES: &[&str] = &[
    "keystone",
    "placement",
    "nova_api",
    "nova",
    "nova_cell0",
    "neutron",
    "glance",
    "cinder",
];
const KEYSTONE: &str = "http://127.0.0.1:5000/v3";
const PLACEMENT: &str = "http://127.0.0.1:8778";
const NOVA: &str = "http://127.0.0.1:8774/v2.1";
const NEUTRON: &str = "http://127.0.0.1:9696/v2.0";
const GLANCE: &str = "http://127.0.0.1:9292/v2";
const CINDER: &str = "http://127.0.0.1:8776/v3";
/// The service catalog: name, type, URL (the same for the public, internal and admin endpoints).
const CATALOG: &[(&str, &str, &str)] = &[
    ("placement", "placement", PLACEMENT),
    ("nova", "compute", NOVA),
    ("neutron", "network", "http://127.0.0.1:9696"),
    ("glance", "image", "http://127.0.0.1:9292"),
    (
        "cinderv3",
        "volumev3",
        "http://127.0.0.1:8776/v3/%(project_id)s",
    ),
];
/// Every port the stack listens on; `up` refuses to start when one is taken.
const PORTS: &[u16] = &[4369, 5672, 25672, 3306, 5000, 8778, 8774, 9696, 9292, 8776];
/// The compute host of Nova's fake driver.
const COMPUTE_HOST: &str = "fakecompute1";
/// Console scripts whose `/usr/bin` entries live in the service packages, which are not
/// installed: name and module (each has a `main`).
const WRAPPERS: &[(&str, &str)] = &[
    ("nova-manage", "nova.cmd.manage"),
    ("nova-api", "nova.cmd.api_os_compute"),
    ("nova-conductor", "nova.cmd.conductor"),
    ("nova-scheduler", "nova.cmd.scheduler"),
    ("nova-compute", "nova.cmd.compute"),
    ("neutron-db-manage", "neutron.db.migration.cli"),
    ("neutron-server", "neutron.cmd.eventlet.server"),
    ("glance-manage", "glance.cmd.manage"),
    ("glance-api", "glance.cmd.api"),
    ("cinder-manage", "cinder.cmd.manage"),
    ("cinder-api", "cinder.cmd.api"),
    ("cinder-scheduler", "cinder.cmd.scheduler"),
    ("cinder-volume", "cinder.cmd.volume"),
];
/// Configuration templates (`@RUN@`, `@PKG@`, `@DB@`, `@MQ@`, `@AUTH@`, `@AUTHTOKEN@`) and where
/// they go below `run/etc`.
const TEMPLATES: &[(&str, &str)] = &[
    ("my.cnf", include_str!("../openstack/my.cnf")),
    ("rabbitmq.conf", include_str!("../openstack/rabbitmq.conf")),
    ("keystone.conf", include_str!("../openstack/keystone.conf")),
    (
        "placement/placement.conf",
        include_str!("../openstack/placement.conf"),
    ),
    ("nova.conf", include_str!("../openstack/nova.conf")),
    ("neutron.conf", include_str!("../openstack/neutron.conf")),
    ("ml2_conf.ini", include_str!("../openstack/ml2_conf.ini")),
    (
        "glance-api.conf",
        include_str!("../openstack/glance-api.conf"),
    ),
    ("cinder.conf", include_str!("../openstack/cinder.conf")),
];
const FAKEBIND_ML2: &str = include_str!("../openstack/fakebind_ml2.py");

/// The services' own Keystone login (the admin, who also has the `service` role).
const AUTH: &str = "auth_url = http://127.0.0.1:5000/v3
auth_type = password
username = admin
password = admin
project_name = admin
user_domain_name = Default
project_domain_name = Default";
const AUTHTOKEN: &str = "[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:5000/v3
@AUTH@
region_name = RegionOne
service_token_roles_required = true";

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

/// How a service shows that it answers.
enum Probe {
    /// Accepts TCP connections on this port.
    Tcp(u16),
    /// Answers HTTP on this port and path with a status below 500.
    Http(u16, &'static str),
    /// No port: its process runs.
    Process,
}

fn probe(service: &str) -> Probe {
    match service {
        "epmd" => Probe::Tcp(4369),
        "rabbitmq" => Probe::Tcp(5672),
        "mariadb" => Probe::Tcp(3306),
        "keystone" => Probe::Http(5000, "/v3"),
        "placement" => Probe::Http(8778, "/"),
        "nova-api" => Probe::Http(8774, "/"),
        "neutron-server" => Probe::Http(9696, "/"),
        "glance-api" => Probe::Http(9292, "/"),
        "cinder-api" => Probe::Http(8776, "/"),
        _ => Probe::Process,
    }
}

/// One service's state, as `status` prints it.
struct Check {
    service: &'static str,
    pid: Option<u32>,
    running: bool,
    answers: Option<bool>,
    detail: String,
}

impl Check {
    fn up(&self) -> bool {
        self.running && self.answers != Some(false)
    }
}

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

    /// The pid a service's pid file records, running or not.
    fn pid(&self, service: &str) -> Option<u32> {
        fs::read_to_string(self.pid_file(service))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The recorded pid, when that process is still the one this stack started (a pid file
    /// from before a reboot may name someone else's process now): its command line names the
    /// run directory.
    fn live_pid(&self, service: &str) -> Option<u32> {
        let pid = self.pid(service)?;
        if !alive(pid) {
            return None;
        }
        cmdline(pid)
            .contains(&*self.run_dir().to_string_lossy())
            .then_some(pid)
    }

    fn check(&self, service: &'static str) -> Check {
        let pid = self.pid(service);
        let running = self.live_pid(service).is_some();
        let (answers, detail) = match probe(service) {
            Probe::Tcp(port) => {
                let ok = tcp_accepts(port);
                let state = if ok { "accepts" } else { "refuses" };
                (Some(ok), format!("127.0.0.1:{port} {state} connections"))
            }
            Probe::Http(port, path) => match http_status(port, path) {
                Some(code) => (
                    Some(code < 500),
                    format!("http://127.0.0.1:{port}{path} answers {code}"),
                ),
                None => (
                    Some(false),
                    format!("http://127.0.0.1:{port}{path} does not answer"),
                ),
            },
            Probe::Process => (None, String::new()),
        };
        Check {
            service,
            pid,
            running,
            answers,
            detail,
        }
    }

    fn check_all(&self) -> Vec<Check> {
        SERVICES.iter().map(|s| self.check(s)).collect()
    }

    // ---- up ----------------------------------------------------------------------------

    fn up(&self) -> Result<(), String> {
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

    /// A fresh run directory (configuration, wrappers, the ML2 driver), log and pid directory.
    fn prepare(&self) -> Result<(), String> {
        for d in [self.run_dir(), self.log_dir(), self.pid_dir()] {
            if d.exists() {
                fs::remove_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            }
            mkdir(&d)?;
        }
        let run = self.run_dir();
        for sub in [
            "etc/placement",
            "bin",
            "pylib/fakebind_ml2",
            "pylib/fakebind_ml2-0.1.dist-info",
            "rabbitmq",
            "keystone",
            "nova",
            "neutron",
            "glance/images",
            "cinder",
            "locks",
        ] {
            mkdir(&run.join(sub))?;
        }
        for (file, template) in TEMPLATES {
            write(&self.etc(file), &self.render(template))?;
        }
        // No plugin (the management plugin would listen on all addresses) and none of
        // /etc/rabbitmq's settings.
        write(&self.etc("enabled_plugins"), "[].\n")?;
        write(&self.etc("rabbitmq-env.conf"), "")?;
        for (name, module) in WRAPPERS {
            let path = self.bin(name);
            write(
                &path,
                &format!(
                    "#!/usr/bin/python3\nimport sys\nfrom {module} import main\n\
                     sys.argv[0] = \"{name}\"\nsys.exit(main())\n"
                ),
            )?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        let lib = run.join("pylib");
        write(&lib.join("fakebind_ml2/__init__.py"), FAKEBIND_ML2)?;
        let info = lib.join("fakebind_ml2-0.1.dist-info");
        write(
            &info.join("METADATA"),
            "Metadata-Version: 2.1\nName: fakebind-ml2\nVersion: 0.1\n",
        )?;
        write(
            &info.join("entry_points.txt"),
            "[neutron.ml2.mechanism_drivers]\nfakebind = fakebind_ml2:FakeBindMechanismDriver\n",
        )?;
        Ok(())
    }

    fn render(&self, template: &str) -> String {
        template
            .replace("@AUTHTOKEN@", AUTHTOKEN)
            .replace("@AUTH@", AUTH)
            .replace("@RUN@", &self.run_dir().to_string_lossy())
            .replace("@PKG@", &self.dir.join("pkg").to_string_lossy())
            .replace("@DB@", DB)
            .replace("@MQ@", MQ)
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

        let defaults = format!("--defaults-file={}", self.etc("my.cnf").display());
        let mut init = Command::new("mariadb-install-db");
        init.args([
            &defaults,
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ]);
        self.run_logged("mariadb-install-db", "mariadb", &mut init)?;
        let mut mariadbd = Command::new("mariadbd");
        mariadbd.arg(&defaults);
        self.spawn("mariadb", &mut mariadbd)?;
        self.wait("mariadb", "SQL", 60, || self.sql("SELECT 1").is_ok())?;
        let mut sql: String = DATABASES
            .iter()
            .map(|db| format!("CREATE DATABASE IF NOT EXISTS {db}; "))
            .collect();
        sql.push_str(
            "CREATE USER IF NOT EXISTS 'os'@'127.0.0.1' IDENTIFIED BY 'os'; \
             GRANT ALL ON *.* TO 'os'@'127.0.0.1'; FLUSH PRIVILEGES;",
        );
        self.sql(&sql).map_err(|e| self.failure("mariadb", &e))?;
        Ok(())
    }

    /// Every service's schema, in parallel (one thread per service, its steps in order).
    fn sync_databases(&self) -> Result<(), String> {
        let etc = |f: &str| self.etc(f).to_string_lossy().into_owned();
        let bin = |n: &str| self.bin(n).to_string_lossy().into_owned();
        let cmd = |program: String, args: &[&str]| {
            let mut c = Command::new(program);
            c.args(args);
            c
        };
        let keystone = etc("keystone.conf");
        let nova = etc("nova.conf");
        let cell0 = format!("{DB}/nova_cell0");
        let admin_url = format!("{KEYSTONE}/");
        let km = |args: &[&str]| {
            let mut c = cmd("keystone-manage".into(), &["--config-file", &keystone]);
            c.args(args);
            c
        };
        let nm = |args: &[&str]| {
            let mut c = cmd(bin("nova-manage"), &["--config-file", &nova]);
            c.args(args);
            c
        };
        let chains: Vec<(&str, Vec<Command>)> = vec![
            (
                "keystone",
                vec![
                    km(&["db_sync"]),
                    km(&[
                        "fernet_setup",
                        "--keystone-user",
                        "root",
                        "--keystone-group",
                        "root",
                    ]),
                    km(&[
                        "credential_setup",
                        "--keystone-user",
                        "root",
                        "--keystone-group",
                        "root",
                    ]),
                    km(&[
                        "bootstrap",
                        "--bootstrap-password",
                        "admin",
                        "--bootstrap-admin-url",
                        &admin_url,
                        "--bootstrap-internal-url",
                        &admin_url,
                        "--bootstrap-public-url",
                        &admin_url,
                        "--bootstrap-region-id",
                        "RegionOne",
                    ]),
                ],
            ),
            (
                "placement",
                vec![cmd(
                    "placement-manage".into(),
                    &[
                        "--config-file",
                        &etc("placement/placement.conf"),
                        "db",
                        "sync",
                    ],
                )],
            ),
            (
                "glance",
                vec![cmd(
                    bin("glance-manage"),
                    &["--config-file", &etc("glance-api.conf"), "db_sync"],
                )],
            ),
            (
                "cinder",
                vec![cmd(
                    bin("cinder-manage"),
                    &["--config-file", &etc("cinder.conf"), "db", "sync"],
                )],
            ),
            (
                "neutron",
                vec![cmd(
                    bin("neutron-db-manage"),
                    &[
                        "--config-file",
                        &etc("neutron.conf"),
                        "--config-file",
                        &etc("ml2_conf.ini"),
                        "upgrade",
                        "head",
                    ],
                )],
            ),
            (
                "nova",
                vec![
                    nm(&["api_db", "sync"]),
                    nm(&["cell_v2", "map_cell0", "--database_connection", &cell0]),
                    nm(&["cell_v2", "create_cell", "--name", "cell1", "--verbose"]),
                    nm(&["db", "sync"]),
                ],
            ),
        ];
        let results: Vec<(&str, f64, Result<(), String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = chains
                .into_iter()
                .map(|(name, commands)| {
                    scope.spawn(move || {
                        let start = Instant::now();
                        let log = format!("dbsync-{name}");
                        let mut result = Ok(());
                        for mut command in commands {
                            if let Err(e) = self.run_logged(&log, name, &mut command) {
                                result = Err(e);
                                break;
                            }
                        }
                        (name, start.elapsed().as_secs_f64(), result)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a schema thread panicked"))
                .collect()
        });
        let times: Vec<String> = results
            .iter()
            .map(|(name, secs, _)| format!("{name} {secs:.0} s"))
            .collect();
        println!("openstack:   schemas: {}", times.join(", "));
        results.into_iter().try_for_each(|(_, _, r)| r)
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

    /// Projects, users, quotas, flavors, the image, networks, the router and security groups:
    /// what the tests expect (each made only when missing).
    fn seed(&self) -> Result<(), String> {
        let api = Api::login("admin", "admin", "admin")?;
        let member = role(&api, "member")?;
        let demo = project(&api, "demo")?;
        grant(&api, &demo, &user(&api, "demo", "demo", &demo)?, &member)?;
        let quota = project(&api, "dop-quota")?;
        grant(
            &api,
            &quota,
            &user(&api, "dop-quota", "dop-quota", &quota)?,
            &member,
        )?;
        // dop-quota may start no server ("quota exceeded"); the demo project gets room for
        // the tests' fleets and leftovers (Nova's default is 10 servers, 20 vCPUs).
        api.put(
            &format!("{NOVA}/os-quota-sets/{quota}"),
            &json!({"quota_set": {"instances": 0}}),
        )?;
        api.put(
            &format!("{NOVA}/os-quota-sets/{demo}"),
            &json!({"quota_set": {"instances": 100, "cores": 200, "ram": 409_600}}),
        )?;
        api.put(
            &format!("{CINDER}/{}/os-quota-sets/{demo}", api.project_id),
            &json!({"quota_set": {"volumes": 100, "gigabytes": 10_000, "snapshots": 100}}),
        )?;

        let flavors = api.get(&format!("{NOVA}/flavors?is_public=None"))?;
        for (name, vcpus, ram, disk) in [
            ("m1.tiny", 1, 512, 1),
            ("m1.small", 1, 2048, 10),
            ("m1.medium", 2, 4096, 10),
            // More disk than the fake compute host has: the scheduler finds no host and the
            // server goes to ERROR (the provider's test of that fault).
            ("m1.nohost", 1, 512, 2_000_000),
        ] {
            if !has_name(&flavors["flavors"], name) {
                api.post(
                    &format!("{NOVA}/flavors"),
                    &json!({"flavor": {"name": name, "vcpus": vcpus, "ram": ram, "disk": disk}}),
                )?;
            }
        }

        let images = api.get(&format!("{GLANCE}/images?name=cirros-fake"))?;
        let active = images["images"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["status"] == "active");
        if !active {
            for i in images["images"].as_array().into_iter().flatten() {
                api.delete(&format!("{GLANCE}/images/{}", str_of(&i["id"])))?;
            }
            let image = api.post(
                &format!("{GLANCE}/images"),
                &json!({"name": "cirros-fake", "disk_format": "raw", "container_format": "bare",
                        "visibility": "public"}),
            )?;
            let mut data = vec![0u8; 1 << 20];
            fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut data))
                .map_err(|e| format!("/dev/urandom: {e}"))?;
            api.upload(
                &format!("{GLANCE}/images/{}/file", str_of(&image["id"])),
                data,
            )?;
        }

        let network = |name: &str, body: Value| -> Result<String, String> {
            let found = api.get(&format!("{NEUTRON}/networks?name={name}"))?;
            match found["networks"].get(0) {
                Some(n) => Ok(str_of(&n["id"])),
                None => Ok(str_of(
                    &api.post(&format!("{NEUTRON}/networks"), &json!({"network": body}))?
                        ["network"]["id"],
                )),
            }
        };
        // A tenant subnet (with DHCP, as a cloud's usually are; no agent serves it) of a
        // project, or the external one (no DHCP) of the admin.
        let subnet = |name: &str, net: &str, cidr: &str, project: Option<&str>| {
            let found = api.get(&format!("{NEUTRON}/subnets?name={name}"))?;
            if let Some(s) = found["subnets"].get(0) {
                return Ok::<_, String>(str_of(&s["id"]));
            }
            let mut body = json!({"name": name, "network_id": net, "ip_version": 4,
                                  "cidr": cidr, "enable_dhcp": project.is_some()});
            if let Some(project) = project {
                body["project_id"] = json!(project);
            }
            let created = api.post(&format!("{NEUTRON}/subnets"), &json!({"subnet": body}))?;
            Ok(str_of(&created["subnet"]["id"]))
        };
        // The tenant networks belong to the demo project, shared with every project: Neutron
        // lets only a network's owner (or an admin) choose a port's fixed IP.
        let tenant = |name: &str| json!({"name": name, "shared": true, "project_id": demo});
        let net = network("dop-net", tenant("dop-net"))?;
        let sub = subnet("dop-sub", &net, "10.99.0.0/24", Some(&demo))?;
        let net2 = network("dop-net2", tenant("dop-net2"))?;
        let sub2 = subnet("dop-sub2", &net2, "10.98.0.0/24", Some(&demo))?;
        let public = network(
            "public",
            json!({"name": "public", "router:external": true,
                   "provider:network_type": "flat", "provider:physical_network": "public"}),
        )?;
        subnet("public-sub", &public, "203.0.113.0/24", None)?;

        let routers = api.get(&format!("{NEUTRON}/routers?name=dop-router"))?;
        let router = match routers["routers"].get(0) {
            Some(r) => str_of(&r["id"]),
            None => str_of(
                &api.post(
                    &format!("{NEUTRON}/routers"),
                    &json!({"router": {"name": "dop-router", "project_id": demo,
                                       "external_gateway_info": {"network_id": public}}}),
                )?["router"]["id"],
            ),
        };
        let ports = api.get(&format!(
            "{NEUTRON}/ports?device_id={router}&device_owner=network:router_interface"
        ))?;
        for s in [&sub, &sub2] {
            let attached = ports["ports"].as_array().into_iter().flatten().any(|p| {
                p["fixed_ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|ip| ip["subnet_id"] == s.as_str())
            });
            if !attached {
                api.put(
                    &format!("{NEUTRON}/routers/{router}/add_router_interface"),
                    &json!({"subnet_id": s}),
                )?;
            }
        }

        for (name, port) in [("dop-web", 80), ("dop-ssh", 22)] {
            let found = api.get(&format!(
                "{NEUTRON}/security-groups?name={name}&project_id={demo}"
            ))?;
            let group = match found["security_groups"].get(0) {
                Some(g) => g.clone(),
                None => api.post(
                    &format!("{NEUTRON}/security-groups"),
                    &json!({"security_group": {"name": name, "project_id": demo,
                                               "description": format!("tcp {port} in")}}),
                )?["security_group"]
                    .clone(),
            };
            let has_rule = group["security_group_rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["direction"] == "ingress" && r["port_range_min"] == port);
            if !has_rule {
                api.post(
                    &format!("{NEUTRON}/security-group-rules"),
                    &json!({"security_group_rule": {
                        "security_group_id": group["id"], "direction": "ingress",
                        "ethertype": "IPv4", "protocol": "tcp",
                        "port_range_min": port, "port_range_max": port}}),
                )?;
            }
        }
        Ok(())
    }

    fn write_testbed_json(&self) -> Result<(), String> {
        let account = |name: &str| json!({"username": name, "password": name, "project": name, "domain": "default"});
        let testbed = json!({
            "auth_url": KEYSTONE,
            "region": "RegionOne",
            "admin": account("admin"),
            "demo": account("demo"),
            "quota": account("dop-quota"),
            "image": "cirros-fake",
            "flavors": ["m1.tiny", "m1.small", "m1.medium", "m1.nohost"],
            "networks": ["dop-net", "dop-net2"],
            "subnets": ["dop-sub", "dop-sub2"],
            "external_network": "public",
            "security_groups": ["dop-web", "dop-ssh"],
            "services": SERVICES,
            "pid_dir": self.pid_dir(),
            "log_dir": self.log_dir(),
        });
        let rc = |name: &str| {
            format!(
                "export OS_AUTH_URL={KEYSTONE} OS_IDENTITY_API_VERSION=3 OS_REGION_NAME=RegionOne\n\
                 export OS_USERNAME={name} OS_PASSWORD={name} OS_PROJECT_NAME={name}\n\
                 export OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default\n"
            )
        };
        write(&self.dir.join("adminrc"), &rc("admin"))?;
        write(&self.dir.join("demorc"), &rc("demo"))?;
        let text = serde_json::to_string_pretty(&testbed).map_err(|e| e.to_string())?;
        // Written whole, then renamed: a test never reads half a file.
        let tmp = self.dir.join(format!("{TESTBED_JSON}.tmp"));
        write(&tmp, &format!("{text}\n"))?;
        fs::rename(&tmp, self.dir.join(TESTBED_JSON)).map_err(|e| e.to_string())
    }

    // ---- processes ---------------------------------------------------------------------

    /// Starts a service in the background, in a process group of its own, its output in
    /// `log/<service>.log`, its pid in `pids/<service>.pid`.
    fn spawn(&self, service: &str, cmd: &mut Command) -> Result<u32, String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(service))
            .map_err(|e| format!("{}: {e}", self.log(service).display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        clean_env(cmd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("{service}: cannot start {:?}: {e}", cmd.get_program()))?;
        let pid = child.id();
        write(&self.pid_file(service), &format!("{pid}\n"))?;
        Ok(pid)
    }

    /// Runs a command to its end, its output appended to `log/<log>.log`; a failure names the
    /// service and shows the end of that log.
    fn run_logged(&self, log: &str, service: &str, cmd: &mut Command) -> Result<(), String> {
        let path = self.log(log);
        run_appending(&path, clean_env(cmd)).map_err(|e| {
            format!(
                "{service}: {e}\n--- {} (last 30 lines) ---\n{}",
                path.display(),
                tail(&path, 30)
            )
        })
    }

    fn sql(&self, sql: &str) -> Result<String, String> {
        let out = clean_env(Command::new("mariadb").args([
            &format!("--defaults-file={}", self.etc("my.cnf").display()),
            "-N",
            "-B",
            "-e",
            sql,
        ]))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("mariadb: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "mariadb: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Waits (at most `seconds`) for `ready`; fails early when a started service has exited.
    fn wait(
        &self,
        service: &str,
        what: &str,
        seconds: u64,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(dead) = SERVICES
                .iter()
                .find(|s| self.pid(s).is_some_and(|p| !alive(p)))
            {
                return Err(self.failure(dead, "exited"));
            }
            if start.elapsed() > Duration::from_secs(seconds) {
                return Err(self.failure(service, &format!("{what}: not ready after {seconds} s")));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn wait_answers(&self, service: &str, seconds: u64) -> Result<(), String> {
        let Probe::Http(port, path) = probe(service) else {
            unreachable!("{service} has no HTTP API")
        };
        self.wait(
            service,
            &format!("http://127.0.0.1:{port}{path}"),
            seconds,
            || http_status(port, path).is_some_and(|c| c < 500),
        )
    }

    fn failure(&self, service: &str, why: &str) -> String {
        let log = self.log(service);
        format!(
            "{service} failed: {why}\n--- {} (last 30 lines) ---\n{}",
            log.display(),
            tail(&log, 30)
        )
    }

    /// Every process of the stack: the recorded pids and the processes below them.
    fn stack_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for service in SERVICES {
            if let Some(pid) = self.live_pid(service) {
                pids.push(pid);
                pids.extend(process_tree(pid));
            }
        }
        pids
    }

    /// The stack's memory in KiB: the sum of its processes' resident set (`Rss`), and of
    /// their proportional share (`Pss`: pages shared by forked workers counted once).
    fn memory_kib(&self) -> (u64, u64) {
        let field = |text: &str, name: &str| -> u64 {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        self.stack_pids()
            .iter()
            .filter_map(|p| fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
            .fold((0, 0), |(rss, pss), s| {
                (rss + field(&s, "Rss:"), pss + field(&s, "Pss:"))
            })
    }

    /// Stops every process the stack started, by pid: OpenStack's services first (SIGTERM,
    /// SIGKILL after 5 s: cinder-volume takes about 6 s to stop, and the data is thrown away
    /// anyway), then RabbitMQ, MariaDB and epmd (SIGKILL after 30 s), with the workers below
    /// each pid. Removes the pid files; returns how many processes there were.
    fn stop_all(&self) -> usize {
        let openstack: Vec<&str> = SERVICES[3..].iter().rev().copied().collect();
        let mut count = 0;
        for (group, grace) in [(openstack, 5), (vec!["rabbitmq", "mariadb", "epmd"], 30)] {
            let roots: Vec<u32> = group.iter().filter_map(|s| self.live_pid(s)).collect();
            let mut all: Vec<u32> = Vec::new();
            for &pid in &roots {
                all.push(pid);
                all.extend(process_tree(pid));
            }
            for &pid in &roots {
                signal(pid, libc::SIGTERM);
            }
            // A paused service (OpenStack::pause) handles SIGTERM only once it runs again.
            for &pid in &all {
                signal(pid, libc::SIGCONT);
            }
            let start = Instant::now();
            while all.iter().any(|p| alive(*p)) && start.elapsed() < Duration::from_secs(grace) {
                std::thread::sleep(Duration::from_millis(100));
            }
            for &pid in &roots {
                all.extend(process_tree(pid));
            }
            for &pid in &all {
                if alive(pid) {
                    signal(pid, libc::SIGKILL);
                }
            }
            let start = Instant::now();
            while all.iter().any(|p| alive(*p)) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            all.sort_unstable();
            all.dedup();
            count += all.len();
        }
        for service in SERVICES {
            let _ = fs::remove_file(self.pid_file(service));
        }
        count
    }

    /// Processes whose command line names the run directory but that no pid file leads to
    /// (a pid file lost by hand, a worker whose parent died): found in `/proc`.
    fn leftovers(&self) -> Vec<(u32, String)> {
        let run = format!("{}/", self.run_dir().display());
        let me = std::process::id();
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me && alive(pid))
            .filter_map(|pid| {
                let line = cmdline(pid);
                line.contains(&run).then_some((pid, line))
            })
            .collect()
    }

    // ---- down, status ------------------------------------------------------------------

    fn down(&self) -> Result<(), String> {
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

    fn status(&self) -> Result<(), String> {
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

/// The services' environment: Debian's python3 on the PATH, no Python or OpenStack variables
/// of the caller's.
fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("OS_")
            || key.starts_with("PYTHON")
            || key.starts_with("PYENV")
            || key == "VIRTUAL_ENV"
        {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("PATH", PATH).env("LC_ALL", "C.UTF-8")
}

/// Runs a command to its end, its output appended to `log`.
fn run_appending(log: &Path, cmd: &mut Command) -> Result<(), String> {
    let described = format!(
        "{:?} {:?}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>()
    );
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let _ = writeln!(file, "$ {described}");
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .map_err(|e| format!("cannot run {described}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{described} failed ({status})"))
    }
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

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn tcp_accepts(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
}

/// The status code of `GET path` on 127.0.0.1:port (HTTP/1.0, a few seconds at most).
fn http_status(port: u16, path: &str) -> Option<u16> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1)?.parse().ok()
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn has_name(list: &Value, name: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .any(|x| x["name"] == name)
}

// ---- OpenStack's APIs --------------------------------------------------------------------

/// A logged-in client of the stack's APIs (reqwest on a small runtime of its own).
struct Api {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    token: String,
    /// The project the token is scoped to.
    project_id: String,
}

enum Body<'a> {
    None,
    Json(&'a Value),
    Bytes(Vec<u8>),
}

impl Api {
    fn login(username: &str, password: &str, project: &str) -> Result<Api, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        // No connection is reused: uwsgi (Keystone, Placement) closes them.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": username, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
        let (token, project_id) = runtime.block_on(async {
            let response = client
                .post(format!("{KEYSTONE}/auth/tokens"))
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("keystone: {e}"))?;
            let status = response.status();
            let token = response
                .headers()
                .get("x-subject-token")
                .and_then(|t| t.to_str().ok())
                .map(str::to_string);
            let v: Value = response.json().await.unwrap_or_default();
            match token {
                Some(token) if status.is_success() => {
                    Ok((token, str_of(&v["token"]["project"]["id"])))
                }
                _ => Err(format!("keystone refused {username}: {status} {v}")),
            }
        })?;
        Ok(Api {
            runtime,
            client,
            token,
            project_id,
        })
    }

    fn send(&self, method: reqwest::Method, url: &str, body: Body) -> Result<Value, String> {
        self.runtime.block_on(async {
            let mut request = self
                .client
                .request(method.clone(), url)
                .header("X-Auth-Token", &self.token);
            request = match body {
                Body::None => request,
                Body::Json(v) => request.json(v),
                Body::Bytes(b) => request
                    .header("Content-Type", "application/octet-stream")
                    .body(b),
            };
            let response = request
                .send()
                .await
                .map_err(|e| format!("{method} {url}: {e}"))?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(format!("{method} {url}: {status}: {text}"));
            }
            if text.trim().is_empty() {
                Ok(Value::Null)
            } else {
                serde_json::from_str(&text).map_err(|e| format!("{method} {url}: {e}: {text}"))
            }
        })
    }

    fn get(&self, url: &str) -> Result<Value, String> {
        self.send(reqwest::Method::GET, url, Body::None)
    }

    fn post(&self, url: &str, body: &Value) -> Result<Value, String> {
        self.send(reqwest::Method::POST, url, Body::Json(body))
    }

    fn put(&self, url: &str, body: &Value) -> Result<Value, String> {
        self.send(reqwest::Method::PUT, url, Body::Json(body))
    }

    fn delete(&self, url: &str) -> Result<Value, String> {
        self.send(reqwest::Method::DELETE, url, Body::None)
    }

    fn upload(&self, url: &str, data: Vec<u8>) -> Result<Value, String> {
        self.send(reqwest::Method::PUT, url, Body::Bytes(data))
    }
}

/// The service catalog, the `service` project, and the `service` role for the admin (whose
/// login the services use, and whose service token Cinder requires for Nova's detach).
fn catalog(api: &Api) -> Result<(), String> {
    for (name, kind, url) in CATALOG {
        let found = api.get(&format!("{KEYSTONE}/services?type={kind}"))?;
        let id = match found["services"].get(0) {
            Some(s) => str_of(&s["id"]),
            None => str_of(
                &api.post(
                    &format!("{KEYSTONE}/services"),
                    &json!({"service": {"name": name, "type": kind, "enabled": true}}),
                )?["service"]["id"],
            ),
        };
        let endpoints = api.get(&format!("{KEYSTONE}/endpoints?service_id={id}"))?;
        for interface in ["public", "internal", "admin"] {
            let exists = endpoints["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["interface"] == interface);
            if !exists {
                api.post(
                    &format!("{KEYSTONE}/endpoints"),
                    &json!({"endpoint": {"service_id": id, "interface": interface, "url": url,
                                         "region_id": "RegionOne", "enabled": true}}),
                )?;
            }
        }
    }
    project(api, "service")?;
    let service = role(api, "service")?;
    let admin = api.get(&format!("{KEYSTONE}/users?name=admin"))?;
    let admin = str_of(&admin["users"][0]["id"]);
    grant(api, &api.project_id, &admin, &service)
}

fn project(api: &Api, name: &str) -> Result<String, String> {
    let found = api.get(&format!(
        "{KEYSTONE}/projects?name={name}&domain_id=default"
    ))?;
    match found["projects"].get(0) {
        Some(p) => Ok(str_of(&p["id"])),
        None => Ok(str_of(
            &api.post(
                &format!("{KEYSTONE}/projects"),
                &json!({"project": {"name": name, "domain_id": "default"}}),
            )?["project"]["id"],
        )),
    }
}

fn user(api: &Api, name: &str, password: &str, project: &str) -> Result<String, String> {
    let found = api.get(&format!("{KEYSTONE}/users?name={name}&domain_id=default"))?;
    match found["users"].get(0) {
        Some(u) => Ok(str_of(&u["id"])),
        None => Ok(str_of(
            &api.post(
                &format!("{KEYSTONE}/users"),
                &json!({"user": {"name": name, "password": password, "domain_id": "default",
                                 "default_project_id": project}}),
            )?["user"]["id"],
        )),
    }
}

fn role(api: &Api, name: &str) -> Result<String, String> {
    let found = api.get(&format!("{KEYSTONE}/roles?name={name}"))?;
    match found["roles"].get(0) {
        Some(r) => Ok(str_of(&r["id"])),
        None => Ok(str_of(
            &api.post(
                &format!("{KEYSTONE}/roles"),
                &json!({"role": {"name": name}}),
            )?["role"]["id"],
        )),
    }
}

fn grant(api: &Api, project: &str, user: &str, role: &str) -> Result<(), String> {
    api.send(
        reqwest::Method::PUT,
        &format!("{KEYSTONE}/projects/{project}/users/{user}/roles/{role}"),
        Body::None,
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_template_placeholder_is_filled() {
        let stack = super::Stack {
            dir: "/srv/os".into(),
        };
        for (file, template) in super::TEMPLATES {
            let text = stack.render(template);
            for placeholder in ["@RUN@", "@PKG@", "@DB@", "@MQ@", "@AUTH@", "@AUTHTOKEN@"] {
                assert!(!text.contains(placeholder), "{file}: {text}");
            }
            for line in text.lines().filter(|l| l.starts_with("connection =")) {
                assert!(
                    line.contains("= mysql+pymysql://os:os@127.0.0.1/"),
                    "{file}: {line}"
                );
            }
        }
        let nova = stack.render(include_str!("../openstack/nova.conf"));
        assert!(nova.contains("api_paste_config = /srv/os/pkg/usr/share/nova-common/"));
        assert!(nova.contains("[keystone_authtoken]\nwww_authenticate_uri"));
    }

    #[test]
    fn every_service_has_a_probe_or_runs_alone() {
        for service in dop_testbed::openstack::SERVICES {
            let _ = super::probe(service);
        }
        for (service, port) in dop_testbed::openstack::API_PORTS {
            match super::probe(service) {
                super::Probe::Http(p, _) => assert_eq!(p, *port, "{service}"),
                _ => panic!("{service} has an API"),
            }
        }
    }
}
