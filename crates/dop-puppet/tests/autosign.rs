//! `dop-puppet-autosign` as Puppet runs it: the real binary, real certificate requests made by
//! openssl, the Hiera data of a real store, challenges issued as dopv and the operator issue
//! them (dopv's own issue and hand-over on a real local node: `crates/dopv/tests/local.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dop_core::LookupSettings;
use dop_puppet::challenge::{self, Origin};
use dop_store::Store;

const SHOP: &str = "name: shop
infrastructures: {lab: {type: baremetal}, cloud: {type: local}}
nodes:
  web01.example.com: {infrastructure: lab}
  app01.example.com: {infrastructure: cloud}
";

const BANK: &str = "name: bank
infrastructures: {lab: {type: baremetal}}
credentials:
  autosign: {type: username_password, username: puppet, password: s3cret}
nodes:
  vault01.example.com: {infrastructure: lab}
";

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let world = World {
            dir: tempfile::tempdir().unwrap(),
        };
        let store = Store::open(&world.dir.path().join("store")).unwrap();
        for text in [SHOP, BANK] {
            let plan = dop_core::load_str(text, None, &LookupSettings::default())
                .plan
                .unwrap();
            store.add(text, &plan, None, false).unwrap();
        }
        dop_puppet::hiera::sync(&store, &world.data(), &LookupSettings::default()).unwrap();
        world
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("hiera")
    }
    /// Settings with this world's store and Hiera data.
    fn config(&self) -> dop_core::Config {
        dop_core::Config {
            store_dir: self.dir.path().join("store"),
            hiera_dir: Some(self.data()),
            ..dop_core::Config::defaults(&dop_core::Environment::default())
        }
    }
    /// A challenge as dopv issues it when it (re)deploys a node.
    fn deploy(&self, plan: &str, node: &str, generation: u64) -> String {
        challenge::issue(&self.data(), plan, node, generation, Origin::Dopv).unwrap()
    }
    /// `dopi hiera challenge NODE`: its status, standard output and error.
    fn issue_pre_provisioned(&self, node: &str) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = dop_puppet::commands::hiera(
            &dop_puppet::commands::HieraCommand::Challenge {
                node: node.to_string(),
            },
            &self.config(),
            &mut dop_cli::store::Io {
                out: &mut out,
                err: &mut err,
            },
        );
        (
            status,
            String::from_utf8(out).unwrap().trim().to_string(),
            String::from_utf8(err).unwrap().trim().to_string(),
        )
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("autosign.log")
    }
    /// A certificate request for `cn`, with a challenge password if given (openssl).
    fn csr(&self, cn: &str, challenge: Option<&str>) -> Vec<u8> {
        let d = self.dir.path();
        let config = d.join(format!("{cn}.cnf"));
        let mut text = format!(
            "[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\n[dn]\nCN = {cn}\n[attrs]\n"
        );
        if let Some(c) = challenge {
            text.push_str(&format!("challengePassword = {c}\n"));
        }
        std::fs::write(&config, text).unwrap();
        let out = Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-keyout"])
            .arg(d.join(format!("{cn}.key")))
            .arg("-config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
    /// Runs the autosign executable as Puppet does; returns its exit status and stderr.
    fn ask(&self, certname: &str, csr: &[u8], extra: &[&str]) -> (i32, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dop-puppet-autosign"))
            .arg(certname)
            .args(["--config", "/dev/null", "--data-dir"])
            .arg(self.data())
            .arg("--log-file")
            .arg(self.log())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A usage error exits before reading the request: the pipe may be closed.
        let _ = child.stdin.take().unwrap().write_all(csr);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }
}

fn refused(answer: (i32, String), why: &str) {
    assert_eq!(answer.0, 1, "{}", answer.1);
    assert!(answer.1.contains(why), "expected {why:?} in: {}", answer.1);
}

#[test]
fn only_a_deployed_node_with_its_own_unused_challenge_is_signed() {
    let w = World::new();
    let app = "app01.example.com";
    refused(
        w.ask(
            "stranger.example.com",
            &w.csr("stranger.example.com", Some("anything")),
            &[],
        ),
        "stranger.example.com is not a node of any stored plan",
    );
    // In a stored plan but never deployed: the original would sign it.
    refused(
        w.ask(app, &w.csr(app, None), &[]),
        "app01.example.com has no autosign challenge: dopv has not deployed it",
    );

    let first = w.deploy("shop", app, 1);
    refused(
        w.ask(app, &w.csr(app, None), &[]),
        "the request carries no challengePassword, and app01.example.com needs the one it was issued",
    );
    refused(
        w.ask(app, &w.csr(app, Some("guess")), &[]),
        "the request's challengePassword is not the one app01.example.com was issued",
    );
    // Another node's challenge does not sign this one.
    let other = w.deploy("bank", "vault01.example.com", 1);
    refused(
        w.ask(app, &w.csr(app, Some(&other)), &[]),
        "is not the one app01.example.com was issued",
    );
    let (status, said) = w.ask(app, &w.csr(app, Some(&first)), &[]);
    assert_eq!(status, 0, "{said}");
    assert_eq!(
        said,
        "dop-puppet-autosign: signed app01.example.com (node of plan 'shop', its challenge of deployment 1 checked and used)"
    );
    // A second request with the same challenge (a new key, as a stranger that read the file
    // would make) is refused until dopv redeploys the node.
    refused(
        w.ask(app, &w.csr(app, Some(&first)), &[]),
        "a challenge signs one request; redeploy app01.example.com with dopv to issue it a new one",
    );
    let second = w.deploy("shop", app, 2);
    refused(
        w.ask(app, &w.csr(app, Some(&first)), &[]),
        "is not the one app01.example.com was issued",
    );
    let (status, said) = w.ask(app, &w.csr(app, Some(&second)), &[]);
    assert_eq!(status, 0, "{said}");
    assert!(
        said.ends_with("its challenge of deployment 2 checked and used)"),
        "{said}"
    );

    // The request itself is checked first, as before.
    let web = w.csr("web01.example.com", None);
    refused(
        w.ask("vault01.example.com", &web, &[]),
        "the request's subject CN is \"web01.example.com\", not the certname \"vault01.example.com\"",
    );
    refused(
        w.ask(
            "web01.example.com",
            b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
            &[],
        ),
        "the certificate request is not a PEM PKCS#10 request",
    );
    refused(
        w.ask("web01.example.com", b"", &[]),
        "not a PEM PKCS#10 request",
    );
    refused(
        w.ask("../etc", &web, &[]),
        "is not a certname dop can have a node for",
    );

    // Every decision is logged, one JSON line each, and no challenge is ever said.
    let log = std::fs::read_to_string(w.log()).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 13, "{log}");
    assert_eq!(lines.iter().filter(|l| l["signed"] == true).count(), 2);
    for secret in [&first, &second, &other] {
        assert!(
            !log.contains(secret.as_str()),
            "a challenge in the log: {log}"
        );
    }
}

#[test]
fn a_pre_provisioned_node_is_signed_with_the_challenge_the_operator_issued() {
    let w = World::new();
    let web = "web01.example.com";
    refused(
        w.ask(web, &w.csr(web, None), &[]),
        "gets one with `dopi hiera challenge web01.example.com`",
    );
    let (status, challenge, said) = w.issue_pre_provisioned(web);
    assert_eq!(status, 0, "{said}");
    assert_eq!(challenge.len(), 64, "{challenge}");
    assert!(said.contains("csr_attributes.yaml"), "{said}");
    assert!(!said.contains(&challenge), "shown once, on standard output");
    let (status, said) = w.ask(web, &w.csr(web, Some(&challenge)), &[]);
    assert_eq!(status, 0, "{said}");
    assert!(
        said.ends_with("its pre-provisioned challenge checked and used)"),
        "{said}"
    );
    refused(
        w.ask(web, &w.csr(web, Some(&challenge)), &[]),
        "a challenge signs one request; issue it a new one with `dopi hiera challenge web01.example.com`",
    );

    // Only nodes dopv does not make are pre-provisioned, and only nodes of stored plans.
    let (status, out, said) = w.issue_pre_provisioned("app01.example.com");
    assert_eq!((status, out.as_str()), (1, ""));
    assert_eq!(
        said,
        "error: app01.example.com is on infrastructure 'cloud' of plan 'shop', which dopv deploys: \
         dopv issues its challenge when it creates the node (a redeploy issues a new one); only \
         nodes on a baremetal infrastructure are pre-provisioned"
    );
    let (status, _, said) = w.issue_pre_provisioned("stranger.example.com");
    assert_eq!(status, 1);
    assert_eq!(
        said,
        "error: stranger.example.com is not a node of any stored plan: add its plan first"
    );
    assert!(challenge::read(&w.data(), "app01.example.com")
        .unwrap()
        .is_none());
}

#[test]
fn compat_original_signs_node_names_as_the_original_did_and_says_so() {
    let w = World::new();
    let compat = ["--compat-original"];
    let warning = "dop-puppet-autosign: warning: --compat-original signs any node name of a stored plan, deployed or not";
    // Never deployed, no challenge, and twice: signed.
    let app = "app01.example.com";
    for _ in 0..2 {
        let (status, said) = w.ask(app, &w.csr(app, None), &compat);
        assert_eq!(status, 0, "{said}");
        assert!(said.starts_with(warning), "{said}");
        assert!(
            said.ends_with(
                "signed app01.example.com (node of plan 'shop', by name only (--compat-original))"
            ),
            "{said}"
        );
    }
    refused(
        w.ask(
            "stranger.example.com",
            &w.csr("stranger.example.com", None),
            &compat,
        ),
        "stranger.example.com is not a node of any stored plan",
    );
    // bank has an `autosign` credential: its one password is every node's challenge.
    let vault = "vault01.example.com";
    refused(
        w.ask(vault, &w.csr(vault, None), &compat),
        "plan 'bank' requires a challenge password and the request carries none",
    );
    refused(
        w.ask(vault, &w.csr(vault, Some("guess")), &compat),
        "challenge password is not plan 'bank''s",
    );
    let (status, said) = w.ask(vault, &w.csr(vault, Some("s3cret")), &compat);
    assert_eq!(status, 0, "{said}");
    assert!(
        said.ends_with("(node of plan 'bank', challenge password checked (--compat-original))"),
        "{said}"
    );
    refused(
        w.ask(
            app,
            &w.csr(app, None),
            &["--compat-original", "--require-challenge"],
        ),
        "plan 'shop' has no `autosign` credential and a challenge password is required",
    );
    // --require-challenge belongs to the compatibility mode.
    let (status, said) = w.ask(app, &w.csr(app, None), &["--require-challenge"]);
    assert_eq!(status, 64, "{said}");
    assert!(said.contains("--compat-original"), "{said}");
    assert!(!std::fs::read_to_string(w.log()).unwrap().contains("s3cret"));
}

#[test]
fn without_hiera_data_nothing_is_signed() {
    let w = World::new();
    let csr = w.csr("web01.example.com", None);
    std::fs::remove_file(w.data().join("current")).unwrap();
    refused(
        w.ask("web01.example.com", &csr, &[]),
        "the nodes of stored plans are unknown (run `dopi hiera sync`)",
    );
    assert!(!Path::new(&w.data().join("current")).exists());
}
