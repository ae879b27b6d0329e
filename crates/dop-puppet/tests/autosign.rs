//! `dop-puppet-autosign` as Puppet runs it: the real binary, real certificate requests made by
//! openssl, the Hiera data of a real store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dop_core::LookupSettings;
use dop_store::Store;

const SHOP: &str = "name: shop
infrastructures: {lab: {type: baremetal}}
nodes:
  web01.example.com: {infrastructure: lab}
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
        child.stdin.take().unwrap().write_all(csr).unwrap();
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
fn only_nodes_of_stored_plans_with_their_plans_challenge_are_signed() {
    let w = World::new();
    let web = w.csr("web01.example.com", None);
    assert_eq!(
        w.ask("web01.example.com", &web, &[]),
        (
            0,
            "dop-puppet-autosign: signed web01.example.com (node of plan 'shop')".to_string()
        )
    );
    refused(
        w.ask(
            "stranger.example.com",
            &w.csr("stranger.example.com", None),
            &[],
        ),
        "stranger.example.com is not a node of any stored plan",
    );
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

    // bank has an `autosign` credential: its password is the challenge.
    refused(
        w.ask(
            "vault01.example.com",
            &w.csr("vault01.example.com", None),
            &[],
        ),
        "plan 'bank' requires a challenge password and the request carries none",
    );
    refused(
        w.ask(
            "vault01.example.com",
            &w.csr("vault01.example.com", Some("guess")),
            &[],
        ),
        "challenge password is not plan 'bank''s",
    );
    let (status, said) = w.ask(
        "vault01.example.com",
        &w.csr("vault01.example.com", Some("s3cret")),
        &[],
    );
    assert_eq!(status, 0, "{said}");
    assert!(
        said.ends_with("(node of plan 'bank', challenge password checked)"),
        "{said}"
    );
    // --require-challenge: shop has no credential, so nothing of it is signed.
    refused(
        w.ask("web01.example.com", &web, &["--require-challenge"]),
        "plan 'shop' has no `autosign` credential and a challenge password is required",
    );

    // Every decision is logged, one JSON line each.
    let log = std::fs::read_to_string(w.log()).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10, "{log}");
    assert_eq!(lines.iter().filter(|l| l["signed"] == true).count(), 2);
    assert!(!log.contains("s3cret"), "the challenge is never logged");
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
