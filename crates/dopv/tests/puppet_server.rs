//! The roadmap's Puppet workflow against a real Puppet server (`cargo xtask puppet up`): the
//! plan added makes its node names and Hiera data known to the server, dopv deploys `local`
//! nodes, each node's agent asks for a certificate that dop's autosign policy signs, dopi's
//! `ssh/puppet_agent_run` runs the agent, the server compiles the node's catalog from the
//! plan's Hiera data (its role class, a value of `configuration`) and the node applies it. A
//! plan update changes the value for the next run; a node in no plan is refused its
//! certificate; a removed plan's nodes are served no catalog.
//!
//! Without the server (or without root for the local nodes) the test prints `skipped: …`.

mod common;

use std::ops::Deref;

use common::dopi_run;
use dop_testbed::dopv::{local_nodes_available, DopvLab};
use dop_testbed::puppet::{Puppet, ROLE_FILE};

/// The certnames the test has the CA sign or refuse.
const CERTNAMES: [&str; 3] = ["web01.dop.test", "db01.dop.test", "stranger.dop.test"];

/// A dopv lab whose Hiera data goes where the bed's server reads it; on drop its local nodes
/// are stopped and the CA forgets the test's certificates, so the test can run again.
struct Lab(DopvLab, Puppet);

impl Drop for Lab {
    fn drop(&mut self) {
        dopv::providers::local::stop_all(&self.local_dir());
        for name in CERTNAMES {
            self.1.forget(name);
        }
    }
}

impl Deref for Lab {
    type Target = DopvLab;
    fn deref(&self) -> &DopvLab {
        &self.0
    }
}

const P: &str = "127.0.91";
const PORT: u16 = 2370;

fn plan(puppet: &Puppet, key: &str, value: &str) -> String {
    format!(
        "name: shop
infrastructures:
  lab:
    type: local
    ssh_port: {PORT}
    networks:
      lo: {{ip_pool: {{from: {P}.1, to: {P}.200}}, ip_netmask: 255.255.255.0, ip_defgw: false}}
credentials:
  root_key: {{type: ssh_key, username: root, private_key: {{file: {key}}}, public_key: {{file: {key}.pub}}}}
nodes:
  web01.dop.test:
    infrastructure: lab
    credentials: [root_key]
    interfaces: {{eth0: {{network: lo, ip: {P}.1}}}}
  db01.dop.test:
    infrastructure: lab
    credentials: [root_key]
    interfaces: {{eth0: {{network: lo, ip: {P}.2}}}}
configuration:
  nodes:
    db01.dop.test: {{role: db}}
  defaults: {{role: web, 'dop_test::value': '{value}'}}
steps:
  default:
    # A local node's /var starts empty; a machine has these from the package.
    - name: puppet directories
      nodes: all
      max_in_flight: -1
      set_plugin_defaults: [{{plugins: '/^ssh/', credentials: root_key}}]
      command: {{plugin: ssh/custom, exec: 'mkdir -p /var/lib/puppet /var/cache/puppet'}}
    - name: puppet
      nodes: all
      max_in_flight: -1
      command:
        plugin: ssh/puppet_agent_run
        # Debian's agent reads /etc/puppet/csr_attributes.yaml; dopv hands the challenge over
        # where Puppet's own packages read it.
        arguments: '--server {server} --serverport {port} --waitforcert 0 --csr_attributes /etc/puppetlabs/puppet/csr_attributes.yaml'
",
        server = puppet.server,
        port = puppet.port,
    )
}

fn role_file(lab: &DopvLab, ip: &str) -> String {
    lab.ssh(ip, PORT, &format!("cat {ROLE_FILE} 2>&1 || true"))
}

fn run_log(report: &dopi::RunReport) -> String {
    std::fs::read_to_string(report.log_dir.join("all.log")).unwrap_or_default()
}

#[test]
#[ignore = "issue 30: the server's JRuby (Ruby 2.6) does not sort Hiera's glob matches, so \
            dop's per-level files (`dopi hiera config`) are read in any order and db01 got the \
            defaults' role; run with --ignored once the hierarchy lists its levels in order"]
fn a_plan_drives_the_puppet_server_from_certificate_to_catalog_to_removal() {
    let puppet = match Puppet::find() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    if !local_nodes_available() {
        return;
    }
    let lab = Lab(
        DopvLab::new(env!("CARGO_BIN_EXE_dopv"))
            .with_config(&format!("hiera_dir: {}\n", puppet.hiera_dir.display())),
        puppet.clone(),
    );
    let key = lab.key().display().to_string();
    let web = format!("{P}.1");
    let db = format!("{P}.2");
    // An earlier run's certificates (a failed test's) are forgotten; its decisions are skipped.
    for name in CERTNAMES {
        puppet.forget(name);
    }
    let earlier: Vec<usize> = CERTNAMES
        .iter()
        .map(|n| puppet.autosign_decisions(n).len())
        .collect();
    let decisions = |i: usize| puppet.autosign_decisions(CERTNAMES[i])[earlier[i]..].to_vec();

    // The plan added: the server knows the node names (autosign) and their Hiera data.
    lab.add_plan(&plan(&puppet, &key, "first"));
    lab.expect(&["deploy", "shop"], 0);

    // Each agent asks for a certificate, dop's policy signs it (the node's challenge), the
    // server compiles the node's role class with the plan's value and the node applies it.
    let report = dopi_run(&lab, "shop", dopi::Redeployed::Refuse, 20).unwrap();
    let log = run_log(&report);
    assert!(
        matches!(report.result, dopi::RunResult::Done),
        "{:?}\n{log}",
        report.result
    );
    for (i, node) in CERTNAMES[..2].iter().enumerate() {
        assert!(puppet.signed(node), "{node} not signed\n{log}");
        let decisions = decisions(i);
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!(decisions[0]["signed"], true, "{decisions:?}");
        assert!(
            decisions[0]["decision"]
                .as_str()
                .is_some_and(|d| d.contains("node of plan 'shop'")),
            "{decisions:?}"
        );
    }
    assert_eq!(role_file(&lab, &web), "web first", "{log}");
    assert_eq!(role_file(&lab, &db), "db first", "{log}");

    // A plan update changes the value: the next run applies it.
    lab.add_plan(&plan(&puppet, &key, "second"));
    let report = dopi_run(&lab, "shop", dopi::Redeployed::Refuse, 20).unwrap();
    let log = run_log(&report);
    assert!(
        matches!(report.result, dopi::RunResult::Done),
        "{:?}\n{log}",
        report.result
    );
    assert_eq!(role_file(&lab, &web), "web second", "{log}");
    assert_eq!(role_file(&lab, &db), "db second", "{log}");

    // A machine whose name is in no plan is refused a certificate, and says so.
    let stranger = lab.ssh(
        &web,
        PORT,
        &format!(
            "puppet agent --test --color false --server {} --serverport {} --waitforcert 0 \
             --certname stranger.dop.test --ssldir /var/lib/stranger-ssl 2>&1; echo exit=$?",
            puppet.server, puppet.port
        ),
    );
    assert!(
        stranger.contains("Certificate for stranger.dop.test has not been signed yet")
            && !stranger.ends_with("exit=0"),
        "{stranger}"
    );
    assert!(!puppet.signed("stranger.dop.test"));
    let decisions = decisions(2);
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["signed"], false);
    assert!(
        decisions[0]["decision"]
            .as_str()
            .is_some_and(|d| d.ends_with("stranger.dop.test is not a node of any stored plan")),
        "{decisions:?}"
    );

    // The plan removed (its nodes still run, forgotten): its Hiera data is gone, and the
    // server compiles no catalog for its nodes any more.
    lab.expect(&["remove", "shop", "--force"], 0);
    assert!(
        !puppet
            .hiera_dir
            .join("current/nodes/web01.dop.test")
            .exists(),
        "the removed plan's Hiera data is still there"
    );
    let after = lab.ssh(
        &web,
        PORT,
        &format!(
            "puppet agent --test --color false --server {} --serverport {} 2>&1; echo exit=$?",
            puppet.server, puppet.port
        ),
    );
    assert!(
        after.contains("web01.dop.test is in no dop plan") && after.ends_with("exit=1"),
        "{after}"
    );
    assert_eq!(role_file(&lab, &web), "web second", "nothing was applied");
}
