//! Secrets out of log text: the plan's secrets and any private key block become `****`.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use dop_core::plan::{ContentSource, CredentialKind, SecretLimits};

/// Replaces secrets in log text with `****`. Secrets shorter than 4 characters are not masked:
/// the original masked them and garbled every log line that contained their letters.
///
/// A secret of several lines (a private key, a keytab's base64) is also masked line by line,
/// since a log holds one line of output at a time; a keytab is masked in its base64 forms
/// (one line, and wrapped as `base64` and `openssl base64` print it). Clones share what they
/// mask, so a secret learnt during an execution is masked in every log of it from then on.
#[derive(Clone, Debug, Default)]
pub struct Masker {
    secrets: Arc<RwLock<Vec<String>>>,
    /// The text secrets resolved by [`Self::learn_sources`], so that a tool that needs one
    /// during the execution takes it from here instead of running its program again.
    resolved: Arc<RwLock<Vec<(ContentSource, String)>>>,
}

/// Shortest secret that is masked.
pub const MIN_MASKED: usize = 4;

/// Line widths a base64 tool wraps at: coreutils `base64` (76) and `openssl base64` (64).
const BASE64_WRAPS: [usize; 2] = [76, 64];

impl Masker {
    /// The masker of the secrets written in the plan itself: nothing is read or run, so it
    /// serves outside an execution (reading a plan).
    pub fn for_literals(plan: &dop_core::Plan) -> Masker {
        let masker = Masker::default();
        for (source, _) in secret_sources(plan) {
            if let ContentSource::Literal(value) = source {
                masker.learn(value);
            }
        }
        masker
    }

    /// The masker of an execution: every secret source of the plan resolved, files read and
    /// programs run as the execution's user, each within [`SecretLimits`]. Only an execution
    /// (dopi run, dopv, dopc's runner) calls this. A source that cannot be read is left out
    /// here; the step or provider that needs it reports why.
    pub fn for_execution(plan: &dop_core::Plan) -> Masker {
        let masker = Masker::default();
        masker.learn_sources(plan);
        masker
    }

    /// Resolves and learns every secret source of the plan (see [`Self::for_execution`]).
    pub fn learn_sources(&self, plan: &dop_core::Plan) {
        for (source, binary) in secret_sources(plan) {
            let Ok(bytes) = source.load_bytes_within(SecretLimits::default()) else {
                continue;
            };
            if binary {
                self.learn_binary(&bytes);
            }
            if let Ok(mut text) = String::from_utf8(bytes) {
                // As `ContentSource::load` gives it: one trailing newline removed.
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                self.learn(&text);
                if !matches!(source, ContentSource::Literal(_)) {
                    let mut resolved = self.resolved.write().unwrap_or_else(|p| p.into_inner());
                    resolved.push((source.clone(), text));
                }
            }
        }
    }

    /// The secret of `source` as this execution resolved it; else loaded now (within the
    /// default limits) and masked from now on. A program runs once per execution this way.
    pub fn load(&self, source: &ContentSource) -> Result<String, dop_core::plan::ContentError> {
        let known = {
            let resolved = self.resolved.read().unwrap_or_else(|p| p.into_inner());
            resolved
                .iter()
                .find(|(s, _)| s == source)
                .map(|(_, v)| v.clone())
        };
        if let Some(value) = known {
            return Ok(value);
        }
        let value = source.load()?;
        self.learn(&value);
        Ok(value)
    }

    /// Masks `secret` from now on: whole, and each of its lines (PEM markers, `-----…`, are
    /// not secret and stay readable).
    pub fn learn(&self, secret: &str) {
        let mut forms = vec![secret.to_string()];
        if secret.contains('\n') {
            forms.extend(
                secret
                    .lines()
                    .map(|l| l.trim_end_matches('\r').trim())
                    .filter(|l| !l.starts_with("-----"))
                    .map(str::to_string),
            );
        }
        let mut secrets = self.secrets.write().unwrap_or_else(|p| p.into_inner());
        for form in forms {
            if form.chars().count() >= MIN_MASKED && !secrets.contains(&form) {
                secrets.push(form);
            }
        }
        // Longer secrets first, so one that contains another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// Masks a binary secret (a keytab) in the forms it can take in a log line: its base64,
    /// on one line and wrapped.
    fn learn_binary(&self, bytes: &[u8]) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        for width in BASE64_WRAPS {
            let wrapped: Vec<&str> = encoded
                .as_bytes()
                .chunks(width)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            self.learn(&wrapped.join("\n"));
        }
        self.learn(&encoded);
    }

    /// The longest secret of one line masked, in bytes (0 without any): how far past a cut in
    /// a line a secret begun before the cut can reach. (A secret of several lines never spans
    /// a cut whole: its lines are masked one by one.)
    pub fn longest_on_one_line(&self) -> usize {
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        secrets
            .iter()
            .find(|s| !s.contains('\n'))
            .map_or(0, String::len)
    }

    /// Where to cut `text` at `at` or before so that the cut splits no secret: `at`, or the
    /// start of the earliest secret that would cross it (0 when one starts at the beginning
    /// and is longer than `at`). `text` must reach [`Self::longest_on_one_line`]` - 1` bytes
    /// past `at`, or to the end of its line, for a secret crossing the cut to be seen. Each
    /// piece is then masked on its own, so a secret cut in two would escape the masking.
    pub fn cut_outside_secrets(&self, text: &[u8], at: usize) -> usize {
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        let mut cut = at.min(text.len());
        // Moving the cut back can make it cross another secret: again until none crosses.
        loop {
            let before = cut;
            for secret in secrets.iter().map(String::as_bytes) {
                let first = cut.saturating_sub(secret.len() - 1);
                if let Some(start) = (first..cut).find(|&s| text[s..].starts_with(secret)) {
                    cut = start;
                }
            }
            if cut == before {
                return cut;
            }
        }
    }

    /// The text with every secret replaced, and any private key block
    /// (`-----BEGIN … PRIVATE KEY-----` to its `-----END … PRIVATE KEY-----`, however it is
    /// indented or quoted).
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), "****"));
            }
        }
        if out.contains("PRIVATE KEY-----") {
            out = Cow::Owned(mask_private_keys(&out));
        }
        out
    }

    /// One line of a stream of lines masked; `in_key` carries, from line to line, that a
    /// private key block began (any key, not only the plan's: `cat` of a key file prints it one
    /// line at a time) and every line up to its END marker is masked whole.
    pub fn mask_line<'a>(&self, line: &'a str, in_key: &mut bool) -> Cow<'a, str> {
        if *in_key {
            if line.contains("-----END ") {
                *in_key = false;
                return Cow::Borrowed(line);
            }
            return Cow::Borrowed("****");
        }
        let masked = self.mask(line);
        if let Some(begin) = masked.rfind("-----BEGIN ") {
            let rest = &masked[begin..];
            *in_key = rest.contains("PRIVATE KEY-----") && !rest.contains("-----END ");
        }
        masked
    }
}

/// Every secret source of the plan's credentials, each with whether it is binary (a keytab).
fn secret_sources(plan: &dop_core::Plan) -> Vec<(&ContentSource, bool)> {
    plan.credentials
        .iter()
        .filter_map(|c| match &c.kind {
            CredentialKind::UsernamePassword { password, .. } => Some((password, false)),
            CredentialKind::Kerberos { keytab, .. } => keytab.as_ref().map(|k| (k, true)),
            CredentialKind::SshKey { private_key, .. } => private_key.as_ref().map(|k| (k, false)),
        })
        .collect()
}

/// Replaces the body of every private key block with `****`, keeping its markers.
fn mask_private_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(begin) = rest.find("-----BEGIN ") {
        let Some(header_end) = rest[begin..]
            .find("PRIVATE KEY-----")
            .map(|i| begin + i + 16)
        else {
            break;
        };
        out.push_str(&rest[..header_end]);
        match rest[header_end..].find("-----END ") {
            Some(end) => {
                out.push_str("****");
                rest = &rest[header_end + end..];
                // Past the END marker, so the loop does not find it again.
                let marker_end = rest.find("KEY-----").map_or(rest.len(), |i| i + 8);
                out.push_str(&rest[..marker_end]);
                rest = &rest[marker_end..];
            }
            None => {
                // A key without its end: mask everything after the header.
                out.push_str("****");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(credentials: &str) -> dop_core::Plan {
        dop_core::load_str(
            &format!(
                "name: p\ninfrastructures: {{l: {{type: local}}}}\nnodes: {{n: {{infrastructure: l}}}}\n\
                 credentials:\n{credentials}"
            ),
            None,
            &dop_core::LookupSettings::default(),
        )
        .plan
        .expect("a valid plan")
    }

    #[test]
    fn secrets_are_masked_but_short_ones_are_not() {
        let masker = Masker::default();
        masker.learn("hunter2");
        masker.learn("hunter2secret");
        assert_eq!(
            masker.mask("pw=hunter2secret and hunter2"),
            "pw=**** and ****"
        );
        let masker = Masker::for_literals(&plan(
            "  a: {type: username_password, username: u, password: 'sesame-42'}\n  \
             b: {type: username_password, username: u, password: 'p'}\n",
        ));
        assert_eq!(masker.mask("open sesame-42 please"), "open **** please");
        assert_eq!(masker.mask("a plain p"), "a plain p");
        let key = "k: |\n  -----BEGIN OPENSSH PRIVATE KEY-----\n  b3BlbnNzaC1rZXk\n  -----END OPENSSH PRIVATE KEY-----\nafter";
        assert_eq!(
            masker.mask(key),
            "k: |\n  -----BEGIN OPENSSH PRIVATE KEY-----****-----END OPENSSH PRIVATE KEY-----\nafter"
        );
    }

    #[test]
    fn a_cut_is_moved_before_any_secret_it_would_split() {
        let masker = Masker::default();
        masker.learn("s3cret");
        masker.learn("et-and-more");
        masker.learn("two\nlines-long");
        assert_eq!(masker.longest_on_one_line(), "et-and-more".len());
        let text = b"0123456789s3cret-and-more";
        // Clear of secrets: the cut stays.
        assert_eq!(masker.cut_outside_secrets(text, 10), 10);
        assert_eq!(masker.cut_outside_secrets(text, 5), 5);
        // Inside `s3cret`: before it. Before `et-and-more` it would split `s3cret`, so the
        // cut goes back before both.
        assert_eq!(masker.cut_outside_secrets(text, 12), 10);
        assert_eq!(masker.cut_outside_secrets(text, 20), 10);
        // A secret at the start longer than the piece cannot be kept whole.
        assert_eq!(masker.cut_outside_secrets(b"s3cret", 3), 0);
        assert_eq!(Masker::default().cut_outside_secrets(text, 12), 12);
    }

    #[test]
    fn a_literal_masker_reads_no_file_and_runs_no_program() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let plan = plan(&format!(
            "  a: {{type: username_password, username: u, password: {{exec: ['/usr/bin/touch', '{}']}}}}\n",
            marker.display()
        ));
        Masker::for_literals(&plan);
        assert!(!marker.exists());
        // Inside an execution the program runs (as the execution's user, within limits), once:
        // a tool that needs the secret later takes what it gave.
        let masker = Masker::for_execution(&plan);
        assert!(marker.exists());
        std::fs::remove_file(&marker).unwrap();
        let CredentialKind::UsernamePassword { password, .. } = &plan.credentials[0].kind else {
            unreachable!("a username_password credential")
        };
        assert_eq!(masker.load(password).unwrap(), "");
        assert!(!marker.exists(), "the program ran again");
    }

    #[test]
    fn an_executions_secrets_from_files_and_programs_are_masked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let masker = Masker::for_execution(&plan(&format!(
            "  a: {{type: username_password, username: u, password: {{file: '{}'}}}}\n  \
             b: {{type: username_password, username: u, password: {{exec: ['/bin/echo', 'from-a-program']}}}}\n",
            file.display()
        )));
        assert_eq!(masker.mask("from-a-file from-a-program"), "**** ****");
    }

    #[test]
    fn a_private_key_printed_line_by_line_is_masked() {
        let body = [
            "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
            "AAAAMwAAAAtzc2gtZWQyNTUxOQAAACDx",
        ];
        let key = format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n{}\n-----END OPENSSH PRIVATE KEY-----",
            body[0], body[1]
        );
        // The plan's key: each line masked on its own.
        let masker = Masker::default();
        masker.learn(&key);
        assert_eq!(masker.mask(body[1]), "****");
        // Any key: the lines after BEGIN are masked up to END.
        let masker = Masker::default();
        let mut in_key = false;
        let shown: Vec<String> = key
            .lines()
            .chain(["after"])
            .map(|l| masker.mask_line(l, &mut in_key).into_owned())
            .collect();
        assert_eq!(
            shown,
            [
                // A BEGIN without its END in the same text: the rest of it is masked.
                "-----BEGIN OPENSSH PRIVATE KEY-----****",
                "****",
                "****",
                "-----END OPENSSH PRIVATE KEY-----",
                "after"
            ]
        );
    }

    #[test]
    fn a_keytab_is_masked_in_its_base64_forms() {
        let dir = tempfile::tempdir().unwrap();
        let keytab = dir.path().join("krb5.keytab");
        let bytes: Vec<u8> = (0..200u32).map(|i| (i * 37 % 256) as u8).collect();
        std::fs::write(&keytab, &bytes).unwrap();
        let masker = Masker::for_execution(&plan(&format!(
            "  k: {{type: kerberos, realm: EXAMPLE.COM, keytab: {{file: '{}'}}}}\n",
            keytab.display()
        )));
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(masker.mask(&format!("x {encoded} y")), "x **** y");
        for width in BASE64_WRAPS {
            for line in encoded.as_bytes().chunks(width) {
                let line = std::str::from_utf8(line).unwrap();
                assert_eq!(masker.mask(line), "****", "a line {width} wide");
            }
        }
    }
}
