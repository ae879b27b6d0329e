//! The fleet bed of issue 27: many nodes on one host, on port 22, as an operator's plan names
//! them (`pN.example.com`, reached through `interfaces.eth0.ip`), and what the bench measures on
//! it: the CPU sshd itself spends on one login, the floor no client can go below.

use std::path::Path;
use std::process::Stdio;

use crate::{address, Testbed};

/// The port of the fleet bed.
pub const PORT: u16 = 22;

/// Whether port 22 can be used at the bed's first address (root, and nothing listening).
pub fn port_22_usable(first: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::net::TcpListener::bind((address(first, 0), PORT)).is_ok()
}

/// A dopi plan over the testbed's nodes: `p0.example.com`, `p1.example.com`… (names that need
/// not resolve), each reached through `interfaces.eth0.ip`, and `steps` steps that run `true`
/// on all nodes, `max_in_flight` at a time.
pub fn plan(testbed: &Testbed, name: &str, steps: usize, max_in_flight: i64) -> String {
    plan_of(testbed, name, testbed.addresses.len(), steps, max_in_flight)
}

/// [`plan`] with `nodes` nodes, more than the testbed's addresses where asked: node `i` is
/// reached at address `i` modulo their number (many nodes on one host, as containers on a
/// hypervisor are).
pub fn plan_of(
    testbed: &Testbed,
    name: &str,
    nodes: usize,
    steps: usize,
    max_in_flight: i64,
) -> String {
    let mut t = format!(
        "name: {name}\ninfrastructures:\n  lab:\n    type: baremetal\n    networks:\n      lo: \
         {{ip_pool: {{from: 127.0.0.1, to: 127.255.255.254}}, ip_netmask: 255.0.0.0, ip_defgw: \
         false}}\ncredentials:\n  login: {{type: ssh_key, username: {}, private_key: {{file: \
         {}}}}}\nnodes:\n",
        testbed.user,
        testbed.client_key().display()
    );
    for i in 0..nodes {
        let a = testbed.addresses[i % testbed.addresses.len()];
        t.push_str(&format!(
            "  p{i}.example.com: {{infrastructure: lab, interfaces: {{eth0: {{network: lo, ip: {a}}}}}}}\n"
        ));
    }
    t.push_str("steps:\n");
    for s in 1..=steps {
        t.push_str(&format!(
            "  - name: step {s}\n    nodes: all\n    max_in_flight: {max_in_flight}\n    \
             set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {}}}]\n    \
             command: {{plugin: ssh/custom, exec: 'true'}}\n",
            testbed.port
        ));
    }
    t
}

/// The CPU time (user + system) of the reaped children of `pid`, in seconds: for a listening
/// sshd, what its connections cost once they ended.
pub fn reaped_children_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // cutime and cstime are fields 16 and 17; the fields after the command name start at 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / per_second.max(1) as f64)
}

/// sshd's own CPU for one login and a `true`, in seconds: the first sshd's reaped children
/// across `logins` logins by OpenSSH's client, one after the other, to its first address.
pub fn login_cost(testbed: &Testbed, logins: u32, known_hosts: &Path) -> Option<f64> {
    let pid = *testbed.pids().first()?;
    let before = reaped_children_cpu(pid)?;
    for _ in 0..logins {
        let ok = testbed
            .openssh(0, known_hosts)
            .arg("true")
            .stdin(Stdio::null())
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
    }
    // The last session's process is reaped a moment after the client returns.
    std::thread::sleep(std::time::Duration::from_millis(300));
    Some((reaped_children_cpu(pid)? - before) / f64::from(logins))
}
