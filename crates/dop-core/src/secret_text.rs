//! The secrets written in a plan's text masked by their position in the YAML, not by their
//! value: a secret spelled otherwise than its value (`'it''s'`, `"p\u0061ss"`, a block scalar)
//! is masked as well, and nothing is read or run to know it.

use std::ops::Range;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// What a masked secret reads as: a quoted scalar, so that the text stays valid YAML.
pub const MASKED_SCALAR: &str = "'****'";

/// The keys of a credential whose value is a secret.
const SECRET_KEYS: [&str; 3] = ["password", "keytab", "private_key"];

/// The plan text with every secret written in it (`credentials.<name>.password`, `keytab`,
/// `private_key` given as a string, directly or through an alias) replaced by
/// [`MASKED_SCALAR`]. `None` when the text is not YAML the scanner reads: the caller must then
/// not show it as it is.
pub fn mask_secret_scalars(text: &str) -> Option<String> {
    let spans = secret_spans(text)?;
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        if span.start < at {
            continue; // the same anchored scalar, through two aliases
        }
        out.push_str(&text[at..span.start]);
        out.push_str(MASKED_SCALAR);
        at = span.end;
    }
    out.push_str(&text[at..]);
    Some(out)
}

/// A collection being read: the key it is the value of, whether it is a flow collection
/// (`{…}`, `[…]`), and for a mapping the key whose value comes next.
struct Frame {
    key: Option<String>,
    flow: bool,
    mapping: bool,
    pending_key: Option<Option<String>>,
}

/// The byte ranges of the secret scalars, in text order.
fn secret_spans(text: &str) -> Option<Vec<Range<usize>>> {
    // The scanner counts characters; the text is sliced in bytes.
    let bytes_at: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let byte = |char_index: usize| bytes_at.get(char_index).copied().unwrap_or(text.len());
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchored: std::collections::HashMap<usize, Range<usize>> = Default::default();
    let mut spans = Vec::new();
    // A scalar seen, whose end is known at the next event: (start, style, in a flow, secret, anchor).
    let mut open: Option<(usize, TScalarStyle, bool, bool, usize)> = None;
    loop {
        let (event, marker) = parser.next_token().ok()?;
        let here = byte(marker.index());
        if let Some((start, style, flow, secret, anchor)) = open.take() {
            let span = start..scalar_end(text, start, here.max(start), style, flow);
            if anchor > 0 {
                anchored.insert(anchor, span.clone());
            }
            if secret {
                spans.push(span);
            }
        }
        // Is the value this event starts a secret? (at credentials.<name>.<secret key>)
        let at_secret = |stack: &[Frame]| {
            stack.len() == 3
                && stack[1].key.as_deref() == Some("credentials")
                && stack[2]
                    .pending_key
                    .as_ref()
                    .is_some_and(|k| k.as_deref().is_some_and(|k| SECRET_KEYS.contains(&k)))
        };
        match event {
            Event::StreamEnd => break,
            Event::Scalar(value, style, anchor, _) => {
                let is_key = stack
                    .last()
                    .is_some_and(|f| f.mapping && f.pending_key.is_none());
                if is_key {
                    if let Some(top) = stack.last_mut() {
                        top.pending_key = Some(Some(value));
                    }
                    open = (anchor > 0).then_some((here, style, in_flow(&stack), false, anchor));
                } else {
                    let secret = at_secret(&stack);
                    value_of(&mut stack);
                    // A block scalar's mark is at its content: mask from its `|` or `>`.
                    let start = match style {
                        TScalarStyle::Literal | TScalarStyle::Folded => {
                            text[..here].rfind(['|', '>']).unwrap_or(here)
                        }
                        _ => here,
                    };
                    open = Some((start, style, in_flow(&stack), secret, anchor));
                }
            }
            Event::Alias(anchor) => {
                let is_key = stack
                    .last()
                    .is_some_and(|f| f.mapping && f.pending_key.is_none());
                if is_key {
                    if let Some(top) = stack.last_mut() {
                        top.pending_key = Some(None);
                    }
                } else {
                    if at_secret(&stack) {
                        spans.extend(anchored.get(&anchor).cloned());
                    }
                    value_of(&mut stack);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let mapping = matches!(event, Event::MappingStart(..));
                let is_key = stack
                    .last()
                    .is_some_and(|f| f.mapping && f.pending_key.is_none());
                let key = if is_key {
                    if let Some(top) = stack.last_mut() {
                        top.pending_key = Some(None);
                    }
                    None
                } else {
                    value_of(&mut stack)
                };
                let flow = matches!(text[here..].chars().next(), Some('{' | '['));
                stack.push(Frame {
                    key,
                    flow,
                    mapping,
                    pending_key: None,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    spans.sort_by_key(|s| s.start);
    Some(spans)
}

/// A value (not a key) of the innermost collection begins: for a mapping, the key it is the
/// value of (`None` for a key that is not a string), and the mapping expects its next key.
fn value_of(stack: &mut [Frame]) -> Option<String> {
    let top = stack.last_mut()?;
    if !top.mapping {
        return None;
    }
    top.pending_key.take().flatten()
}

fn in_flow(stack: &[Frame]) -> bool {
    stack.last().is_some_and(|f| f.flow)
}

/// Where a scalar that starts at `start` ends, the next token being at `next`: a quoted one
/// at its closing quote, a block or plain one at the last character before the next token
/// that is not a blank or a comment (a plain one in a flow collection also before `,]}`).
fn scalar_end(text: &str, start: usize, next: usize, style: TScalarStyle, flow: bool) -> usize {
    let region = &text[start..next];
    match style {
        TScalarStyle::SingleQuoted => {
            let mut chars = region.char_indices().skip(1).peekable();
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                        chars.next();
                    } else {
                        return start + i + 1;
                    }
                }
            }
            next
        }
        TScalarStyle::DoubleQuoted => {
            let mut chars = region.char_indices().skip(1);
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => return start + i + 1,
                    _ => {}
                }
            }
            next
        }
        _ => {
            let mut end = region.len();
            if flow && style == TScalarStyle::Plain {
                end = region.find([',', ']', '}']).unwrap_or(end);
            }
            start + content_end(&region[..end], style == TScalarStyle::Plain).max(1)
        }
    }
}

/// The end of the last line's content in `region`: trailing blanks dropped, and for a plain
/// scalar comments too (` #`: a `#` inside a plain scalar has no blank before it). A block
/// scalar has no comments inside: a comment line after it is masked with it, harmlessly.
fn content_end(region: &str, plain: bool) -> usize {
    let mut end = 0;
    let mut offset = 0;
    for line in region.split_inclusive('\n') {
        let mut content = line;
        if plain {
            if content.trim_start().starts_with('#') {
                content = "";
            } else if let Some(c) = content.find(" #").or_else(|| content.find("\t#")) {
                content = &content[..c];
            }
        }
        let kept = content.trim_end().len();
        if kept > 0 {
            end = offset + kept;
        }
        offset += line.len();
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str =
        "name: p\ninfrastructures: {l: {type: local}}\nnodes: {n: {infrastructure: l}}\n";

    /// The plan text with `credentials` appended, masked; and the plan it is still.
    fn masked(credentials: &str) -> String {
        let text = format!("{HEAD}credentials:\n{credentials}");
        let out = mask_secret_scalars(&text).expect("YAML");
        let loaded = crate::load_str(&out, None, &crate::LookupSettings::default());
        assert!(
            loaded.plan.is_some(),
            "the masked text is still a plan: {out}"
        );
        out.strip_prefix(HEAD).unwrap().to_string()
    }

    #[test]
    fn every_spelling_of_a_secret_is_masked() {
        // Quoted with an escaped quote, double-quoted with an escape, plain with a comment.
        assert_eq!(
            masked("  a: {type: username_password, username: u, password: 'it''s'}\n"),
            "credentials:\n  a: {type: username_password, username: u, password: '****'}\n"
        );
        assert_eq!(
            masked("  a:\n    type: username_password\n    username: u\n    password: \"p\\u0061ss\\\"w\" # note\n"),
            "credentials:\n  a:\n    type: username_password\n    username: u\n    password: '****' # note\n"
        );
        assert_eq!(
            masked("  a: {type: username_password, username: u, password: plain-pw}\n"),
            "credentials:\n  a: {type: username_password, username: u, password: '****'}\n"
        );
        assert_eq!(
            masked("  a:\n    type: username_password\n    password: plain pw # why\n    username: u\n"),
            "credentials:\n  a:\n    type: username_password\n    password: '****' # why\n    username: u\n"
        );
    }

    #[test]
    fn a_block_scalar_key_is_masked_whole() {
        let out = masked(
            "  k:\n    type: ssh_key\n    username: root\n    private_key: |\n      -----BEGIN OPENSSH PRIVATE KEY-----\n      b3BlbnNzaC1rZXk\n      -----END OPENSSH PRIVATE KEY-----\n    public_key: ssh-ed25519 AAAA\n",
        );
        assert_eq!(
            out,
            "credentials:\n  k:\n    type: ssh_key\n    username: root\n    private_key: '****'\n    public_key: ssh-ed25519 AAAA\n"
        );
    }

    #[test]
    fn a_secret_through_an_alias_is_masked_where_it_is_written() {
        let text = format!(
            "x-secret: &pw 'anchored-secret'\n{HEAD}credentials:\n  a: {{type: username_password, username: u, password: *pw}}\n"
        );
        let out = mask_secret_scalars(&text).unwrap();
        assert!(!out.contains("anchored-secret"), "{out}");
        assert!(out.starts_with("x-secret: &pw '****'\n"), "{out}");
    }

    #[test]
    fn names_and_other_values_stay() {
        let out = masked(
            "  password: {type: username_password, username: password, password: {file: /etc/hostname}}\n",
        );
        assert_eq!(
            out,
            "credentials:\n  password: {type: username_password, username: password, password: {file: /etc/hostname}}\n"
        );
    }
}
