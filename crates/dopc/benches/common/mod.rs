//! What the dopc benchmarks share: the real `dopc serve` on an ephemeral loopback port, in a
//! temporary directory, with a token; stopped by pid when dropped.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// A running server.
pub struct BenchServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A token for the API.
    pub token: String,
    _dir: tempfile::TempDir,
}

impl BenchServer {
    /// Starts a server in a new directory, with a token named `token_name`.
    pub fn start(token_name: &str) -> BenchServer {
        let dir = tempfile::tempdir().unwrap();
        let dopc = || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_dopc"));
            c.env("DOP_CONFIG", "/dev/null")
                .env("DOP_STORE_DIR", dir.path().join("store"))
                .env("DOP_LOG_DIR", dir.path().join("logs"));
            c
        };
        let out = dopc()
            .args(["token", "create", token_name])
            .output()
            .unwrap();
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let mut child = dopc()
            .args(["serve", "--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("dopc listening on ")
            .unwrap()
            .to_string();
        BenchServer {
            child,
            base,
            token,
            _dir: dir,
        }
    }

    /// The server's process id (the soak samples its memory).
    #[allow(dead_code)] // each benchmark compiles this module; `dopc` does not need it
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
