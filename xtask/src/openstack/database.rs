//! The stack's database: MariaDB started by pid with the services' databases, every
//! service's schema synchronised, and SQL run against it.

use std::process::{Command, Stdio};
use std::time::Instant;

use super::process::clean_env;
use super::{Stack, KEYSTONE};

pub(super) const DB: &str = "mysql+pymysql://os:os@127.0.0.1";
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

impl Stack {
    /// MariaDB, by pid, with the services' databases and their user.
    pub(super) fn start_mariadb(&self) -> Result<(), String> {
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
    pub(super) fn sync_databases(&self) -> Result<(), String> {
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

    pub(super) fn sql(&self, sql: &str) -> Result<String, String> {
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
}
