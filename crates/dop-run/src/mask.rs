//! Secrets out of log text: the plan's passwords and any private key block become `****`.

/// Replaces secrets in log text with `****`: the plan's passwords (literal or from a file;
/// programs are not run just for this). Secrets shorter than 4 characters are not masked: the
/// original masked them and garbled every log line that contained their letters.
#[derive(Clone, Debug, Default)]
pub struct Masker {
    secrets: Vec<String>,
}

/// Shortest secret that is masked.
pub const MIN_MASKED: usize = 4;

impl Masker {
    /// The masker for a plan's credentials.
    pub fn for_plan(plan: &dop_core::Plan) -> Masker {
        use dop_core::plan::{ContentSource, CredentialKind};
        let mut secrets: Vec<String> = plan
            .credentials
            .iter()
            .filter_map(|c| match &c.kind {
                CredentialKind::UsernamePassword { password, .. } => match password {
                    ContentSource::Literal(_) | ContentSource::File(_) => password.load().ok(),
                    ContentSource::Exec(_) => None,
                },
                _ => None,
            })
            .filter(|s| s.chars().count() >= MIN_MASKED)
            .collect();
        // Longer secrets first, so one that contains another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Masker { secrets }
    }

    /// The text with every secret replaced: the plan's passwords, and any private key block
    /// (`-----BEGIN … PRIVATE KEY-----` to its `-----END … PRIVATE KEY-----`, however it is
    /// indented or quoted).
    pub fn mask<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let mut out = std::borrow::Cow::Borrowed(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = std::borrow::Cow::Owned(out.replace(secret.as_str(), "****"));
            }
        }
        if out.contains("PRIVATE KEY-----") {
            out = std::borrow::Cow::Owned(mask_private_keys(&out));
        }
        out
    }
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

    #[test]
    fn secrets_are_masked_but_short_ones_are_not() {
        let masker = Masker {
            secrets: vec!["hunter2secret".into(), "hunter2".into()],
        };
        assert_eq!(
            masker.mask("pw=hunter2secret and hunter2"),
            "pw=**** and ****"
        );
        let plan = dop_core::load_str(
            "name: p\ninfrastructures: {l: {type: local}}\nnodes: {n: {infrastructure: l}}\n\
             credentials:\n  a: {type: username_password, username: u, password: 'sesame-42'}\n  \
             b: {type: username_password, username: u, password: 'p'}\n",
            None,
            &dop_core::LookupSettings::default(),
        )
        .plan
        .unwrap();
        let masker = Masker::for_plan(&plan);
        assert_eq!(masker.mask("open sesame-42 please"), "open **** please");
        assert_eq!(masker.mask("a plain p"), "a plain p");
        let key = "k: |\n  -----BEGIN OPENSSH PRIVATE KEY-----\n  b3BlbnNzaC1rZXk\n  -----END OPENSSH PRIVATE KEY-----\nafter";
        assert_eq!(
            masker.mask(key),
            "k: |\n  -----BEGIN OPENSSH PRIVATE KEY-----****-----END OPENSSH PRIVATE KEY-----\nafter"
        );
    }
}
