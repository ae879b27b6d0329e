//! `dop-puppet-autosign` is Puppet's policy-based autosign executable for the
//! nodes of stored plans: Puppet runs it with the certname as its argument and the certificate
//! request (PEM) on standard input; it signs (exit 0) only when
//!
//! * the request is a well-formed PKCS#10 request whose subject CN is the certname,
//! * the certname is a node of a stored plan (the Hiera data's `current/index.json`, which
//!   `dopi hiera sync` and every plan change write), and
//! * when that plan has an `autosign` credential, the request carries its password as its
//!   `challengePassword` attribute (Puppet's `csr_attributes.yaml`); with `--require-challenge`
//!   a plan without one signs nothing.
//!
//! Everything else is refused (exit 1) with the reason. It reads only the Hiera data directory,
//! never the plan store, so the Puppet server needs no access to the store.
use std::path::Path;

use crate::hiera::{challenge_hash, Index};
use serde_json::Value;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::DecodePem;
use x509_cert::ext::pkix::name::DirectoryString;
use x509_cert::request::CertReq;

/// PKCS#9 `challengePassword`.
const CHALLENGE_PASSWORD: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7");

/// What to decide with.
#[derive(Clone, Debug)]
pub struct Policy<'a> {
    /// The Hiera data directory (its `current` generation is read).
    pub data_dir: &'a Path,
    /// Refuse nodes of plans without an `autosign` credential.
    pub require_challenge: bool,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Sign: the node's plan, and whether a challenge password was checked.
    Sign {
        /// The plan the node belongs to.
        plan: String,
        /// A challenge password was required and matched.
        challenged: bool,
    },
    /// Refuse, and why.
    Refuse(String),
}

impl Verdict {
    /// The exit status Puppet expects: 0 signs, anything else refuses.
    pub fn exit_status(&self) -> u8 {
        match self {
            Verdict::Sign { .. } => 0,
            Verdict::Refuse(_) => 1,
        }
    }
}

/// Decides whether to sign the request `csr` (PEM) for `certname`.
pub fn decide(policy: &Policy<'_>, certname: &str, csr: &[u8]) -> Verdict {
    match check(policy, certname, csr) {
        Ok((plan, challenged)) => Verdict::Sign { plan, challenged },
        Err(reason) => Verdict::Refuse(reason),
    }
}

fn check(policy: &Policy<'_>, certname: &str, csr: &[u8]) -> Result<(String, bool), String> {
    if certname.is_empty()
        || certname.starts_with('.')
        || certname.contains('/')
        || certname
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "{certname:?} is not a certname dop can have a node for"
        ));
    }
    let request = CertReq::from_pem(csr)
        .map_err(|e| format!("the certificate request is not a PEM PKCS#10 request: {e}"))?;
    let subject = request
        .info
        .subject
        .common_name()
        .map_err(|e| format!("the request's subject CN cannot be read: {e}"))?
        .map(String::from)
        .ok_or("the request's subject has no CN")?;
    if subject != certname {
        return Err(format!(
            "the request's subject CN is {subject:?}, not the certname {certname:?}"
        ));
    }

    let current = policy.data_dir.join("current");
    let index_path = current.join("index.json");
    let index: Index = read_json(&index_path).map_err(|e| {
        format!("{e}: the nodes of stored plans are unknown (run `dopi hiera sync`)")
    })?;
    let plan = index
        .plans
        .iter()
        .find(|(_, p)| p.nodes.iter().any(|n| n == certname))
        .map(|(name, _)| name.clone())
        .ok_or_else(|| format!("{certname} is not a node of any stored plan"))?;

    let autosign_path = current.join("autosign.json");
    let autosign: Value = read_json(&autosign_path)?;
    let entry = &autosign["plans"][&plan];
    if entry.is_null() {
        if policy.require_challenge {
            return Err(format!(
                "plan '{plan}' has no `{}` credential and a challenge password is required (--require-challenge)",
                crate::hiera::AUTOSIGN_CREDENTIAL
            ));
        }
        return Ok((plan, false));
    }
    if let Some(error) = entry["error"].as_str() {
        return Err(format!("plan '{plan}': {error}"));
    }
    let expected = entry["sha256"]
        .as_str()
        .ok_or_else(|| format!("{}: plan '{plan}' has no hash", autosign_path.display()))?;
    let given = challenge(&request)?.ok_or_else(|| {
        format!("plan '{plan}' requires a challenge password and the request carries none")
    })?;
    if !same(&challenge_hash(&plan, &given), expected) {
        return Err(format!(
            "the request's challenge password is not plan '{plan}''s"
        ));
    }
    Ok((plan, true))
}

/// The request's `challengePassword`, if it has one.
fn challenge(request: &CertReq) -> Result<Option<String>, String> {
    let Some(attribute) = request
        .info
        .attributes
        .iter()
        .find(|a| a.oid == CHALLENGE_PASSWORD)
    else {
        return Ok(None);
    };
    let value = attribute
        .values
        .iter()
        .next()
        .ok_or("the request's challengePassword attribute is empty")?;
    let text = DirectoryString::try_from(value)
        .map_err(|e| format!("the request's challengePassword is not a string: {e}"))?;
    Ok(Some(String::from(text)))
}

/// Compares two hashes in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))
}
