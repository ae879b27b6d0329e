//! The connection to a libvirt host. libvirt's calls block, so each operation runs on a
//! blocking thread with its own connection, bounded by the API timeout: a libvirtd that was
//! restarted, or one that hangs, costs one operation, never the whole run. A fresh connection
//! per operation is what makes a restarted libvirtd harmless (the next operation connects to
//! the new one); opening one on the local socket takes about a millisecond.

use std::time::Duration;

use virt::connect::Connect;

/// A libvirt call that failed.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// The connection could not be opened.
    #[error("cannot connect to libvirt at {uri}: {message}")]
    Connect {
        /// The connection URI.
        uri: String,
        /// libvirt's message.
        message: String,
    },
    /// A call was refused or failed.
    #[error("libvirt at {uri}: {what}: {message}")]
    Call {
        /// The connection URI.
        uri: String,
        /// What dopv asked for.
        what: String,
        /// libvirt's message.
        message: String,
    },
    /// No answer within the API timeout.
    #[error("libvirt at {uri} did not answer within {secs} s ({what}); is libvirtd running and responsive?")]
    Timeout {
        /// The connection URI.
        uri: String,
        /// What dopv asked for.
        what: String,
        /// The timeout.
        secs: u64,
    },
}

/// A libvirt error as the code that decides what to do with it sees it.
#[derive(Debug)]
pub struct CallError {
    /// libvirt's error number.
    pub code: virt::error::ErrorNumber,
    /// libvirt's message.
    pub message: String,
}

impl From<virt::error::Error> for CallError {
    fn from(e: virt::error::Error) -> CallError {
        let mut message = e.message().to_string();
        if matches!(e.domain(), virt::error::ErrorDomain::Rpc) {
            // The connection broke in the middle of a call: say what that usually means.
            message.push_str(
                " (the connection to libvirtd was lost: was it restarted or did it crash? \
                 `dopv sync` finishes the node)",
            );
        }
        CallError {
            code: e.code(),
            message,
        }
    }
}

impl CallError {
    /// An error dopv itself raises inside an operation.
    pub fn other(message: impl Into<String>) -> CallError {
        CallError {
            code: virt::error::ErrorNumber::InternalError,
            message: message.into(),
        }
    }

    /// True when the object asked for does not exist.
    pub fn is_missing(&self) -> bool {
        use virt::error::ErrorNumber as N;
        matches!(
            self.code,
            N::NoDomain | N::NoStorageVolume | N::NoStoragePool
        )
    }
}

/// An open connection, closed when dropped (the binding leaves that to its user).
pub struct Conn(Connect);

impl std::ops::Deref for Conn {
    type Target = Connect;
    fn deref(&self) -> &Connect {
        &self.0
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.0.close();
    }
}

/// One libvirt host (a connection URI).
#[derive(Clone, Debug)]
pub struct Host {
    uri: String,
    timeout: Duration,
}

/// How often, and how far apart, opening a connection is tried: a libvirtd that is
/// restarting comes back within a few seconds.
const CONNECT_TRIES: u32 = 4;
const CONNECT_PAUSE: Duration = Duration::from_millis(750);

impl Host {
    /// The host behind `uri`; nothing is opened until an operation runs.
    pub fn new(uri: &str, timeout: Duration) -> Host {
        // libvirt prints every error on stderr unless told not to; dopv reports them itself.
        static QUIET: std::sync::Once = std::sync::Once::new();
        QUIET.call_once(virt::error::clear_error_callback);
        Host {
            uri: uri.to_string(),
            timeout,
        }
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Runs `op` on a fresh connection on a blocking thread. `what` names the operation in
    /// errors.
    pub async fn run<T, F>(&self, what: &str, op: F) -> Result<T, LibvirtError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, CallError> + Send + 'static,
    {
        let uri = self.uri.clone();
        tracing::debug!(uri = %self.uri, what, "libvirt: call");
        let task = tokio::task::spawn_blocking(move || -> Result<Result<T, CallError>, String> {
            let conn = open(&uri)?;
            Ok(op(&conn))
        });
        let call_error = |message: String| LibvirtError::Call {
            uri: self.uri.clone(),
            what: what.to_string(),
            message,
        };
        match tokio::time::timeout(self.timeout, task).await {
            Err(_) => Err(LibvirtError::Timeout {
                uri: self.uri.clone(),
                what: what.to_string(),
                secs: self.timeout.as_secs(),
            }),
            Ok(Err(join)) => Err(call_error(format!("the libvirt call failed: {join}"))),
            Ok(Ok(Err(message))) => Err(LibvirtError::Connect {
                uri: self.uri.clone(),
                message,
            }),
            Ok(Ok(Ok(result))) => result.map_err(|e| call_error(e.message)),
        }
    }
}

fn open(uri: &str) -> Result<Conn, String> {
    let mut last = String::new();
    for attempt in 0..CONNECT_TRIES {
        if attempt > 0 {
            std::thread::sleep(CONNECT_PAUSE);
        }
        match Connect::open(Some(uri)) {
            Ok(c) => return Ok(Conn(c)),
            Err(e) => last = e.message().to_string(),
        }
    }
    Err(last)
}
