//! Small typed readers shared by the plan parsers: each reads one value, reports what is
//! wrong with it at its path, and yields `None` when it cannot be used.

use crate::diagnostic::{join, Collector};
use crate::yaml::{Value, Yaml};

/// The value of `key` unless absent or null (the original treats both as "not given").
pub(crate) fn field<'y>(map: &'y Yaml, key: &str) -> Option<&'y Yaml> {
    map.get(key).filter(|v| !v.is_null())
}

/// Warns about every key of `map` that is not in `known`, suggesting the closest known key.
pub(crate) fn warn_unknown_keys(c: &mut Collector<'_>, map: &Yaml, path: &str, known: &[&str]) {
    let Some(entries) = map.as_map() else { return };
    for (key, _) in entries {
        let text = key.key_text();
        if known.contains(&text.as_str()) {
            continue;
        }
        let hint = closest(&text, known)
            .map(|k| format!("; did you mean '{k}'?"))
            .unwrap_or_else(|| "; it is ignored".to_string());
        c.warn(
            key,
            &join(path, &text),
            format!("unknown key '{text}'{hint}"),
        );
    }
}

/// The known word within edit distance 2 of `word`, if any.
fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A string (not a symbol, not a number).
pub(crate) fn string(c: &mut Collector<'_>, v: &Yaml, path: &str, what: &str) -> Option<String> {
    match &v.value {
        Value::Str(s) => Some(s.clone()),
        _ => {
            c.error(
                v,
                path,
                format!("{what} must be a string, not {}", v.describe()),
            );
            None
        }
    }
}

/// A non-empty string.
pub(crate) fn non_empty_string(
    c: &mut Collector<'_>,
    v: &Yaml,
    path: &str,
    what: &str,
) -> Option<String> {
    match &v.value {
        Value::Str(s) if !s.is_empty() => Some(s.clone()),
        _ => {
            c.error(
                v,
                path,
                format!("{what} must be a non-empty string, not {}", v.describe()),
            );
            None
        }
    }
}

/// A real YAML boolean: `true`/`false` (also `yes`/`no`/`on`/`off`); `'true'` and 1 are not.
pub(crate) fn boolean(c: &mut Collector<'_>, v: &Yaml, path: &str, what: &str) -> Option<bool> {
    match v.value {
        Value::Bool(b) => Some(b),
        _ => {
            c.error(
                v,
                path,
                format!("{what} must be true or false, not {}", v.describe()),
            );
            None
        }
    }
}

/// An integer (a quoted `'4'` is not).
pub(crate) fn integer(c: &mut Collector<'_>, v: &Yaml, path: &str, what: &str) -> Option<i64> {
    match v.value {
        Value::Int(i) => Some(i),
        _ => {
            c.error(
                v,
                path,
                format!("{what} must be a number, not {}", v.describe()),
            );
            None
        }
    }
}

/// A mapping; `what` names it in the message.
pub(crate) fn mapping<'y>(
    c: &mut Collector<'_>,
    v: &'y Yaml,
    path: &str,
    what: &str,
) -> Option<&'y [(Yaml, Yaml)]> {
    match v.as_map() {
        Some(m) => Some(m),
        None => {
            c.error(
                v,
                path,
                format!("{what} must be a mapping, not {}", v.describe()),
            );
            None
        }
    }
}

/// The entries of a mapping of names to definitions (`networks`, `interfaces`, …): each string
/// name with its mapping and path. Entries with another kind of name or a definition that is not
/// a mapping are reported and left out.
pub(crate) fn named_mappings<'y>(
    c: &mut Collector<'_>,
    v: &'y Yaml,
    path: &str,
    what: &str,
    entry: &str,
) -> Vec<(&'y str, &'y Yaml, String)> {
    let Some(entries) = mapping(c, v, path, what) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(entries.len());
    for (key, def) in entries {
        let Some(name) = key.as_str() else {
            c.error(
                key,
                path,
                format!("names in {what} must be strings, not {}", key.describe()),
            );
            continue;
        };
        let p = join(path, name);
        if mapping(c, def, &p, entry).is_some() {
            out.push((name, def, p));
        }
    }
    out
}

/// A list of non-empty strings, optionally required to be non-empty.
pub(crate) fn string_list(
    c: &mut Collector<'_>,
    v: &Yaml,
    path: &str,
    what: &str,
    non_empty: bool,
) -> Option<Vec<String>> {
    let Value::Seq(items) = &v.value else {
        c.error(
            v,
            path,
            format!("{what} must be a list of strings, not {}", v.describe()),
        );
        return None;
    };
    if non_empty && items.is_empty() {
        c.error(
            v,
            path,
            format!("{what}, if given, must be a non-empty list"),
        );
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) if !s.is_empty() => out.push(s.to_string()),
            _ => {
                c.error(
                    item,
                    &crate::diagnostic::index(path, i),
                    format!(
                        "each entry of {what} must be a non-empty string, not {}",
                        item.describe()
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys() {
        assert_eq!(closest("memmory", &["memory", "cores"]), Some("memory"));
        assert_eq!(closest("zzz", &["memory"]), None);
    }
}
