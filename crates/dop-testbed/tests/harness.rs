//! The harness itself: nodes answer with an SSH banner on their addresses while the testbed
//! lives, and nothing listens once it is dropped.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use dop_testbed::{Options, Testbed};

fn banner(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn twenty_nodes_answer_and_are_gone_after_stop() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        nodes: 20,
        port: 2301,
        ..Options::default()
    };
    let mut testbed = Testbed::start(dir.path(), &options).expect("start the testbed");
    assert_eq!(testbed.addresses.len(), 20);
    // 20 addresses need two sshd processes (16 addresses each at most).
    assert_eq!(testbed.pids().len(), 2);
    for a in &testbed.addresses {
        let text = banner(SocketAddr::from((*a, options.port))).unwrap();
        assert!(text.starts_with("SSH-2.0-OpenSSH"), "{a}: {text}");
    }
    assert!(testbed.client_key().exists());
    // The login works with the client key and runs /bin/sh (checked with OpenSSH's client).
    let out = testbed
        .openssh(17, std::path::Path::new("/dev/null"))
        .arg("echo $0 $(id -un); exit 3")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sh {}", testbed.user)
    );
    assert!(std::fs::read_to_string(testbed.host_key())
        .unwrap()
        .starts_with("ssh-ed25519 "));
    let pids = testbed.pids();
    testbed.stop();
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "sshd {pid} still runs"
        );
    }
    for a in &testbed.addresses {
        assert!(
            banner(SocketAddr::from((*a, options.port))).is_err(),
            "{a} still answers"
        );
    }
}

#[test]
fn addresses_skip_zero_and_broadcast() {
    assert_eq!(dop_testbed::address(1, 0).to_string(), "127.10.0.1");
    assert_eq!(dop_testbed::address(1, 253).to_string(), "127.10.0.254");
    assert_eq!(dop_testbed::address(1, 254).to_string(), "127.10.1.1");
}
