//! A real PostgreSQL server for the store's tests: Debian's `postgresql` package (installed by
//! `.ci/install-deps`), a cluster made with `initdb` in a temporary directory, run by an
//! unprivileged user (as root: the `postgres` system user the package creates, or `doppg`,
//! created when neither exists), listening on `127.0.80.1` only, on a free port, with password
//! (SCRAM) logins over TCP and no Unix socket. The server is the test's child: stopped by pid
//! (SIGQUIT, then SIGKILL) when the [`PgCluster`] is dropped, pass or fail.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestbedError;

/// The address the test clusters listen on.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 80, 1);
/// The cluster's superuser (the login the tests use).
pub const USER: &str = "dop";
/// Its password.
pub const PASSWORD: &str = "dop-test-secret";
/// The system user that runs the server when the tests run as root and the package's
/// `postgres` user is missing.
pub const SYSTEM_USER: &str = "doppg";

/// The directory of the newest installed PostgreSQL's programs (`/usr/lib/postgresql/N/bin`).
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// True when PostgreSQL's server programs are installed.
pub fn available() -> bool {
    bin_dir().is_some()
}

/// A running PostgreSQL cluster in a temporary directory.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    /// The user and group the server runs as (`None`: the current user).
    run_as: Option<(u32, u32)>,
}

fn setup(what: &str, detail: impl ToString) -> TestbedError {
    TestbedError::Setup {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TestbedError + '_ {
    move |source| TestbedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The uid and gid of `user`, when it exists.
fn ids_of(user: &str) -> Option<(u32, u32)> {
    let out = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, user]).output().ok()?;
        o.status.success().then_some(())?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    Some((out("-u")?, out("-g")?))
}

/// The unprivileged user to run the server as, when this process is root.
fn server_user() -> Result<Option<(u32, u32)>, TestbedError> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    if let Some(ids) = ids_of("postgres").or_else(|| ids_of(SYSTEM_USER)) {
        return Ok(Some(ids));
    }
    let made = Command::new("useradd")
        .args(["-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin"])
        .arg(SYSTEM_USER)
        .output()
        .map_err(|e| setup("useradd", e))?;
    if !made.status.success() {
        return Err(setup("useradd", String::from_utf8_lossy(&made.stderr)));
    }
    ids_of(SYSTEM_USER)
        .map(Some)
        .ok_or_else(|| setup("useradd", format!("{SYSTEM_USER} was not created")))
}

/// A free TCP port on [`ADDRESS`] (the kernel's choice, released for the server to take).
fn free_port() -> Result<u16, TestbedError> {
    TcpListener::bind(SocketAddr::from((ADDRESS, 0)))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| setup("finding a free port on 127.0.80.1", e))
}

impl PgCluster {
    /// Makes a cluster in a new temporary directory and starts it.
    pub fn start() -> Result<PgCluster, TestbedError> {
        let bin = bin_dir().ok_or_else(|| {
            setup(
                "finding PostgreSQL",
                "no /usr/lib/postgresql/*/bin/initdb: install postgresql (`bash .ci/install-deps` does)",
            )
        })?;
        let run_as = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("dop-pg.")
            .tempdir()
            .map_err(|e| setup("making the cluster directory", e))?;
        // The server's user must reach its directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io(dir.path()))?;
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, PASSWORD).map_err(io(&pwfile))?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(io(&data))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&data))?;
        if let Some((uid, gid)) = run_as {
            for path in [&pwfile, &data] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(path))?;
            }
        }
        let mut cluster = PgCluster {
            dir,
            bin,
            port: 0,
            child: None,
            run_as,
        };
        let mut initdb = cluster.program("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-host=scram-sha-256", "--auth-local=reject"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let out = initdb.output().map_err(|e| setup("initdb", e))?;
        if !out.status.success() {
            return Err(setup(
                "initdb",
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        cluster.port = free_port()?;
        cluster.launch()?;
        Ok(cluster)
    }

    fn program(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Starts the server (again, after [`PgCluster::stop`]) and waits until it accepts
    /// connections.
    pub fn launch(&mut self) -> Result<(), TestbedError> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = self.log();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(&log))?;
        let start = std::fs::metadata(&log).map_or(0, |m| m.len());
        let err = file.try_clone().map_err(io(&log))?;
        let child = self
            .program("postgres")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-c", &format!("listen_addresses={ADDRESS}")])
            .args(["-c", &format!("port={}", self.port)])
            .args(["-c", "unix_socket_directories="])
            // Test data: no fsync (a killed server loses nothing; the machine does not crash).
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| setup("starting postgres", e))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(&log) {
                let _ = f.read_to_string(&mut text);
            }
            let new = text.get(start as usize..).unwrap_or("");
            if new.contains("database system is ready to accept connections") {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(setup(
                    "starting postgres",
                    format!(
                        "it did not become ready; its log ({}):\n{new}",
                        log.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server by pid (SIGQUIT: immediate shutdown, then SIGKILL after 10 s) and
    /// reaps it; the cluster stays and [`PgCluster::launch`] starts it again.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its port on [`ADDRESS`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `database` for the superuser (`postgres://dop:…@127.0.80.1:N/db`).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@{ADDRESS}:{}/{database}",
            self.port
        )
    }

    /// Runs SQL on database `database` with `psql`, returning its output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, TestbedError> {
        let out = Command::new(self.bin.join("psql"))
            .env("PGPASSWORD", PASSWORD)
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &ADDRESS.to_string(), "-p", &self.port.to_string()])
            .args(["-U", USER, "-d", database, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| setup("psql", e))?;
        if !out.status.success() {
            return Err(setup(
                &format!("psql -c {sql:?}"),
                String::from_utf8_lossy(&out.stderr),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Makes a new, empty database and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, TestbedError> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url(name))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_answers_on_loopback_and_is_stopped_by_pid() {
        if !available() {
            eprintln!("skipped: PostgreSQL is not installed (bash .ci/install-deps)");
            return;
        }
        let mut cluster = PgCluster::start().expect("the cluster starts");
        let pid = cluster.pid().expect("it runs");
        cluster.create_database("one").unwrap();
        assert_eq!(cluster.psql("one", "SELECT 40 + 2").unwrap(), "42");
        assert_eq!(
            cluster
                .psql(
                    "one",
                    "SELECT setting FROM pg_settings WHERE name = 'listen_addresses'"
                )
                .unwrap(),
            "127.0.80.1"
        );
        cluster.stop();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the server was reaped"
        );
        assert!(cluster.psql("one", "SELECT 1").is_err(), "it is down");
        cluster.launch().unwrap();
        assert_eq!(cluster.psql("one", "SELECT 1").unwrap(), "1", "data kept");
        let pid = cluster.pid().unwrap();
        drop(cluster);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
