//! The SSH transport on russh: one connection per node for the whole run, a channel per
//! command (at most 10 at once, sshd's stock `MaxSessions`), a refused channel open treated as
//! back-pressure and retried, logins admitted per target host and retried with random back-off
//! ([`admission`]), names resolved off the async workers ([`resolve`]), a node's addresses
//! tried in order without waiting for each (Happy Eyeballs), keepalives, and host keys checked
//! against what the store recorded (trust on first use).
//!
//! A login has two deadlines, like OpenSSH's `ConnectTimeout` and `LoginGraceTime`: the TCP
//! connection must be accepted within the connect timeout (a silent address is down), and the
//! SSH handshake and authentication must finish within the longer [`login_deadline`] (a host
//! that accepted the connection and is slow to log in is busy, not down). Failures are retried
//! by kind: a host that dropped a login or ran out of time is busy and gets [`BUSY_ATTEMPTS`], an
//! address that cannot be reached gets [`CONNECT_ATTEMPTS`], and refused credentials, an unusable
//! key or a changed host key fail at once.

mod admission;
mod command;
mod limits;
mod resolve;
mod shell;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use self::admission::{backoff, Admission, Outcome};
use self::resolve::Resolver;
use crate::exec::{Finished, Stop, Stream};

/// Session channels one connection opens at once (stock sshd `MaxSessions`).
pub const MAX_CHANNELS: usize = 10;
/// Idle shell sessions a connection keeps for its next commands (a node runs one command at a
/// time unless other nodes' commands run on it, `run_on`).
const IDLE_SHELLS: usize = 2;
/// Node connections a run keeps open at once unless told otherwise (`max_ssh_connections`),
/// and never more than a third of the open files the process may have: beyond, the one used
/// longest ago that runs no command is closed, and its node connects again when it is next
/// needed. Each takes a socket and, in this process, about 100 KiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How long a new shell session may take to say it is ready before the command takes a
/// channel of its own.
const SHELL_START: Duration = Duration::from_secs(10);
/// Attempts at an address that cannot be reached (refused, silent, no route, no name) before
/// the node fails.
pub const CONNECT_ATTEMPTS: u32 = 4;
/// Attempts at a host that accepted connections but dropped the logins or ran out of time (an
/// overloaded sshd) before the node fails.
pub const BUSY_ATTEMPTS: u32 = 8;
/// How long the next of a node's addresses waits for the one before it to connect.
const NEXT_ADDRESS_DELAY: Duration = Duration::from_millis(250);
/// The longest pause between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// How long a connection may be silent before it is given up: no packet received or sent,
/// keepalives aside. Keepalives (every 15 s, 3 unanswered close it) watch a logged-in
/// connection; this bounds what they do not: the handshake and authentication, and writes into
/// a node that stopped reading (its input, a command line).
pub const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a command whose run asked for a kill may take to end before its node is given up
/// on (the command signalled and its channel closed take [`command::CLOSE_GRACE`] each at most).
pub const FORCED_END: Duration = Duration::from_secs(8);

/// How long the SSH handshake and authentication may take once the connection is accepted: six
/// connect timeouts, at least 30 s (sshd's own `LoginGraceTime` is 120 s).
pub fn login_deadline(connect_timeout: Duration) -> Duration {
    (connect_timeout * 6).max(Duration::from_secs(30))
}

/// How an SSH command could not run.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// No address of the node accepted a connection.
    #[error("cannot reach the node on port {port} at {addresses}: {reason}")]
    Unreachable {
        /// The addresses tried.
        addresses: String,
        /// The port.
        port: u16,
        /// The last error.
        reason: String,
    },
    /// The node presented another host key than the one recorded.
    #[error(
        "the host key of the node changed: recorded {expected}, now {got}; if the node was \
         rebuilt, forget its key (`dopi forget-host-key`) or redeploy it with dopv; otherwise \
         someone may be intercepting the connection"
    )]
    HostKeyChanged {
        /// The recorded fingerprint.
        expected: String,
        /// The presented one.
        got: String,
    },
    /// The node closed the connection while the credentials were being checked (sshd's
    /// `MaxAuthTries`, an account PAM refuses): a refusal, not a busy host.
    #[error("the node closed the connection while logging in as '{user}': {reason}")]
    LoginRefused {
        /// The user.
        user: String,
        /// The server's own message, else what the connection reported.
        reason: String,
    },
    /// The node refused the credentials.
    #[error("authentication as '{user}' failed (the node did not accept the {method})")]
    Auth {
        /// The user.
        user: String,
        /// `key` or `password`.
        method: &'static str,
    },
    /// The private key could not be read.
    #[error("the private key of credential '{credential}' is not usable: {reason}")]
    Key {
        /// The credential.
        credential: String,
        /// Why.
        reason: String,
    },
    /// A jump host on the way could not be used.
    #[error("through the jump host {hop}: {reason}")]
    JumpHost {
        /// The hop, `host:port`.
        hop: String,
        /// Why.
        reason: String,
    },
    /// The run was stopped (terminate or kill) before the command started, or a node that
    /// did not answer was given up on at a kill.
    #[error("the run was stopped while {0}; the command did not run to its end")]
    Stopped(&'static str),
    /// The node did not answer a request in time (a channel open).
    #[error("the node did not {what} within {} s", within.as_secs())]
    NoAnswer {
        /// What was asked.
        what: &'static str,
        /// How long it was given.
        within: Duration,
    },
    /// The command ended without an exit status.
    #[error("the command ended without an exit status (the connection dropped?)")]
    NoExitStatus,
    /// The ssh agent (for a credential without a private key) cannot be used.
    #[error("the ssh agent: {0}")]
    Agent(String),
    /// Anything russh reports.
    #[error("ssh: {0}")]
    Ssh(String),
}

impl From<russh::Error> for SshError {
    fn from(e: russh::Error) -> SshError {
        SshError::Ssh(e.to_string())
    }
}

/// How to log in.
#[derive(Clone)]
pub enum Login {
    /// A private key.
    Key(Arc<PrivateKey>),
    /// A password.
    Password(String),
    /// The keys of the ssh agent at `SSH_AUTH_SOCK` (an ssh_key credential without a
    /// private_key).
    Agent,
}

/// One hop of a jump host chain, with its login.
#[derive(Clone)]
pub struct Hop {
    /// The host, resolved by the previous hop (or here, for the first).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The user.
    pub user: String,
    /// The credentials.
    pub login: Login,
}

impl Hop {
    /// `host:port`, as the plan's `jump_hosts` entry names it.
    pub fn label(&self) -> String {
        dop_core::plan::host_port(&self.host, self.port)
    }
}

/// Where and how to reach a node.
#[derive(Clone)]
pub struct Target {
    /// The node's name (host keys are recorded by it).
    pub node: String,
    /// Addresses to try, in order (fqdn, interface addresses).
    pub addresses: Vec<String>,
    /// The port.
    pub port: u16,
    /// The user.
    pub user: String,
    /// The credentials.
    pub login: Login,
    /// Check the host key (`check_host_key: false` turns it off, with a warning).
    pub check_host_key: bool,
    /// The jump hosts to go through, first hop first.
    pub jumps: Vec<Hop>,
}

/// The name a jump host's key and connection are kept under: its chain up to itself. It has
/// spaces, which node names never have.
fn hop_key(chain: &[Hop]) -> String {
    let mut key = String::from("jump host");
    for (i, hop) in chain.iter().enumerate() {
        key.push_str(if i == 0 { " " } else { " via " });
        key.push_str(&format!("{}@{}", hop.user, hop.label()));
    }
    key
}

struct Client {
    expected: Option<String>,
    check: bool,
    seen: Arc<Mutex<Option<String>>>,
    /// The message of the server's disconnect, when it sent one.
    said: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = SshError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, SshError> {
        let fingerprint = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.fingerprint(HashAlg::Sha256),
            PublicKeyOrCertificate::Certificate(c) => c.public_key().fingerprint(HashAlg::Sha256),
        }
        .to_string();
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fingerprint.clone());
        match &self.expected {
            Some(expected) if self.check && *expected != fingerprint => {
                Err(SshError::HostKeyChanged {
                    expected: expected.clone(),
                    got: fingerprint,
                })
            }
            _ => Ok(true),
        }
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<SshError>,
    ) -> Result<(), SshError> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                *self.said.lock().unwrap_or_else(|p| p.into_inner()) = Some(info.message);
                Ok(())
            }
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

struct Connection {
    /// The node's or jump host's name it is pooled under.
    name: String,
    handle: client::Handle<Client>,
    /// Places for the connection's session channels, commands and idle shell sessions alike.
    slots: Arc<Semaphore>,
    /// Shell sessions waiting for the next command (each holds its place).
    idle: tokio::sync::Mutex<Vec<shell::Shell>>,
    /// The node gives no usable shell session: a channel per command.
    shell_refused: AtomicBool,
    /// Commands (or connections through it, for a jump host) using it now.
    in_use: AtomicUsize,
    /// When it was last used, in ms of the pool's clock.
    last_used: AtomicU64,
    /// Its place among the run's open node connections (none for a jump host's).
    place: Option<OwnedSemaphorePermit>,
}

impl Connection {
    fn new(name: String, handle: client::Handle<Client>) -> Connection {
        Connection {
            name,
            handle,
            slots: Arc::new(Semaphore::new(MAX_CHANNELS)),
            idle: tokio::sync::Mutex::new(Vec::new()),
            shell_refused: AtomicBool::new(false),
            in_use: AtomicUsize::new(0),
            last_used: AtomicU64::new(0),
            place: None,
        }
    }

    /// A place for a channel.
    async fn place(&self) -> Result<OwnedSemaphorePermit, SshError> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| SshError::Ssh(e.to_string()))
    }

    /// An idle session that is still quiet (one that is not is closed).
    async fn take_idle(&self) -> Option<shell::Shell> {
        let mut idle = self.idle.lock().await;
        while let Some(mut session) = idle.pop() {
            if session.is_quiet() {
                return Some(session);
            }
            tracing::debug!(node = %self.name, "ssh: an idle shell session spoke; closed");
            session.close().await;
        }
        None
    }

    /// Keeps a session for the next command, up to [`IDLE_SHELLS`].
    async fn keep_idle(&self, session: shell::Shell) {
        let mut idle = self.idle.lock().await;
        if idle.len() < IDLE_SHELLS {
            idle.push(session);
        } else {
            drop(idle);
            session.close().await;
        }
    }

    /// Closes the idle sessions, to free the node's sessions for another channel.
    async fn close_idle(&self) {
        let sessions = std::mem::take(&mut *self.idle.lock().await);
        for session in sessions {
            session.close().await;
        }
    }
}

/// The connection to one node or jump host, set up by the first task that needs it while the
/// others wait (nodes connect in parallel; one node is never connected twice at once).
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// A connection in use: while one is held, the connection is not closed to make room.
struct InUse {
    connection: Arc<Connection>,
    clock: Arc<Clock>,
}

impl InUse {
    /// Marks `connection` in use (call with its slot locked, so that no one closes it between).
    fn new(connection: Arc<Connection>, clock: Arc<Clock>) -> InUse {
        connection.in_use.fetch_add(1, Ordering::SeqCst);
        connection.last_used.store(clock.now(), Ordering::Relaxed);
        InUse { connection, clock }
    }
}

impl std::ops::Deref for InUse {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.connection
            .last_used
            .store(self.clock.now(), Ordering::Relaxed);
        if self.connection.in_use.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.clock.freed.notify_waiters();
        }
    }
}

/// The pool's time, for which connection was used longest ago, and the signal that one
/// stopped being used.
struct Clock {
    start: std::time::Instant,
    freed: tokio::sync::Notify,
}

impl Clock {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Who is logging in where: a node's or a jump host's name, user and login.
struct Endpoint<'a> {
    name: &'a str,
    user: &'a str,
    login: &'a Login,
    check_host_key: bool,
}

/// The run's SSH connections, by node (and by jump host chain).
pub struct SshPool {
    config: Arc<client::Config>,
    connections: Mutex<HashMap<String, Slot>>,
    known: Mutex<HashMap<String, String>>,
    new_keys: Mutex<Vec<(String, String)>>,
    connect_timeout: Duration,
    resolver: Resolver,
    admission: Admission,
    /// Logins made from the plan's credentials, by credential name: a key file is read and
    /// decoded, an `exec:` secret run, once per run instead of once per command.
    logins: Mutex<HashMap<String, Option<(String, Login)>>>,
    /// Places for open node connections ([`DEFAULT_MAX_CONNECTIONS`]).
    open: Arc<Semaphore>,
    max_connections: usize,
    /// The node connections open now, by node, to choose which to close.
    open_nodes: Mutex<HashMap<String, Slot>>,
    clock: Arc<Clock>,
    /// The execution's secrets: no cut of a command's output line splits one.
    masker: dop_run::Masker,
}

/// Tries the keys of the ssh agent at `SSH_AUTH_SOCK`, in its order, until one is accepted.
async fn agent_login(handle: &mut client::Handle<Client>, user: &str) -> Result<bool, SshError> {
    let agent_error = |e: russh::keys::Error| SshError::Agent(e.to_string());
    let mut agent = russh::keys::agent::client::AgentClient::connect_env()
        .await
        .map_err(|e| {
            SshError::Agent(format!(
                "the credential has no private_key and no ssh agent answers at SSH_AUTH_SOCK ({e})"
            ))
        })?;
    let identities = agent.request_identities().await.map_err(agent_error)?;
    for identity in identities {
        let russh::keys::agent::AgentIdentity::PublicKey { key, .. } = identity else {
            continue;
        };
        let hash = if key.algorithm().is_rsa() {
            handle.best_supported_rsa_hash().await?.flatten()
        } else {
            None
        };
        let result = handle
            .authenticate_publickey_with(user, key, hash, &mut agent)
            .await
            .map_err(|e| SshError::Agent(e.to_string()))?;
        if result.success() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A byte stream to a node: a TCP connection, or a channel through a jump host.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A connection opened to one of a node's addresses, admitted, not logged in yet.
struct Opened {
    address: String,
    stream: Box<dyn Io>,
    permit: admission::Permit,
}

/// Logs in as the endpoint's user; `false` when the server refused every offered credential.
async fn authenticate(
    handle: &mut client::Handle<Client>,
    endpoint: &Endpoint<'_>,
) -> Result<bool, SshError> {
    Ok(match endpoint.login {
        Login::Key(key) => {
            let hash = if key.algorithm().is_rsa() {
                handle.best_supported_rsa_hash().await?.flatten()
            } else {
                None
            };
            handle
                .authenticate_publickey(
                    endpoint.user,
                    PrivateKeyWithHashAlg::new(key.clone(), hash),
                )
                .await?
                .success()
        }
        Login::Password(p) => handle
            .authenticate_password(endpoint.user, p)
            .await?
            .success(),
        Login::Agent => agent_login(handle, endpoint.user).await?,
    })
}

/// Why one login attempt failed, by what trying again can do about it.
enum Failure {
    /// Nothing: refused credentials, an unusable key, a changed host key.
    Final(SshError),
    /// The host accepted the connection but dropped the login or ran out of time.
    Busy(String),
    /// The address could not be reached (or the name resolved).
    Down(String),
}

impl SshPool {
    /// A pool that trusts the recorded host keys (`node → SHA256 fingerprint`), for the
    /// execution whose secrets `masker` holds.
    pub fn new(
        known: HashMap<String, String>,
        connect_timeout: Duration,
        max_connections: Option<usize>,
        masker: dop_run::Masker,
    ) -> SshPool {
        let max_connections = limits::max_connections(max_connections);
        SshPool {
            config: Arc::new(client::Config {
                keepalive_interval: Some(Duration::from_secs(15)),
                keepalive_max: 3,
                inactivity_timeout: Some(INACTIVITY_TIMEOUT),
                nodelay: true,
                ..Default::default()
            }),
            connections: Mutex::new(HashMap::new()),
            known: Mutex::new(known),
            new_keys: Mutex::new(Vec::new()),
            connect_timeout,
            resolver: Resolver::default(),
            admission: Admission::default(),
            logins: Mutex::new(HashMap::new()),
            open: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            open_nodes: Mutex::new(HashMap::new()),
            clock: Arc::new(Clock {
                start: std::time::Instant::now(),
                freed: tokio::sync::Notify::new(),
            }),
            masker,
        }
    }

    /// How many node connections the run keeps open at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The login made from the credential `name`, by `make` the first time (a failure is not
    /// kept: the next command tries again); `None` when the credential gives no ssh login.
    /// Commands that need it at the same time wait for the one making it.
    pub fn login_of(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<Option<(String, Login)>, String>,
    ) -> Result<Option<(String, Login)>, String> {
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(made) = logins.get(name) {
            return Ok(made.clone());
        }
        let made = make()?;
        logins.insert(name.to_string(), made.clone());
        Ok(made)
    }

    fn slot(&self, name: &str) -> Slot {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Whether the run holds a live connection to the node.
    pub async fn is_connected(&self, node: &str) -> bool {
        let slot = self.slot(node);
        let connection = slot.lock().await;
        connection.as_ref().is_some_and(|c| !c.handle.is_closed())
    }

    /// Drops the node's connection; the next command connects again.
    pub async fn forget(&self, node: &str) {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
    }

    /// Host keys seen for the first time since the last call, to record.
    pub fn take_new_keys(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.new_keys.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The live connection kept under `key`, or a new one from `connect` (made once, while
    /// other tasks that need it wait), marked in use. A node's connection (`capped`) takes a
    /// place among the run's open connections first.
    async fn pooled<F, Fut>(&self, key: &str, capped: bool, connect: F) -> Result<InUse, SshError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Connection, SshError>>,
    {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.handle.is_closed()) {
            return Ok(InUse::new(c.clone(), self.clock.clone()));
        }
        // A closed connection gives its place back before a new one takes one.
        *guard = None;
        let place = match capped {
            true => Some(self.open_place().await?),
            false => None,
        };
        let mut c = connect().await?;
        c.place = place;
        let c = Arc::new(c);
        *guard = Some(c.clone());
        if capped {
            self.open_nodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.to_string(), slot.clone());
        }
        Ok(InUse::new(c, self.clock.clone()))
    }

    /// A place for a new node connection: a free one, or the place of the connection used
    /// longest ago that runs nothing now (it is closed), or the first one given up.
    async fn open_place(&self) -> Result<OwnedSemaphorePermit, SshError> {
        loop {
            let freed = self.clock.freed.notified();
            if let Ok(place) = self.open.clone().try_acquire_owned() {
                return Ok(place);
            }
            if let Some(closed) = self.close_least_recently_used() {
                tracing::debug!(node = %closed.name, "ssh: closed to make room for another connection");
                let _ = closed
                    .handle
                    .disconnect(russh::Disconnect::ByApplication, "", "")
                    .await;
                drop(closed);
                continue;
            }
            tokio::select! {
                place = self.open.clone().acquire_owned() => {
                    return place.map_err(|e| SshError::Ssh(e.to_string()));
                }
                () = freed => {}
            }
        }
    }

    /// Takes the idle node connection used longest ago out of the pool (its place is given
    /// back when the last holder drops it).
    fn close_least_recently_used(&self) -> Option<Arc<Connection>> {
        let mut open = self.open_nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut oldest: Option<(u64, String)> = None;
        let mut gone = Vec::new();
        for (node, slot) in open.iter() {
            // A slot being connected or used right now is not idle.
            let Ok(guard) = slot.try_lock() else { continue };
            match guard.as_ref() {
                None => gone.push(node.clone()),
                Some(c) if c.in_use.load(Ordering::SeqCst) == 0 => {
                    let used = c.last_used.load(Ordering::Relaxed);
                    if oldest.as_ref().is_none_or(|(t, _)| used < *t) {
                        oldest = Some((used, node.clone()));
                    }
                }
                Some(_) => {}
            }
        }
        for node in gone {
            open.remove(&node);
        }
        let (_, node) = oldest?;
        let slot = open.get(&node)?.clone();
        let mut guard = slot.try_lock().ok()?;
        if guard
            .as_ref()
            .is_some_and(|c| c.in_use.load(Ordering::SeqCst) == 0)
        {
            open.remove(&node);
            return guard.take();
        }
        None
    }

    async fn connection(&self, target: &Target) -> Result<InUse, SshError> {
        self.pooled(&target.node, true, || async {
            let via = match target.jumps.len() {
                0 => None,
                n => Some(self.hop_connection(&target.jumps, n).await?),
            };
            let endpoint = Endpoint {
                name: &target.node,
                user: &target.user,
                login: &target.login,
                check_host_key: target.check_host_key,
            };
            self.connect_with_retries(&endpoint, &target.addresses, target.port, via.as_deref())
                .await
        })
        .await
    }

    /// The connection to the `n`-th hop of `chain` (from 1), through the hops before it.
    fn hop_connection<'a>(
        &'a self,
        chain: &'a [Hop],
        n: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<InUse, SshError>> + Send + 'a>>
    {
        Box::pin(async move {
            let key = hop_key(&chain[..n]);
            self.pooled(&key, false, || async {
                let via = match n {
                    1 => None,
                    _ => Some(self.hop_connection(chain, n - 1).await?),
                };
                let hop = &chain[n - 1];
                let endpoint = Endpoint {
                    name: &key,
                    user: &hop.user,
                    login: &hop.login,
                    check_host_key: true,
                };
                self.connect_with_retries(
                    &endpoint,
                    std::slice::from_ref(&hop.host),
                    hop.port,
                    via.as_deref(),
                )
                .await
                .map_err(|e| SshError::JumpHost {
                    hop: hop.label(),
                    reason: match e {
                        SshError::HostKeyChanged { .. } => {
                            format!("{e} (the jump host's key is recorded as '{key}')")
                        }
                        e => e.to_string(),
                    },
                })
            })
            .await
        })
    }

    async fn connect_with_retries(
        &self,
        endpoint: &Endpoint<'_>,
        addresses: &[String],
        port: u16,
        via: Option<&Connection>,
    ) -> Result<Connection, SshError> {
        let (mut down, mut busy, mut attempt) = (0, 0, 0);
        let mut last = String::new();
        while down < CONNECT_ATTEMPTS && busy < BUSY_ATTEMPTS {
            if attempt > 0 {
                let wait = backoff(attempt, BACKOFF_CAP);
                tracing::debug!(node = endpoint.name, attempt, ?wait, %last, "ssh: connecting again after a pause");
                tokio::time::sleep(wait).await;
            }
            attempt += 1;
            let (opened, mut failures) = self
                .open_first(endpoint.name, addresses, port, via, attempt)
                .await;
            if let Some(opened) = opened {
                match self.login(endpoint, opened.stream, opened.permit).await {
                    Ok(c) => {
                        tracing::debug!(
                            node = endpoint.name,
                            address = opened.address,
                            port,
                            "ssh: connected"
                        );
                        return Ok(c);
                    }
                    Err(Failure::Final(e)) => {
                        tracing::debug!(node = endpoint.name, address = opened.address, port, error = %e, "ssh: refused, not retried");
                        return Err(e);
                    }
                    Err(f) => failures.push((opened.address, f)),
                }
            }
            let mut was_busy = false;
            let mut reasons = Vec::new();
            for (address, failure) in failures {
                let reason = match failure {
                    Failure::Busy(r) => {
                        was_busy = true;
                        r
                    }
                    Failure::Down(r) => r,
                    Failure::Final(e) => return Err(e),
                };
                reasons.push(format!("{address}: {reason}"));
            }
            last = reasons.join("; ");
            if was_busy {
                busy += 1;
            } else {
                down += 1;
            }
        }
        Err(SshError::Unreachable {
            addresses: addresses.join(", "),
            port,
            reason: format!(
                "{last} (after {attempt} attempt{})",
                if attempt == 1 { "" } else { "s" }
            ),
        })
    }

    /// Opens a connection to the first of `addresses` that accepts one, trying them in order
    /// but without waiting for each: the next starts when the one before fails or has not
    /// connected within [`NEXT_ADDRESS_DELAY`] (RFC 8305's "Happy Eyeballs"), so a name whose
    /// lookup hangs or an address that is silent does not hold up the addresses after it. The
    /// failures of those that lost are returned too.
    async fn open_first(
        &self,
        name: &str,
        addresses: &[String],
        port: u16,
        via: Option<&Connection>,
        attempt: u32,
    ) -> (Option<Opened>, Vec<(String, Failure)>) {
        use futures_util::StreamExt;
        let mut pending = futures_util::stream::FuturesUnordered::new();
        let mut failures = Vec::new();
        let (mut started, mut start_next) = (0, true);
        loop {
            if start_next && started < addresses.len() {
                let address = &addresses[started];
                tracing::debug!(
                    node = name,
                    address,
                    port,
                    attempt,
                    via = via.is_some(),
                    "ssh: connecting"
                );
                pending.push(async move { (address, self.open(address, port, via).await) });
                started += 1;
            }
            if pending.is_empty() {
                return (None, failures);
            }
            let more = started < addresses.len();
            tokio::select! {
                Some((address, result)) = pending.next() => match result {
                    Ok(opened) => return (Some(opened), failures),
                    Err(failure) => {
                        let reason = match &failure {
                            Failure::Busy(r) | Failure::Down(r) => r.clone(),
                            Failure::Final(e) => e.to_string(),
                        };
                        tracing::debug!(node = name, address, port, error = %reason, "ssh: this address failed");
                        failures.push((address.clone(), failure));
                        start_next = true;
                    }
                },
                () = tokio::time::sleep(NEXT_ADDRESS_DELAY), if more => start_next = true,
            }
        }
    }

    /// Opens a connection to `address` (a name or an IP address, resolved here unless a jump
    /// host `via` does it), admitted towards its target host; not logged in yet.
    async fn open(
        &self,
        address: &str,
        port: u16,
        via: Option<&Connection>,
    ) -> Result<Opened, Failure> {
        let timeout = self.connect_timeout;
        if let Some(jump) = via {
            // Through a jump host: it resolves the address and opens the TCP connection; a
            // refusal means it could not reach it. Its logins are admitted by the jump host.
            let permit = self.admission.admit(&jump.name).await;
            let opened = tokio::time::timeout(
                timeout,
                jump.handle
                    .channel_open_direct_tcpip(address, u32::from(port), "127.0.0.1", 0),
            )
            .await;
            return match opened {
                Ok(Ok(channel)) => Ok(Opened {
                    address: address.to_string(),
                    stream: Box::new(channel.into_stream()),
                    permit,
                }),
                Ok(Err(russh::Error::ChannelOpenFailure(_))) => Err(Failure::Down(
                    "the jump host could not open a connection to it".into(),
                )),
                Ok(Err(e)) => Err(Failure::Down(format!("the jump host: {e}"))),
                Err(_) => {
                    permit.done(Outcome::Dropped);
                    Err(Failure::Busy(format!(
                        "the jump host did not open a connection to it within {} s",
                        timeout.as_secs_f64()
                    )))
                }
            };
        }
        let mut last = String::new();
        for addr in self
            .resolver
            .resolve(address, port, timeout)
            .await
            .map_err(Failure::Down)?
        {
            let permit = self.admission.admit(&addr.ip().to_string()).await;
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(socket)) => {
                    let _ = socket.set_nodelay(true);
                    return Ok(Opened {
                        address: address.to_string(),
                        stream: Box::new(socket),
                        permit,
                    });
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => {
                    last = format!(
                        "no answer within {} s (the connect timeout)",
                        timeout.as_secs_f64()
                    )
                }
            }
        }
        Err(Failure::Down(last))
    }

    /// The SSH handshake and authentication on an accepted connection, within the login
    /// deadline; `permit` learns how it went.
    async fn login(
        &self,
        endpoint: &Endpoint<'_>,
        stream: Box<dyn Io>,
        permit: admission::Permit,
    ) -> Result<Connection, Failure> {
        let expected = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint.name)
            .cloned();
        let seen = Arc::new(Mutex::new(None));
        let said = Arc::new(Mutex::new(None));
        let client = Client {
            expected: expected.clone(),
            check: endpoint.check_host_key,
            seen: seen.clone(),
            said: said.clone(),
        };
        let deadline = tokio::time::Instant::now() + login_deadline(self.connect_timeout);
        let out_of_time = || {
            Failure::Busy(format!(
                "the connection was accepted, but the SSH login did not finish within {} s",
                login_deadline(self.connect_timeout).as_secs()
            ))
        };
        let handshake = tokio::time::timeout_at(
            deadline,
            client::connect_stream(self.config.clone(), stream, client),
        )
        .await;
        let mut handle = match handshake {
            Err(_) => {
                permit.done(Outcome::Dropped);
                return Err(out_of_time());
            }
            Ok(Err(e @ SshError::HostKeyChanged { .. })) => {
                permit.done(Outcome::Neutral);
                return Err(Failure::Final(e));
            }
            Ok(Err(e)) => {
                // Accepted, then dropped before the keys were exchanged: sshd over
                // `MaxStartups`, or too busy to finish.
                permit.done(Outcome::Dropped);
                return Err(Failure::Busy(format!(
                    "the connection was accepted, then dropped during the handshake ({e})"
                )));
            }
            Ok(Ok(handle)) => handle,
        };
        // The host answered the handshake: from here a closed connection is a refusal.
        let accepted =
            match tokio::time::timeout_at(deadline, authenticate(&mut handle, endpoint)).await {
                Err(_) => {
                    permit.done(Outcome::Dropped);
                    return Err(out_of_time());
                }
                Ok(Err(e @ (SshError::Key { .. } | SshError::Agent(_)))) => {
                    permit.done(Outcome::Neutral);
                    return Err(Failure::Final(e));
                }
                Ok(Err(e)) => {
                    permit.done(Outcome::Neutral);
                    let reason = said.lock().unwrap_or_else(|p| p.into_inner()).take();
                    return Err(Failure::Final(SshError::LoginRefused {
                        user: endpoint.user.to_string(),
                        reason: reason.unwrap_or_else(|| e.to_string()),
                    }));
                }
                Ok(Ok(accepted)) => accepted,
            };
        if !accepted {
            permit.done(Outcome::Neutral);
            return Err(Failure::Final(SshError::Auth {
                user: endpoint.user.to_string(),
                method: match endpoint.login {
                    Login::Key(_) => "key",
                    Login::Password(_) => "password",
                    Login::Agent => "keys of the ssh agent",
                },
            }));
        }
        let took = permit.elapsed();
        permit.done(Outcome::Done(took));
        if expected.is_none() && endpoint.check_host_key {
            if let Some(fp) = seen.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                self.known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(endpoint.name.to_string(), fp.clone());
                self.new_keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((endpoint.name.to_string(), fp));
            }
        }
        Ok(Connection::new(endpoint.name.to_string(), handle))
    }

    /// Runs a shell command on the node, with `input` on its standard input (streamed, so its
    /// size is not limited by the command line); output lines go to `on_line`. Commands without
    /// input run in one of the connection's [`shell`] sessions where the node gives one, else
    /// on a channel of their own; both report the same.
    ///
    /// Every phase has an end: connecting and opening a session stop when the run asks to
    /// terminate or kill (the command has not started), the command's start, input and run
    /// are under its timeout and the run's stop requests, and once the run asks for a kill
    /// the whole call ends within [`FORCED_END`], whatever the node does.
    pub async fn exec(
        &self,
        target: &Target,
        command: &str,
        input: Option<&[u8]>,
        timeout: Duration,
        stop: watch::Receiver<Stop>,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<Finished, SshError> {
        let work = self.exec_phases(target, command, input, timeout, stop.clone(), on_line);
        match ended_by_kill(stop, work).await {
            Some(result) => result,
            None => {
                tracing::debug!(node = %target.node, "ssh: given up on at a kill");
                // What the node's connection is doing now is unknown: the next command connects
                // again.
                self.forget(&target.node).await;
                Err(SshError::Stopped("waiting for the node after a kill"))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec_phases(
        &self,
        target: &Target,
        command: &str,
        input: Option<&[u8]>,
        timeout: Duration,
        stop: watch::Receiver<Stop>,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<Finished, SshError> {
        let connection = until_terminate(
            stop.clone(),
            "connecting to the node",
            self.connection(target),
        )
        .await??;
        let opening = "opening a session on the node";
        let permit = if input.is_none() && shell::suits(command) {
            match until_terminate(stop.clone(), opening, self.shell(&connection, &target.node))
                .await??
            {
                Ok(mut session) => {
                    let ran = session
                        .run(command, timeout, stop, &self.masker, on_line)
                        .await;
                    return match ran {
                        Ok((finished, reusable)) => {
                            if reusable {
                                connection.keep_idle(session).await;
                            } else {
                                session.close().await;
                            }
                            Ok(finished)
                        }
                        Err(e) => {
                            session.close().await;
                            // The session ended under the command: the connection may be gone
                            // too, and the next command connects again.
                            self.forget(&target.node).await;
                            Err(e)
                        }
                    };
                }
                Err(permit) => permit,
            }
        } else {
            until_terminate(stop.clone(), opening, connection.place()).await??
        };
        let channel = until_terminate(
            stop.clone(),
            opening,
            self.open_channel(&connection, &target.node),
        )
        .await??;
        let ran = command::on_channel(
            channel,
            command,
            input,
            timeout,
            stop,
            &self.masker,
            on_line,
        )
        .await;
        drop(permit);
        if let Err(e) = &ran {
            // A broken connection (the node went away, or a command ended without a status):
            // the next command connects again instead of reusing it.
            tracing::debug!(node = %target.node, error = %e, "ssh: the command's channel failed");
            self.forget(&target.node).await;
        }
        ran
    }

    /// An idle shell session of the connection, or a new one; `Err(place)` when the command is
    /// to take a channel of its own (in that place among the connection's channels) because
    /// the node gives no usable session.
    async fn shell(
        &self,
        connection: &Connection,
        node: &str,
    ) -> Result<Result<shell::Shell, OwnedSemaphorePermit>, SshError> {
        if let Some(idle) = connection.take_idle().await {
            return Ok(Ok(idle));
        }
        let place = connection.place().await?;
        if connection.shell_refused.load(Ordering::Relaxed) {
            return Ok(Err(place));
        }
        let channel = self.open_channel(connection, node).await?;
        match shell::Shell::start(channel, place, SHELL_START).await {
            Ok(session) => {
                tracing::debug!(node, "ssh: shell session started");
                Ok(Ok(session))
            }
            Err((shell::NotStarted::Refused(why), place)) => {
                tracing::debug!(node, %why, "ssh: no shell session on this node; a channel per command");
                connection.shell_refused.store(true, Ordering::Relaxed);
                Ok(Err(place))
            }
            Err((shell::NotStarted::Slow, place)) => {
                tracing::debug!(
                    node,
                    "ssh: the shell session did not start in time; a channel for this command"
                );
                Ok(Err(place))
            }
        }
    }

    /// Opens a session channel on the connection. sshd frees a session a moment after the
    /// client sees a channel close, and its `MaxSessions` may be below ours: a refused open is
    /// back-pressure, not a failure, and idle shell sessions make room first.
    async fn open_channel(
        &self,
        connection: &Connection,
        node: &str,
    ) -> Result<russh::Channel<client::Msg>, SshError> {
        let within = login_deadline(self.connect_timeout);
        for attempt in 0..60u64 {
            let opened = tokio::time::timeout(within, connection.handle.channel_open_session())
                .await
                .map_err(|_| SshError::NoAnswer {
                    what: "open a session channel",
                    within,
                });
            let opened = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    self.forget(node).await;
                    return Err(e);
                }
            };
            match opened {
                Ok(c) => return Ok(c),
                Err(russh::Error::ChannelOpenFailure(reason)) => {
                    tracing::debug!(
                        node,
                        attempt,
                        ?reason,
                        "ssh: session refused by sshd (MaxSessions), waiting"
                    );
                    connection.close_idle().await;
                    tokio::time::sleep(Duration::from_millis((2 * (attempt + 1)).min(50))).await;
                }
                Err(e) => {
                    // The connection is broken (the node went away): the next command
                    // connects again instead of reusing it.
                    self.forget(node).await;
                    return Err(e.into());
                }
            }
        }
        Err(SshError::Ssh("the node kept refusing new sessions".into()))
    }
}

/// `work`, or `Err(Stopped(phase))` as soon as the run asks to terminate or kill (`work` is
/// dropped: it must not have started the command yet).
async fn until_terminate<T>(
    stop: watch::Receiver<Stop>,
    phase: &'static str,
    work: impl std::future::Future<Output = T>,
) -> Result<T, SshError> {
    tokio::select! {
        done = work => Ok(done),
        () = asked(stop, Stop::Terminate) => Err(SshError::Stopped(phase)),
    }
}

/// `work`'s result, or `None` when the run asked for a kill and `work` did not end within
/// [`FORCED_END`] after.
async fn ended_by_kill<T>(
    stop: watch::Receiver<Stop>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => return Some(done),
        () = asked(stop, Stop::Kill) => {}
    }
    tokio::time::timeout(FORCED_END, work).await.ok()
}

/// Ends once the run's stop level is at least `at_least`; never when nobody can raise it.
async fn asked(mut stop: watch::Receiver<Stop>, at_least: Stop) {
    if !dop_run::reached(&mut stop, at_least).await {
        std::future::pending::<()>().await;
    }
}
