//! A real `dopc serve` for dopc's tests and benchmarks: its own temporary directory (store,
//! logs, local nodes, `HOME`), a token, the server on an ephemeral loopback port whose address
//! it announces, stopped by pid when dropped (pass or fail) and its log shown when a test
//! failed.
//!
//! The binary is passed in (`env!("CARGO_BIN_EXE_dopc")` in dopc's tests and benches): this
//! crate does not depend on dopc.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::{server_log, show_server_log_on_failure};

/// What the server prints first on standard output, before its URL.
const ANNOUNCEMENT: &str = "dopc listening on ";

/// A `dopc serve` process in a temporary directory, with a token.
pub struct DopcServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    url: String,
    token: String,
}

impl DopcServer {
    /// Starts `bin serve` on `127.0.0.1:0` in a new directory, with a token named `token_name`.
    pub fn start(bin: impl AsRef<Path>, token_name: &str) -> DopcServer {
        DopcServer::create(bin.as_ref(), token_name, None)
    }

    /// Like [`start`](DopcServer::start), with a server configuration: `config` is written to
    /// `<dir>/dopc.toml` (each `DIR` in it becoming the server's directory) and given with
    /// `--server-config` at every launch.
    pub fn start_with_config(bin: impl AsRef<Path>, token_name: &str, config: &str) -> DopcServer {
        DopcServer::create(bin.as_ref(), token_name, Some(config))
    }

    fn create(bin: &Path, token_name: &str, config: Option<&str>) -> DopcServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        if let Some(text) = config {
            let dir_text = dir.path().to_str().expect("a UTF-8 temporary directory");
            std::fs::write(dir.path().join("dopc.toml"), text.replace("DIR", dir_text))
                .expect("dopc.toml can be written");
        }
        let mut server = DopcServer {
            bin: bin.to_path_buf(),
            dir,
            child: None,
            url: String::new(),
            token: String::new(),
        };
        let out = server
            .command(&["token", "create", token_name])
            .output()
            .expect("dopc runs");
        assert!(
            out.status.success(),
            "dopc token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        server.launch("127.0.0.1:0");
        server
    }

    /// Gives the server dop's settings `text` (`<dir>/dop.conf`, read by every later command
    /// instead of none) and starts it again on a free port to read them.
    pub fn set_dop_conf(&mut self, text: &str) {
        std::fs::write(self.dir.path().join("dop.conf"), text).expect("dop.conf can be written");
        self.kill();
        self.launch("127.0.0.1:0");
    }

    /// The dopc binary with this server's environment (its store, logs and local nodes, `HOME`
    /// its directory, no configuration of the machine but `<dir>/dop.conf` when
    /// [`set_dop_conf`](DopcServer::set_dop_conf) wrote one, no client settings): for commands
    /// that work on the server's store, such as `token list`.
    pub fn command(&self, args: &[&str]) -> Command {
        let dir = self.dir.path();
        let dop_conf = dir.join("dop.conf");
        let dop_conf = match dop_conf.exists() {
            true => dop_conf,
            false => PathBuf::from("/dev/null"),
        };
        let mut c = Command::new(&self.bin);
        c.env("DOP_CONFIG", dop_conf)
            .env("DOP_STORE_DIR", dir.join("store"))
            .env("DOP_LOG_DIR", dir.join("logs"))
            .env("DOP_LOCAL_DIR", dir.join("local"))
            .env("HOME", dir)
            .env_remove("DOPC_URL")
            .env_remove("DOPC_TOKEN")
            .env_remove("DOPC_CA")
            .env_remove("DOPC_CLIENT_CONFIG")
            .env_remove("DOPC_SERVER_CONFIG")
            .args(args);
        c
    }

    /// A client command: [`command`](DopcServer::command) with the server's URL and token in
    /// `DOPC_URL` and `DOPC_TOKEN`.
    pub fn client(&self, args: &[&str]) -> Command {
        let mut c = self.command(args);
        c.env("DOPC_URL", &self.url).env("DOPC_TOKEN", &self.token);
        c
    }

    /// Starts (again) the server process on `bind` (`127.0.0.1:0`: a free port) and waits
    /// for the address it announces. Its standard error goes to `<dir>/server.log`.
    pub fn launch(&mut self, bind: &str) {
        let config = self.dir.path().join("dopc.toml");
        let mut args = vec!["serve", "--bind", bind];
        if config.exists() {
            args.extend(["--server-config", config.to_str().expect("a UTF-8 path")]);
        }
        let mut child = self
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(server_log(self.dir.path()))
            .spawn()
            .expect("dopc serve starts");
        let stdout = child.stdout.take().expect("the server's standard output");
        // Owned by this value from here on, so that a failed start is stopped too.
        self.child = Some(child);
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's first line");
        self.url = line
            .trim()
            .strip_prefix(ANNOUNCEMENT)
            .unwrap_or_else(|| panic!("the server did not announce its address: {line:?}"))
            .to_string();
    }

    /// Stops the server process hard (SIGKILL, by pid), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM (by pid) and waits for it to end. Panics when it is not
    /// running.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("the server is running");
        crate::signal(c.id(), libc::SIGTERM);
        c.wait().expect("the server can be waited for")
    }

    /// The server's process id. Panics when it is not running.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// The server's base URL (`http://127.0.0.1:PORT`, `https://…` with TLS configured).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The token created at the start.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The server's directory (`store`, `logs`, `local`, `server.log`, `dopc.toml`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for DopcServer {
    fn drop(&mut self) {
        self.kill();
        show_server_log_on_failure(self.dir.path());
    }
}
