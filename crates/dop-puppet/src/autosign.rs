//! `dop-puppet-autosign` is Puppet's policy-based autosign executable for the
//! nodes of stored plans: Puppet runs it with the certname as its argument and the certificate
//! request (PEM) on standard input; it signs (exit 0) only when
//!
//! * the request is a well-formed PKCS#10 request whose subject CN is the certname,
//! * the certname is a node of a stored plan (the Hiera data's `current/index.json`, which
//!   `dopi hiera sync` and every plan change write),
//! * the node was issued a challenge ([`crate::challenge`]): dopv issues one when it creates
//!   (or redeploys) the node, the operator one for a pre-provisioned machine, and
//! * the request carries that challenge as its `challengePassword` attribute (Puppet's
//!   `csr_attributes.yaml`) and no request was signed with it before; signing records that.
//!
//! With `--compat-original` it decides as the original did instead (any node name of a
//! stored plan), keeping only the CN check and the plan's optional `autosign` credential
//! password ([`Mode::CompatOriginal`]).
//!
//! Everything else is refused (exit 1) with the reason. It reads only the Hiera data directory,
//! never the plan store, so the Puppet server needs no access to the store.
use std::path::Path;

use crate::challenge::{self, Origin};
use crate::hiera::{challenge_hash, Index};
use serde_json::Value;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::DecodePem;
use x509_cert::ext::pkix::name::DirectoryString;
use x509_cert::request::CertReq;

/// PKCS#9 `challengePassword`.
const CHALLENGE_PASSWORD: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7");

/// Which rule signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A node dopv deployed (or a pre-provisioned one), with its own single-use challenge.
    NodeChallenge,
    /// The original's rule: any node name of a stored plan, with the plan's `autosign`
    /// credential password when it has one (`require_challenge`: only then). Any machine that
    /// knows a node name (and the plan's one password) gets its certificate.
    CompatOriginal {
        /// Refuse nodes of plans without an `autosign` credential.
        require_challenge: bool,
    },
}

/// What to decide with.
#[derive(Clone, Debug)]
pub struct Policy<'a> {
    /// The Hiera data directory (its `current` generation and `autosign/` are read).
    pub data_dir: &'a Path,
    /// Which rule signs.
    pub mode: Mode,
}

/// What a signed request proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proof {
    /// The node's own challenge, now used.
    NodeChallenge {
        /// Who issued it.
        origin: Origin,
        /// The deployment generation it was issued for.
        generation: u64,
    },
    /// Compatibility mode: its plan's `autosign` password.
    PlanPassword,
    /// Compatibility mode: only the node name (the plan has no `autosign` credential).
    NodeName,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Sign: the node's plan, and what the request proved.
    Sign {
        /// The plan the node belongs to.
        plan: String,
        /// What was checked.
        proof: Proof,
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

/// Decides whether to sign the request `csr` (PEM) for `certname`; in the default mode a
/// signing is recorded, so the same challenge signs no second request.
pub fn decide(policy: &Policy<'_>, certname: &str, csr: &[u8]) -> Verdict {
    let decided = read_request(certname, csr).and_then(|request| {
        let plan = plan_of(policy.data_dir, certname)?;
        let given = challenge(&request)?;
        let proof = match policy.mode {
            Mode::NodeChallenge => node_challenge(policy.data_dir, &plan, certname, given)?,
            Mode::CompatOriginal { require_challenge } => {
                plan_password(policy.data_dir, &plan, given, require_challenge)?
            }
        };
        Ok(Verdict::Sign { plan, proof })
    });
    decided.unwrap_or_else(Verdict::Refuse)
}

/// The request, if it is well-formed and its subject CN is the certname.
fn read_request(certname: &str, csr: &[u8]) -> Result<CertReq, String> {
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
    Ok(request)
}

/// The stored plan `certname` is a node of.
fn plan_of(data_dir: &Path, certname: &str) -> Result<String, String> {
    let index_path = data_dir.join("current/index.json");
    let index: Index = read_json(&index_path).map_err(|e| {
        format!("{e}: the nodes of stored plans are unknown (run `dopi hiera sync`)")
    })?;
    index
        .plans
        .iter()
        .find(|(_, p)| p.nodes.iter().any(|n| n == certname))
        .map(|(name, _)| name.clone())
        .ok_or_else(|| format!("{certname} is not a node of any stored plan"))
}

/// The default rule: the node's own challenge, redeemed.
fn node_challenge(
    data_dir: &Path,
    plan: &str,
    node: &str,
    given: Option<String>,
) -> Result<Proof, String> {
    let record =
        challenge::redeem(data_dir, plan, node, given.as_deref()).map_err(|e| e.to_string())?;
    Ok(Proof::NodeChallenge {
        origin: record.origin,
        generation: record.generation,
    })
}

/// The original's rule, with the plan's optional `autosign` password.
fn plan_password(
    data_dir: &Path,
    plan: &str,
    given: Option<String>,
    require_challenge: bool,
) -> Result<Proof, String> {
    let autosign_path = data_dir.join("current/autosign.json");
    let autosign: Value = read_json(&autosign_path)?;
    let entry = &autosign["plans"][plan];
    if entry.is_null() {
        if require_challenge {
            return Err(format!(
                "plan '{plan}' has no `{}` credential and a challenge password is required (--require-challenge)",
                crate::hiera::AUTOSIGN_CREDENTIAL
            ));
        }
        return Ok(Proof::NodeName);
    }
    if let Some(error) = entry["error"].as_str() {
        return Err(format!("plan '{plan}': {error}"));
    }
    let expected = entry["sha256"]
        .as_str()
        .ok_or_else(|| format!("{}: plan '{plan}' has no hash", autosign_path.display()))?;
    let given = given.ok_or_else(|| {
        format!("plan '{plan}' requires a challenge password and the request carries none")
    })?;
    if !challenge::same(&challenge_hash(plan, &given), expected) {
        return Err(format!(
            "the request's challenge password is not plan '{plan}''s"
        ));
    }
    Ok(Proof::PlanPassword)
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

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))
}
