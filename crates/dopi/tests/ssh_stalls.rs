//! Nodes that stall in each phase of an SSH command: during the handshake (a server that sends
//! its banner and then nothing), during authentication (a real sshd whose
//! `AuthorizedKeysCommand` never answers) and while the command's input is sent (a real sshd
//! whose session process is paused). However the node stalls, a forced cancel (the run's stop
//! raised to kill) ends the command within seconds, and a terminate ends one that has not
//! started. The pool is driven directly (`dopi::ssh::SshPool`), as the plugins do.
//!
//! Loopback: a listener on 127.0.0.1 with an ephemeral port, sshd nodes at `127.10.0.231` (port
//! 2367) and `127.10.0.233` (port 2368).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dop_testbed::{Options, Testbed};
use dopi::exec::Stop;
use dopi::ssh::{Login, SshError, SshPool, Target};
use tokio::sync::watch;

/// The generous bound of "within seconds" (the pool's own is [`dopi::ssh::FORCED_END`]).
const WITHIN_SECONDS: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn key_login(path: &std::path::Path) -> Login {
    let text = std::fs::read_to_string(path).unwrap();
    Login::Key(Arc::new(
        russh::keys::decode_secret_key(&text, None).unwrap(),
    ))
}

fn target(node: &str, address: &str, port: u16, user: &str, login: Login) -> Target {
    Target {
        node: node.into(),
        addresses: vec![address.into()],
        port,
        user: user.into(),
        login,
        check_host_key: true,
        jumps: Vec::new(),
    }
}

/// Runs `command` with `input` on `target` and raises the run's stop to `level` after
/// `after`; returns what the command gave and how long it took from the request to stop.
fn stopped_after(
    runtime: &tokio::runtime::Runtime,
    pool: &SshPool,
    target: &Target,
    command: &str,
    input: Option<&[u8]>,
    after: Duration,
    level: Stop,
) -> (Result<dopi::exec::Finished, SshError>, Duration) {
    runtime.block_on(async {
        let (stop, stopped) = watch::channel(Stop::No);
        let mut ignore = |_: dopi::exec::Stream, _: &str| {};
        let exec = pool.exec(
            target,
            command,
            input,
            Duration::from_secs(3600),
            stopped,
            &mut ignore,
        );
        tokio::pin!(exec);
        if let Ok(early) = tokio::time::timeout(after, &mut exec).await {
            panic!("the command ended before the stop request: {early:?}");
        }
        let asked = Instant::now();
        stop.send(level).unwrap();
        let result = tokio::time::timeout(WITHIN_SECONDS, exec)
            .await
            .unwrap_or_else(|_| panic!("the command did not end within {WITHIN_SECONDS:?}"));
        (result, asked.elapsed())
    })
}

/// A server that accepts connections, sends an SSH banner and then nothing; it reads what
/// comes so that the client's writes do not block. Stops when dropped.
struct SilentServer {
    port: u16,
    _done: std::sync::mpsc::Sender<()>,
}

impl SilentServer {
    fn start() -> SilentServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (done, gone) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            // Bounded: it ends with the test (the sender dropped), at the latest after 10 min.
            for _ in 0..60_000 {
                if !matches!(gone.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                    return;
                }
                if let Ok((mut socket, _)) = listener.accept() {
                    let _ = socket.write_all(b"SSH-2.0-OpenSSH_9.2 stalls\r\n");
                    let _ = socket.set_nonblocking(true);
                    held.push(socket);
                }
                let mut sink = [0u8; 4096];
                for socket in &mut held {
                    let _ = socket.read(&mut sink);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        SilentServer { port, _done: done }
    }
}

/// A node that sends its banner and then stalls the handshake: a kill ends the command within
/// seconds, and so does a terminate (the command never started). Without the stop requests
/// the pool would wait out the login deadline (30 s) once per attempt (8 attempts).
#[test]
fn a_node_that_stalls_the_handshake_is_given_up_on_at_a_stop() {
    let server = SilentServer::start();
    let dir = tempfile::tempdir().unwrap();
    dop_testbed::generate_key(&dir.path().join("key"), "stall").unwrap();
    let login = key_login(&dir.path().join("key"));
    for level in [Stop::Kill, Stop::Terminate] {
        let pool = SshPool::new(
            HashMap::new(),
            Duration::from_secs(2),
            None,
            dop_run::Masker::default(),
        );
        let stalled = target("stall", "127.0.0.1", server.port, "root", login.clone());
        let (result, took) = stopped_after(
            &runtime(),
            &pool,
            &stalled,
            "true",
            None,
            Duration::from_secs(2),
            level,
        );
        let err = result.expect_err("the command cannot have run");
        assert!(
            matches!(err, SshError::Stopped(_)),
            "{level:?}: {err} after {took:?}"
        );
        assert!(err.to_string().contains("connecting to the node"), "{err}");
    }
}

/// A real sshd whose `AuthorizedKeysCommand` never answers: the login stalls during
/// authentication, after the handshake; a kill ends the command within seconds.
#[test]
fn a_node_that_stalls_authentication_is_given_up_on_at_a_kill() {
    if !Testbed::available() {
        eprintln!("skipped: sshd is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        extra_config: "AuthorizedKeysCommand /bin/sleep 3600\nAuthorizedKeysCommandUser nobody\n"
            .into(),
        ..Options::new(1, 2368, 233)
    };
    let testbed = Testbed::start(&dir.path().join("testbed"), &options).expect("testbed");
    // A key the node's AuthorizedKeysFile does not list: sshd asks the command, which sleeps.
    dop_testbed::generate_key(&dir.path().join("unknown"), "unknown").unwrap();
    let pool = SshPool::new(
        HashMap::new(),
        Duration::from_secs(2),
        None,
        dop_run::Masker::default(),
    );
    let node = target(
        "n01",
        &testbed.addresses[0].to_string(),
        testbed.port,
        &testbed.user,
        key_login(&dir.path().join("unknown")),
    );
    let (result, took) = stopped_after(
        &runtime(),
        &pool,
        &node,
        "true",
        None,
        Duration::from_secs(3),
        Stop::Kill,
    );
    let err = result.expect_err("the command cannot have run");
    assert!(matches!(err, SshError::Stopped(_)), "{err} after {took:?}");
    // The login was under way: sshd was asking its command when the kill came.
    let log = std::fs::read_to_string(testbed.dir().join("sshd.0.log")).unwrap_or_default();
    assert!(!log.contains("Accepted publickey"), "{log}");
}

/// A real sshd whose session process is paused while a command's input is being sent (the
/// node stops reading; the input waits for flow control that never comes): a kill ends the
/// command within seconds. Before, the input was sent outside the command's deadline and stop
/// requests, and the run waited for ever.
#[test]
fn a_node_that_stops_reading_the_input_is_given_up_on_at_a_kill() {
    if !Testbed::available() {
        eprintln!("skipped: sshd is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let testbed =
        Testbed::start(&dir.path().join("testbed"), &Options::new(1, 2367, 231)).expect("testbed");
    let pool = SshPool::new(
        HashMap::new(),
        Duration::from_secs(5),
        None,
        dop_run::Masker::default(),
    );
    let node = target(
        "n01",
        &testbed.addresses[0].to_string(),
        testbed.port,
        &testbed.user,
        key_login(&testbed.client_key()),
    );
    // The sshd process serving the connection: the parent of a command on a channel of its own
    // (a command with input takes one).
    // One runtime for the test: the connection's task lives on it.
    let runtime = runtime();
    let mut said = Vec::new();
    let found = runtime.block_on(async {
        let (_stop, stopped) = watch::channel(Stop::No);
        let mut collect = |_: dopi::exec::Stream, line: &str| said.push(line.to_string());
        pool.exec(
            &node,
            "echo $PPID",
            Some(b""),
            Duration::from_secs(30),
            stopped,
            &mut collect,
        )
        .await
    });
    assert_eq!(found.expect("the node answers").exit_status, Some(0));
    let session: i32 = said[0].trim().parse().unwrap();
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            // SAFETY: kill has no memory preconditions; the pid is this test's sshd session.
            unsafe {
                libc::kill(self.0, libc::SIGCONT);
            }
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(session, libc::SIGSTOP);
    }
    let _resume = Resume(session);
    // Far more than the channel's window and the sockets' buffers take.
    let input = vec![b'x'; 64 * 1024 * 1024];
    let (result, took) = stopped_after(
        &runtime,
        &pool,
        &node,
        "cat > /dev/null",
        Some(&input),
        Duration::from_secs(3),
        Stop::Kill,
    );
    match result {
        Ok(finished) => assert!(finished.stopped, "{finished:?} after {took:?}"),
        Err(e) => assert!(matches!(e, SshError::Stopped(_)), "{e} after {took:?}"),
    }
}
