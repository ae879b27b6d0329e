//! How each service of the stack shows that it answers (a port, an HTTP API, or only its
//! process), and its state as `status` prints it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use dop_testbed::openstack::SERVICES;

use super::Stack;

/// How a service shows that it answers.
pub(super) enum Probe {
    /// Accepts TCP connections on this port.
    Tcp(u16),
    /// Answers HTTP on this port and path with a status below 500.
    Http(u16, &'static str),
    /// No port: its process runs.
    Process,
}

pub(super) fn probe(service: &str) -> Probe {
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
pub(super) struct Check {
    pub(super) service: &'static str,
    pub(super) pid: Option<u32>,
    pub(super) running: bool,
    pub(super) answers: Option<bool>,
    pub(super) detail: String,
}

impl Check {
    pub(super) fn up(&self) -> bool {
        self.running && self.answers != Some(false)
    }
}

impl Stack {
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

    pub(super) fn check_all(&self) -> Vec<Check> {
        SERVICES.iter().map(|s| self.check(s)).collect()
    }
}

pub(super) fn tcp_accepts(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
}

/// The status code of `GET path` on 127.0.0.1:port (HTTP/1.0, a few seconds at most).
pub(super) fn http_status(port: u16, path: &str) -> Option<u16> {
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

#[cfg(test)]
mod tests {
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
