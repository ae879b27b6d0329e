//! Node-name, role and plugin patterns: an exact name or a `/regex/`, lists of them, and the
//! `all` keyword, read from plans and from command-line flags the same way.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One pattern: an exact string or an unanchored regular expression.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// Matches only this exact string.
    Exact(String),
    /// Matches any string in which the expression is found (no implicit anchors, as before).
    Regex(Regex),
}

/// Why a pattern is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the pattern '{pattern}' is not a valid regular expression: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What the regex engine said (look-around and back-references are not supported).
    pub reason: String,
}

impl Pattern {
    /// Reads a pattern: a string that starts and ends with `/` (and is longer than `/`) is a
    /// regular expression, anything else an exact name.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        match text.strip_prefix('/').and_then(|t| t.strip_suffix('/')) {
            Some(body) if text.len() >= 2 => {
                Regex::new(body)
                    .map(Pattern::Regex)
                    .map_err(|e| PatternError {
                        pattern: text.to_string(),
                        reason: regex_reason(&e),
                    })
            }
            _ => Ok(Pattern::Exact(text.to_string())),
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(s) => s == value,
            Pattern::Regex(re) => re.is_match(value),
        }
    }
}

/// The last line of the regex crate's message, which says what is wrong.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .map(|l| {
            l.trim_start()
                .trim_start_matches("error:")
                .trim()
                .to_string()
        })
        .unwrap_or(text)
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(s) => f.write_str(s),
            Pattern::Regex(re) => write!(f, "/{}/", re.as_str()),
        }
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::Exact(a), Pattern::Exact(b)) => a == b,
            (Pattern::Regex(a), Pattern::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pattern, D::Error> {
        let text = String::deserialize(d)?;
        Pattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What a filter key selects: everything, or whatever matches one of the patterns (nothing
/// when the list is empty). Serialised as `"all"` or a list of pattern strings.
#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    /// The `all` keyword.
    All,
    /// Patterns, any of which selects.
    List(Vec<Pattern>),
}

impl Default for Selector {
    fn default() -> Selector {
        Selector::List(Vec::new())
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Selector::All => s.serialize_str("all"),
            Selector::List(l) => l.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Selector, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Keyword(String),
            List(Vec<Pattern>),
        }
        match Form::deserialize(d)? {
            Form::Keyword(k) if k == "all" => Ok(Selector::All),
            Form::Keyword(k) => Err(serde::de::Error::custom(format!(
                "expected 'all' or a list of patterns, found '{k}'"
            ))),
            Form::List(l) => Ok(Selector::List(l)),
        }
    }
}

impl Selector {
    /// True when it selects nothing.
    pub fn is_none(&self) -> bool {
        match self {
            Selector::All => false,
            Selector::List(l) => l.is_empty(),
        }
    }

    /// The patterns (none for `All`).
    pub fn patterns(&self) -> &[Pattern] {
        match self {
            Selector::List(l) => l,
            _ => &[],
        }
    }

    /// Whether `value` is selected.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Selector::All => true,
            Selector::List(l) => l.iter().any(|p| p.matches(value)),
        }
    }

    /// True for the spellings of the `all` keyword: `all`, `All`, `ALL` (and `:all`).
    pub fn is_all_keyword(text: &str) -> bool {
        matches!(text, "all" | "All" | "ALL")
    }

    /// Reads a comma-separated command-line list. Commas inside a `/regex/` do not split it,
    /// and the single word `all` selects everything.
    pub fn parse_cli_list(text: &str) -> Result<Selector, PatternError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Selector::default());
        }
        if Selector::is_all_keyword(text) {
            return Ok(Selector::All);
        }
        split_cli_list(text)
            .into_iter()
            .map(Pattern::parse)
            .collect::<Result<_, _>>()
            .map(Selector::List)
    }
}

/// Splits `a,/b,c/,d` into `a`, `/b,c/`, `d`: a piece that starts with `/` runs to the next
/// `/` that ends the list or is followed by a comma.
fn split_cli_list(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = if rest.starts_with('/') {
            let bytes = rest.as_bytes();
            (1..bytes.len())
                .find(|&i| bytes[i] == b'/' && (i + 1 == bytes.len() || bytes[i + 1] == b','))
                .map(|i| i + 1)
                .unwrap_or_else(|| rest.find(',').unwrap_or(rest.len()))
        } else {
            rest.find(',').unwrap_or(rest.len())
        };
        let piece = rest[..end].trim();
        if !piece.is_empty() {
            pieces.push(piece);
        }
        rest = rest.get(end + 1..).unwrap_or("");
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_are_unanchored_searches() {
        let p = Pattern::parse("/web\\d+/").unwrap();
        assert!(p.matches("xweb01.example.com"));
        assert!(!p.matches("db01"));
        assert_eq!(Pattern::parse("/").unwrap(), Pattern::Exact("/".into()));
        assert!(Pattern::parse("//").unwrap().matches("anything"));
        assert!(Pattern::parse("/a/b/").unwrap().matches("xa/by"));
    }

    #[test]
    fn unsupported_regexes_say_why() {
        let err = Pattern::parse("/(?=x)/").unwrap_err();
        assert!(err.reason.contains("look-around"), "{err}");
        assert!(Pattern::parse("/][/").is_err());
    }

    #[test]
    fn cli_lists_keep_commas_inside_regexes() {
        assert_eq!(split_cli_list("a,/b,c/,d"), vec!["a", "/b,c/", "d"]);
        assert_eq!(split_cli_list("/x{1,2}/"), vec!["/x{1,2}/"]);
        assert_eq!(split_cli_list("a, b,,"), vec!["a", "b"]);
        assert_eq!(Selector::parse_cli_list("all").unwrap(), Selector::All);
        assert_eq!(Selector::parse_cli_list("").unwrap(), Selector::default());
    }

    #[test]
    fn selectors_round_trip_through_json() {
        let s = Selector::List(vec![
            Pattern::parse("/^w/").unwrap(),
            Pattern::parse("db").unwrap(),
        ]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"["/^w/","db"]"#);
        assert_eq!(serde_json::from_str::<Selector>(&json).unwrap(), s);
        assert_eq!(serde_json::to_string(&Selector::All).unwrap(), r#""all""#);
        assert_eq!(
            serde_json::from_str::<Selector>(r#""all""#).unwrap(),
            Selector::All
        );
    }
}
