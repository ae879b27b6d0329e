//! A YAML tree that remembers where every value came from, read with the YAML 1.1 rules of
//! Ruby's Psych so that plans written for the original tools mean the same thing here.
//!
//! serde_yaml gives neither positions nor the 1.1 scalar rules (`yes`, `on`, `0777`, `:symbol`),
//! so plans are read from the event stream of `yaml-rust2` and every scalar is resolved here.
//! The builder is iterative and bounded: nesting depth, alias expansion and document count all
//! have limits, so hostile input yields an error instead of a stack overflow or a hang.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// Deepest nesting of sequences and mappings a plan may use.
pub const MAX_DEPTH: usize = 128;
/// Most values a document may hold once aliases are expanded (guards against "billion laughs").
pub const MAX_VALUES: usize = 5_000_000;
/// Most bytes of scalar text a document may hold once aliases are expanded. Counting values is
/// not enough: an alias of a 1 MiB scalar is one value, and every alias is a deep copy.
pub const MAX_EXPANDED_BYTES: usize = 64 << 20;

/// What a value brings into the document when it is copied: values and bytes of scalar text.
#[derive(Clone, Copy, Debug, Default)]
struct Size {
    values: usize,
    bytes: usize,
}

/// A position in the text that was parsed: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    /// Line, starting at 1.
    pub line: u32,
    /// Column, starting at 1.
    pub column: u32,
}

/// A YAML value with the position of its first character.
#[derive(Clone, Debug, PartialEq)]
pub struct Yaml {
    /// The value.
    pub value: Value,
    /// Where it starts.
    pub mark: Mark,
}

/// The YAML 1.1 data model as Psych builds it, less the Ruby classes plans never use.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `~`, `null`, an empty value.
    Null,
    /// `true`, `yes`, `on` and their opposites, case-insensitive.
    Bool(bool),
    /// Decimal, octal (`0777`), hex (`0x1f`), binary (`0b11`) with optional `_` separators.
    Int(i64),
    /// A float in the YAML 1.1 form (a dot is required), `.inf`, `.nan`.
    Float(f64),
    /// A string.
    Str(String),
    /// A plain scalar written `:name`: a Ruby symbol. Holds the name without the colon.
    Sym(String),
    /// A sequence.
    Seq(Vec<Yaml>),
    /// A mapping, in document order, with duplicate keys already merged (later wins).
    Map(Vec<(Yaml, Yaml)>),
}

/// Why a text could not be read as YAML.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    /// What went wrong.
    pub message: String,
    /// Where, when known.
    pub mark: Option<Mark>,
}

/// A duplicate mapping key, reported as a warning by the plan loader.
#[derive(Clone, Debug, PartialEq)]
pub struct DuplicateKey {
    /// The key as written.
    pub key: String,
    /// Where the later (winning) occurrence starts.
    pub mark: Mark,
}

/// The result of reading a document.
#[derive(Debug)]
pub struct Document {
    /// The root value (`Null` for an empty document).
    pub root: Yaml,
    /// Keys that occurred twice in one mapping.
    pub duplicate_keys: Vec<DuplicateKey>,
}

impl Yaml {
    /// The string of a `Str` or `Sym` value.
    pub fn as_str_or_sym(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) | Value::Sym(s) => Some(s),
            _ => None,
        }
    }

    /// The string of a `Str` value.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries of a mapping.
    pub fn as_map(&self) -> Option<&[(Yaml, Yaml)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// True for `~`, `null` and empty values.
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The value of `key` in a mapping, where `key` may be written as a string or a `:symbol`
    /// (the original symbolises the keys of every plan object).
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        self.as_map()?
            .iter()
            .rev()
            .find(|(k, _)| k.as_str_or_sym() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short description of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        self.value.type_name()
    }

    /// Converts to JSON. Symbols become plain strings, mapping keys become their text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) | Value::Sym(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Yaml::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.key_text(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The text of a mapping key: strings and symbols as written (without the colon), numbers
    /// and booleans the way Ruby's `to_s` prints them.
    pub fn key_text(&self) -> String {
        match &self.value {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) | Value::Sym(s) => s.clone(),
            Value::Seq(_) | Value::Map(_) => format!("<{}>", self.type_name()),
        }
    }

    /// The value rendered compactly for messages (`'text'`, `42`, `[...]`).
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "nothing".to_string(),
            Value::Str(s) => format!("'{s}'"),
            Value::Sym(s) => format!(":{s}"),
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
            _ => self.key_text(),
        }
    }
}

impl Value {
    /// A short description of the type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Sym(_) => "symbol",
            Value::Seq(_) => "list",
            Value::Map(_) => "mapping",
        }
    }
}

/// Reads one YAML document. An empty text is a `Null` document.
pub fn parse(text: &str) -> Result<Document, YamlError> {
    Builder::default().run(text)
}

/// A collection being built: its start and what it holds so far.
enum Open {
    Seq {
        anchor: usize,
        mark: Mark,
        items: Vec<Yaml>,
    },
    Map {
        anchor: usize,
        mark: Mark,
        entries: MapBuilder,
        pending_key: Option<Yaml>,
    },
}

/// The entries of a mapping being built, indexed by key so that large mappings (a plan's
/// `nodes`) are built in linear time.
#[derive(Default)]
struct MapBuilder {
    entries: Vec<(Yaml, Yaml)>,
    index: HashMap<String, usize>,
    /// Keys that came in through a `<<` merge; an explicit key may override them.
    merged: std::collections::HashSet<String>,
}

/// A key's identity: its type and text. Collections as keys are never merged.
fn fingerprint(key: &Value) -> Option<String> {
    Some(match key {
        Value::Null => "n:".to_string(),
        Value::Bool(b) => format!("b:{b}"),
        Value::Int(i) => format!("i:{i}"),
        Value::Float(f) => format!("f:{f}"),
        Value::Str(s) => format!("s:{s}"),
        Value::Sym(s) => format!("y:{s}"),
        Value::Seq(_) | Value::Map(_) => return None,
    })
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, (Yaml, Size)>,
    /// The document so far, aliases expanded.
    size: Size,
    duplicate_keys: Vec<DuplicateKey>,
    root: Option<Yaml>,
    documents: usize,
}

fn mark_of(m: &yaml_rust2::scanner::Marker) -> Mark {
    Mark {
        line: u32::try_from(m.line()).unwrap_or(u32::MAX),
        column: u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
    }
}

impl Builder {
    fn run(mut self, text: &str) -> Result<Document, YamlError> {
        let mut parser = Parser::new_from_str(text);
        loop {
            let (event, marker) = parser.next_token().map_err(|e| YamlError {
                message: format!("not valid YAML: {}", e.info()),
                mark: Some(mark_of(e.marker())),
            })?;
            let mark = mark_of(&marker);
            match event {
                Event::StreamEnd => break,
                Event::DocumentStart => {
                    self.documents += 1;
                    if self.documents > 1 {
                        return Err(YamlError {
                            message: "a plan file holds one YAML document, this one has more \
                                      (remove the second `---`)"
                                .to_string(),
                            mark: Some(mark),
                        });
                    }
                }
                Event::Scalar(text, style, anchor, tag) => {
                    let plain = style == TScalarStyle::Plain;
                    let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                    let value = if plain && !forced_str {
                        resolve_plain(text)
                    } else {
                        Value::Str(text)
                    };
                    let added = Size {
                        values: 1,
                        bytes: text_bytes(&value),
                    };
                    self.push(Yaml { value, mark }, anchor, added)?;
                }
                Event::SequenceStart(anchor, _) => {
                    self.open(Open::Seq {
                        anchor,
                        mark,
                        items: Vec::new(),
                    })?;
                }
                Event::MappingStart(anchor, _) => {
                    self.open(Open::Map {
                        anchor,
                        mark,
                        entries: MapBuilder::default(),
                        pending_key: None,
                    })?;
                }
                Event::SequenceEnd | Event::MappingEnd => self.close()?,
                Event::Alias(id) => {
                    let Some((_, size)) = self.anchors.get(&id) else {
                        return Err(YamlError {
                            message: "an alias refers to an anchor that is not defined".into(),
                            mark: Some(mark),
                        });
                    };
                    // Within the limits before the copy is made: the copy is what costs.
                    let size = *size;
                    self.count(size, mark)?;
                    let value = self.anchors[&id].0.clone();
                    self.push(value, 0, Size::default())?;
                }
                Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            }
        }
        Ok(Document {
            root: self.root.unwrap_or(Yaml {
                value: Value::Null,
                mark: Mark { line: 1, column: 1 },
            }),
            duplicate_keys: self.duplicate_keys,
        })
    }

    fn open(&mut self, open: Open) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            let mark = match &open {
                Open::Seq { mark, .. } | Open::Map { mark, .. } => *mark,
            };
            return Err(YamlError {
                message: format!("the YAML nests deeper than {MAX_DEPTH} levels"),
                mark: Some(mark),
            });
        }
        self.stack.push(open);
        Ok(())
    }

    fn close(&mut self) -> Result<(), YamlError> {
        let (mut value, anchor) = match self.stack.pop() {
            Some(Open::Seq {
                anchor,
                mark,
                items,
            }) => (
                Yaml {
                    value: Value::Seq(items),
                    mark,
                },
                anchor,
            ),
            Some(Open::Map {
                anchor,
                mark,
                entries,
                ..
            }) => (
                Yaml {
                    value: Value::Map(entries.entries),
                    mark,
                },
                anchor,
            ),
            None => return Ok(()),
        };
        // A block collection's start event is reported after its first key or item; point at
        // whichever comes first so messages about the whole collection name its first line.
        let first = match &value.value {
            Value::Map(entries) => entries.first().map(|(k, _)| k.mark),
            Value::Seq(items) => items.first().map(|i| i.mark),
            _ => None,
        };
        let same_line_before = |f: &Mark| f.line == value.mark.line && f.column < value.mark.column;
        if let Some(first) = first.filter(same_line_before) {
            value.mark = first;
        }
        // Its scalars were counted as they arrived; the collection itself counts as one.
        self.push(
            value,
            anchor,
            Size {
                values: 1,
                bytes: 0,
            },
        )
    }

    /// Counts what a value brings into the document, refusing it (at `mark`) beyond the limits.
    fn count(&mut self, added: Size, mark: Mark) -> Result<(), YamlError> {
        self.size.values += added.values;
        self.size.bytes += added.bytes;
        if self.size.values > MAX_VALUES {
            return Err(YamlError {
                message: format!(
                    "the document expands to more than {MAX_VALUES} values (are aliases \
                     referring to aliases?)"
                ),
                mark: Some(mark),
            });
        }
        if self.size.bytes > MAX_EXPANDED_BYTES {
            return Err(YamlError {
                message: format!(
                    "the document expands to more than {} MiB of text once aliases are \
                     expanded (every alias is a full copy; this one repeats {} bytes)",
                    MAX_EXPANDED_BYTES >> 20,
                    added.bytes
                ),
                mark: Some(mark),
            });
        }
        Ok(())
    }

    /// Adds a finished value to the collection being built. `added` is what it brings into the
    /// document besides what was counted already (an alias is counted before it is copied).
    fn push(&mut self, value: Yaml, anchor: usize, added: Size) -> Result<(), YamlError> {
        self.count(added, value.mark)?;
        if anchor != 0 {
            let size = size_of(&value);
            self.anchors.insert(anchor, (value.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Open::Seq { items, .. }) => items.push(value),
            Some(Open::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(value),
                Some(key) => entries.insert(key, value, &mut self.duplicate_keys),
            },
        }
        Ok(())
    }
}

/// Mappings with this many entries get a key index.
const INDEX_FROM: usize = 16;

impl MapBuilder {
    /// Indexes every entry; from then on all inserts go through the index.
    fn build_index(&mut self) {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if let Some(id) = fingerprint(&k.value) {
                self.index.entry(id).or_insert(i);
            }
        }
    }

    /// Gives an existing entry its new value: silently for a key that came from a merge (an
    /// explicit key overriding a merged one is what merges are for), else as a duplicate.
    fn replace(&mut self, at: usize, key: &Yaml, value: Yaml, duplicates: &mut Vec<DuplicateKey>) {
        let merged = fingerprint(&key.value).is_some_and(|id| self.merged.remove(&id));
        if !merged {
            duplicates.push(DuplicateKey {
                key: key.key_text(),
                mark: key.mark,
            });
        }
        self.entries[at].1 = value;
    }

    /// Inserts an entry the way a Ruby Hash does: a repeated key keeps its first position and
    /// takes the later value. `<<` merge keys bring in the entries the mapping lacks.
    fn insert(&mut self, key: Yaml, value: Yaml, duplicates: &mut Vec<DuplicateKey>) {
        if matches!(&key.value, Value::Str(k) if k == "<<") {
            let sources: Vec<&Yaml> = match &value.value {
                Value::Map(_) => vec![&value],
                Value::Seq(items) => items.iter().collect(),
                _ => Vec::new(),
            };
            if !sources.is_empty() && sources.iter().all(|s| s.as_map().is_some()) {
                self.build_index();
                for source in sources {
                    for (k, v) in source.as_map().unwrap_or_default() {
                        let Some(id) = fingerprint(&k.value) else {
                            continue;
                        };
                        if !self.index.contains_key(&id) {
                            self.index.insert(id.clone(), self.entries.len());
                            self.merged.insert(id);
                            self.entries.push((k.clone(), v.clone()));
                        }
                    }
                }
                return;
            }
        }
        // Small mappings (most of a plan) are searched; large ones (`nodes`) are indexed.
        if self.index.is_empty() && self.entries.len() < INDEX_FROM {
            match self.entries.iter().position(|(k, _)| k.value == key.value) {
                Some(at) => self.replace(at, &key, value, duplicates),
                None => self.entries.push((key, value)),
            }
            if self.entries.len() == INDEX_FROM {
                self.build_index();
            }
            return;
        }
        let Some(id) = fingerprint(&key.value) else {
            self.entries.push((key, value));
            return;
        };
        match self.index.get(&id) {
            Some(&at) => self.replace(at, &key, value, duplicates),
            None => {
                self.index.insert(id, self.entries.len());
                self.entries.push((key, value));
            }
        }
    }
}

/// The bytes of text a scalar holds (strings and symbols; numbers and the like are small).
fn text_bytes(value: &Value) -> usize {
    match value {
        Value::Str(s) | Value::Sym(s) => s.len(),
        _ => 0,
    }
}

/// What a copy of `value` brings into the document.
fn size_of(value: &Yaml) -> Size {
    // Iterative so that a deep tree cannot exhaust the stack.
    let mut size = Size::default();
    let mut todo = vec![value];
    while let Some(v) = todo.pop() {
        size.values += 1;
        size.bytes += text_bytes(&v.value);
        match &v.value {
            Value::Seq(items) => todo.extend(items),
            Value::Map(entries) => {
                for (k, val) in entries {
                    todo.push(k);
                    todo.push(val);
                }
            }
            _ => {}
        }
    }
    size
}

/// Resolves a plain scalar with the YAML 1.1 rules Psych applies. A string keeps the text
/// it was given (no copy).
fn resolve_plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        _ => {}
    }
    let is = |word: &str| text.eq_ignore_ascii_case(word);
    if is("true") || is("yes") || is("on") {
        return Value::Bool(true);
    }
    if is("false") || is("no") || is("off") {
        return Value::Bool(false);
    }
    if let Some(name) = text.strip_prefix(':') {
        if !name.is_empty() && !name.starts_with(':') && !name.contains(' ') {
            return Value::Sym(name.to_string());
        }
    }
    // Numbers start with a sign, a digit or a dot; most plain scalars (names, paths) do not.
    if text
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.'))
    {
        if let Some(i) = resolve_int(&text) {
            return Value::Int(i);
        }
        if let Some(f) = resolve_float(&text) {
            return Value::Float(f);
        }
    }
    Value::Str(text)
}

fn resolve_int(text: &str) -> Option<i64> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = body.strip_prefix("0x") {
        (16, hex)
    } else if let Some(bin) = body.strip_prefix("0b") {
        (2, bin)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() || body.starts_with('_') {
        return None;
    }
    let magnitude = i64::from_str_radix(&digits, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

fn resolve_float(text: &str) -> Option<f64> {
    let body = text.trim_start_matches(['-', '+']);
    match body {
        ".inf" | ".Inf" | ".INF" => {
            return Some(if text.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            })
        }
        ".nan" | ".NaN" | ".NAN" if body.len() == text.len() => return Some(f64::NAN),
        _ => {}
    }
    // YAML 1.1 floats need a dot: `1.5`, `.5`, `1.`, `1.5e+3`.
    if text.len() - body.len() > 1 || !body.contains('.') {
        return None;
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let mantissa_ok = mantissa
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '_')
        && mantissa.chars().filter(|c| *c == '.').count() == 1
        && !mantissa.starts_with('_');
    let exponent_ok = exponent.is_none_or(|e| {
        let digits = e.trim_start_matches(['-', '+']);
        e.len() - digits.len() == 1
            && !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit())
    });
    if !mantissa_ok || !exponent_ok || mantissa == "." {
        return None;
    }
    text.replace('_', "").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Value {
        parse(text).unwrap().root.value
    }

    #[test]
    fn scalars_follow_yaml_1_1() {
        assert_eq!(resolve_plain("yEs".into()), Value::Bool(true));
        assert_eq!(resolve_plain("off".into()), Value::Bool(false));
        assert_eq!(resolve_plain("y".into()), Value::Str("y".into()));
        assert_eq!(resolve_plain("0777".into()), Value::Int(511));
        assert_eq!(resolve_plain("0x1f".into()), Value::Int(31));
        assert_eq!(resolve_plain("1_000".into()), Value::Int(1000));
        assert_eq!(resolve_plain("08".into()), Value::Str("08".into()));
        assert_eq!(resolve_plain("-5".into()), Value::Int(-5));
        assert_eq!(resolve_plain("1.5".into()), Value::Float(1.5));
        assert_eq!(resolve_plain("1e3".into()), Value::Str("1e3".into()));
        assert_eq!(resolve_plain("1.5e+3".into()), Value::Float(1500.0));
        assert_eq!(
            resolve_plain(":ssh_key".into()),
            Value::Sym("ssh_key".into())
        );
        assert_eq!(resolve_plain("~".into()), Value::Null);
        // Numbers start with a sign, a digit or a dot; nothing else is tried as one.
        assert_eq!(resolve_plain(".5".into()), Value::Float(0.5));
        assert_eq!(resolve_plain("+12".into()), Value::Int(12));
        assert_eq!(
            resolve_plain("-.inf".into()),
            Value::Float(f64::NEG_INFINITY)
        );
        assert!(matches!(resolve_plain(".NaN".into()), Value::Float(f) if f.is_nan()));
        assert_eq!(resolve_plain("x12".into()), Value::Str("x12".into()));
        assert_eq!(resolve_plain("_1".into()), Value::Str("_1".into()));
        assert_eq!(resolve_plain("1..10".into()), Value::Str("1..10".into()));
        assert_eq!(
            resolve_plain("10.0.0.1".into()),
            Value::Str("10.0.0.1".into())
        );
        assert_eq!(
            resolve_plain("9223372036854775808".into()),
            Value::Str("9223372036854775808".into())
        );
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        assert_eq!(root("'yes'"), Value::Str("yes".into()));
        assert_eq!(root("\":x\""), Value::Str(":x".into()));
        assert_eq!(root("!!str 12"), Value::Str("12".into()));
    }

    #[test]
    fn marks_are_one_based() {
        let doc = parse("a:\n  b: 1\n").unwrap();
        let b = doc.root.get("a").unwrap().get("b").unwrap();
        assert_eq!(b.mark, Mark { line: 2, column: 6 });
    }

    #[test]
    fn merge_keys_and_duplicates() {
        let doc =
            parse("base: &b {x: 1, y: 2}\nn:\n  w: 0\n  <<: *b\n  y: 3\n  y: 4\n  w: 5\n").unwrap();
        let n = doc.root.get("n").unwrap();
        assert_eq!(n.get("x").unwrap().value, Value::Int(1));
        assert_eq!(n.get("y").unwrap().value, Value::Int(4));
        assert_eq!(n.get("w").unwrap().value, Value::Int(5));
        assert_eq!(n.as_map().unwrap().len(), 3);
        let keys: Vec<&str> = doc.duplicate_keys.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["y", "w"]);
    }

    #[test]
    fn large_mappings_keep_first_positions_and_report_duplicates() {
        let mut text: String = (0..40).map(|i| format!("k{i}: {i}\n")).collect();
        text.push_str("k3: again\nk39: last\n");
        let doc = parse(&text).unwrap();
        let map = doc.root.as_map().unwrap();
        assert_eq!(map.len(), 40);
        assert_eq!(map[3].1.value, Value::Str("again".into()));
        assert_eq!(map[39].1.value, Value::Str("last".into()));
        assert_eq!(doc.duplicate_keys.len(), 2);
    }

    #[test]
    fn symbol_keys_are_found_by_name() {
        let doc = parse(":name: x\n").unwrap();
        assert_eq!(doc.root.get("name").unwrap().as_str(), Some("x"));
    }

    #[test]
    fn deep_nesting_is_an_error() {
        let flow = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(parse(&flow).is_err());
        let block: String = (0..MAX_DEPTH + 5)
            .map(|depth| format!("{}k{depth}:\n", " ".repeat(depth)))
            .collect();
        let err = parse(&block).unwrap_err();
        assert!(err.message.contains("nests deeper"), "{err:?}");
    }

    #[test]
    fn billion_laughs_is_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, \
                 *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("expands to more than"), "{err:?}");
    }

    #[test]
    fn aliases_of_large_scalars_are_bounded_in_bytes() {
        // 1 MiB scalars repeated by aliases: few values, gigabytes of copies if expanded.
        let big = "x".repeat(1 << 20);
        let mut text = format!("big: &big {big}\nmany:\n");
        for _ in 0..100_000 {
            text.push_str("  - *big\n");
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("MiB of text"), "{err:?}");
        assert!(err.message.contains("repeats 1048576 bytes"), "{err:?}");
        // The alias past the limit is named: the scalar, its two keys and 62 copies fit; the
        // 63rd copy (on line 2 + 63) would pass 64 MiB.
        assert_eq!(err.mark.unwrap().line, 2 + 63, "{err:?}");
        // Below the limit the aliases are expanded as before.
        let small = format!("big: &big {big}\nmany: [*big, *big]\n");
        let doc = parse(&small).unwrap();
        let Value::Seq(many) = &doc.root.get("many").unwrap().value else {
            panic!("a sequence: {doc:?}");
        };
        assert_eq!(many[1].as_str().map(str::len), Some(1 << 20));
    }

    #[test]
    fn second_document_is_refused() {
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(err.message.contains("one YAML document"), "{err:?}");
        assert_eq!(err.mark.unwrap().line, 2);
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.mark.is_some());
    }
}
