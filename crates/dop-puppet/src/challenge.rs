//! Per-node autosign challenges: the secret a node's certificate request must carry for
//! `dop-puppet-autosign` to sign it, issued once per deployment and good for one certificate.
//!
//! ```text
//! <hiera_dir>/autosign/<node>.json   the node's challenge: plan, generation, origin, salted
//!                                    SHA-256, when issued, when a certificate was signed with it
//! <hiera_dir>/autosign/.lock         one writer at a time (flock)
//! ```
//!
//! dopv issues a node's challenge when it creates the node (a redeploy issues a new one) and
//! hands the clear text to the node only (cloud-init or the local provider write Puppet's
//! `csr_attributes.yaml`); the operator issues one for a pre-provisioned node
//! (`dopi hiera challenge NODE`). Only the hash is kept here, and the clear text is never
//! logged. `dop-puppet-autosign` redeems it: it checks the request's challenge and records the
//! signing, so the same challenge never signs a second request.
//!
//! The directory is Puppet's side of the trust, beside the Hiera data (never the plan store):
//! the Puppet server reads it and writes the signing marks, so it needs the Puppet server's
//! group with write access (`chgrp puppet DIR; chmod 2770 DIR`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dop_core::time::{now_ms, rfc3339};
use serde::{Deserialize, Serialize};

/// Random bytes in a challenge (hex in the clear text).
const CHALLENGE_BYTES: usize = 32;

/// Why a challenge could not be issued, read or recorded.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    /// A file or directory of the challenges.
    #[error("the autosign challenges under {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No random bytes.
    #[error("cannot read random bytes from /dev/urandom: {0}")]
    Random(std::io::Error),
    /// A record that cannot be read.
    #[error("{path} is damaged: {message}; issue the node a new challenge (redeploy it with dopv, or `dopi hiera challenge NODE` for a pre-provisioned node)")]
    Damaged {
        /// The record.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A node name that cannot name a file.
    #[error("{0:?} is not a node name a challenge can be kept for")]
    Node(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ChallengeError + '_ {
    move |source| ChallengeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who issued a challenge, and so who may take it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// dopv, when it created the node (handed over at first boot).
    Dopv,
    /// The operator, for a machine dopv does not make (a node on a `baremetal`
    /// infrastructure).
    PreProvisioned,
}

/// A node's challenge as kept on disk: never the clear text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRecord {
    /// The plan the node was in when the challenge was issued.
    pub plan: String,
    /// The node (its certname).
    pub node: String,
    /// dopv's deployment generation of the node (for a pre-provisioned node, when it was
    /// issued, in milliseconds).
    pub generation: u64,
    /// Who issued it.
    pub origin: Origin,
    /// The salted SHA-256 of the challenge ([`challenge_hash`]).
    pub sha256: String,
    /// When it was issued (RFC 3339).
    pub issued_at: String,
    /// When `dop-puppet-autosign` signed a certificate request with it: it signs no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<String>,
}

/// Where a Puppet agent reads the attributes it puts into its certificate request.
pub const CSR_ATTRIBUTES_PATH: &str = "/etc/puppetlabs/puppet/csr_attributes.yaml";

/// Puppet's `csr_attributes.yaml` carrying `challenge` as the request's `challengePassword`
/// (quoted: a hex string of digits only would be read as a number).
pub fn csr_attributes(challenge: &str) -> String {
    format!(
        "# Written by dopv: this node's one-time Puppet autosign challenge.\n---\n\
         custom_attributes:\n  1.2.840.113549.1.9.7: \"{challenge}\"\n"
    )
}

/// The directory of the challenges under the Hiera data directory.
pub fn challenge_dir(hiera_dir: &Path) -> PathBuf {
    hiera_dir.join("autosign")
}

/// The salted hash of a node's challenge: bound to its plan, node and generation, so a record
/// copied to another node or generation matches nothing.
pub fn challenge_hash(plan: &str, node: &str, generation: u64, challenge: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!(
        "dop-autosign-node\0{plan}\0{node}\0{generation}\0{challenge}"
    ));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn record_path(dir: &Path, node: &str) -> Result<PathBuf, ChallengeError> {
    if node.is_empty()
        || node.starts_with('.')
        || node.contains('/')
        || node.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ChallengeError::Node(node.to_string()));
    }
    Ok(dir.join(format!("{node}.json")))
}

/// The challenges' directory, made (group-writable, for the Puppet server's marks) if missing,
/// and its lock held until the returned file is dropped.
fn locked(hiera_dir: &Path) -> Result<(PathBuf, File), ChallengeError> {
    let dir = challenge_dir(hiera_dir);
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o770)
            .create(&dir)
            .map_err(io(&dir))?;
        // The umask takes the group's write away; setgid keeps the parent's group (Puppet's).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2770))
            .map_err(io(&dir))?;
    }
    let lock_path = dir.join(".lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o660)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    Ok((dir, lock))
}

fn random_challenge() -> Result<String, ChallengeError> {
    let mut bytes = [0u8; CHALLENGE_BYTES];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(ChallengeError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Replaces a record in one rename. The temporary file is made new (`O_EXCL`), so a link
/// planted by a writer of the directory is never followed.
fn write_record(path: &Path, record: &ChallengeRecord) -> Result<(), ChallengeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        record.node,
        std::process::id(),
        now_ms()
    ));
    let written = File::options()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(&serde_json::to_vec_pretty(record).unwrap_or_default())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| File::open(dir)?.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io(path))
}

fn read_record(path: &Path) -> Result<Option<ChallengeRecord>, ChallengeError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ChallengeError::Damaged {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Issues `node` a new challenge, replacing any earlier one (whose certificate, if signed,
/// stays valid with Puppet: only the next request is affected). Returns the clear text, the
/// only time it exists outside the node.
pub fn issue(
    hiera_dir: &Path,
    plan: &str,
    node: &str,
    generation: u64,
    origin: Origin,
) -> Result<String, ChallengeError> {
    let (dir, _lock) = locked(hiera_dir)?;
    let path = record_path(&dir, node)?;
    let challenge = random_challenge()?;
    let record = ChallengeRecord {
        plan: plan.to_string(),
        node: node.to_string(),
        generation,
        origin,
        sha256: challenge_hash(plan, node, generation, &challenge),
        issued_at: rfc3339(now_ms()),
        signed_at: None,
    };
    write_record(&path, &record)?;
    Ok(challenge)
}

/// Takes back `node`'s challenge if `origin` issued it (dopv takes back only its own when it
/// destroys a node, never the operator's for a pre-provisioned machine).
pub fn revoke(hiera_dir: &Path, node: &str, origin: Origin) -> Result<(), ChallengeError> {
    let dir = challenge_dir(hiera_dir);
    if !dir.is_dir() {
        return Ok(());
    }
    let (dir, _lock) = locked(hiera_dir)?;
    let path = record_path(&dir, node)?;
    match read_record(&path) {
        Ok(Some(record)) if record.origin != origin => return Ok(()),
        Ok(None) => return Ok(()),
        // A damaged record is removed: it could never sign anything.
        Ok(Some(_)) | Err(ChallengeError::Damaged { .. }) => {}
        Err(e) => return Err(e),
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
        _ => Ok(()),
    }
}

/// `node`'s challenge record, if it has one.
pub fn read(hiera_dir: &Path, node: &str) -> Result<Option<ChallengeRecord>, ChallengeError> {
    read_record(&record_path(&challenge_dir(hiera_dir), node)?)
}

/// Why a request's challenge does not sign it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The challenges could not be read or the signing recorded.
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    /// Any other reason, said for Puppet's log.
    #[error("{0}")]
    Reason(String),
}

/// Checks `given` against `node`'s challenge for `plan` and, when it matches and was not used,
/// records the signing (durably, before the answer), all under the lock, so two requests at
/// once cannot both pass. Returns the record as it was issued.
pub fn redeem(
    hiera_dir: &Path,
    plan: &str,
    node: &str,
    given: Option<&str>,
) -> Result<ChallengeRecord, Refusal> {
    let reissue = |record: &ChallengeRecord| match record.origin {
        Origin::Dopv => format!("redeploy {node} with dopv to issue it a new one"),
        Origin::PreProvisioned => {
            format!("issue it a new one with `dopi hiera challenge {node}`")
        }
    };
    let dir = challenge_dir(hiera_dir);
    let path = record_path(&dir, node)?;
    if !path.exists() {
        return Err(Refusal::Reason(format!(
            "{node} has no autosign challenge: dopv has not deployed it (a node on a baremetal \
             infrastructure, made outside dopv, gets one with `dopi hiera challenge {node}`)"
        )));
    }
    let (_, _lock) = locked(hiera_dir)?;
    let Some(record) = read_record(&path)? else {
        return Err(Refusal::Reason(format!(
            "{node}'s autosign challenge was taken back while it was being checked"
        )));
    };
    if record.plan != plan {
        return Err(Refusal::Reason(format!(
            "{node}'s challenge was issued for plan '{}', and the node is in plan '{plan}' now; {}",
            record.plan,
            reissue(&record)
        )));
    }
    if let Some(signed_at) = &record.signed_at {
        return Err(Refusal::Reason(format!(
            "a certificate was signed for {node} at {signed_at} with the challenge it was issued \
             at {}, and a challenge signs one request; {}",
            record.issued_at,
            reissue(&record)
        )));
    }
    let given = given.ok_or_else(|| {
        Refusal::Reason(format!(
            "the request carries no challengePassword, and {node} needs the one it was issued \
             (Puppet's csr_attributes.yaml on the node)"
        ))
    })?;
    if !same(
        &challenge_hash(plan, node, record.generation, given),
        &record.sha256,
    ) {
        return Err(Refusal::Reason(format!(
            "the request's challengePassword is not the one {node} was issued at {}",
            record.issued_at
        )));
    }
    let signed = ChallengeRecord {
        signed_at: Some(rfc3339(now_ms())),
        ..record.clone()
    };
    write_record(&path, &signed)?;
    Ok(record)
}

/// Compares two hashes in time that does not depend on where they differ.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_signs_once_and_only_its_own_node_and_generation() {
        let tmp = tempfile::tempdir().unwrap();
        let hiera = tmp.path();
        let clear = issue(hiera, "shop", "web01", 7, Origin::Dopv).unwrap();
        assert_eq!(clear.len(), 2 * CHALLENGE_BYTES);
        let kept = std::fs::read_to_string(challenge_dir(hiera).join("web01.json")).unwrap();
        assert!(!kept.contains(&clear), "only the hash is kept: {kept}");
        let mode = std::fs::metadata(challenge_dir(hiera).join("web01.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);

        let wrong = redeem(hiera, "shop", "web01", Some("guess")).unwrap_err();
        assert!(
            wrong
                .to_string()
                .contains("is not the one web01 was issued"),
            "{wrong}"
        );
        let other_plan = redeem(hiera, "bank", "web01", Some(&clear)).unwrap_err();
        assert!(
            other_plan.to_string().contains("issued for plan 'shop'"),
            "{other_plan}"
        );
        let record = redeem(hiera, "shop", "web01", Some(&clear)).unwrap();
        assert_eq!((record.generation, record.origin), (7, Origin::Dopv));
        let again = redeem(hiera, "shop", "web01", Some(&clear)).unwrap_err();
        assert!(
            again
                .to_string()
                .contains("a challenge signs one request; redeploy web01 with dopv"),
            "{again}"
        );

        // An operator's challenge is not dopv's to take back; dopv's own is.
        issue(hiera, "shop", "metal01", 1, Origin::PreProvisioned).unwrap();
        revoke(hiera, "metal01", Origin::Dopv).unwrap();
        assert!(read(hiera, "metal01").unwrap().is_some());
        revoke(hiera, "web01", Origin::Dopv).unwrap();
        assert!(read(hiera, "web01").unwrap().is_none());
        assert!(matches!(
            issue(hiera, "shop", "../x", 1, Origin::Dopv),
            Err(ChallengeError::Node(_))
        ));
    }
}
