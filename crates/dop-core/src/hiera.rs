//! Roles from the site's own Hiera 5 configuration (`hiera_yaml`), as the original resolved
//! them through a real Hiera lookup before it looked into the plan's `configuration`.
//!
//! dop evaluates what it can evaluate without Puppet: `version: 5` files whose levels read YAML
//! (`yaml_data`) or JSON (`json_data`) files through `path`, `paths`, `glob`, `globs` or
//! `mapped_paths`, with `%{…}` interpolation of the node's trusted data, its facts (from the
//! Puppet facts cache in `facts_dir` when `load_facts` is set) and top-scope variables. What
//! needs Puppet (other backends, eyaml, lookup functions in interpolations) and Hiera 3 files
//! are refused with the file, the level and what to do, never skipped: skipping would give the
//! node another role than Puppet gives it.
//!
//! Reading the configuration, the data files and the facts files is the only I/O here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as J};

use crate::plan::Node;
use crate::yaml::{self, Value, Yaml};

/// Why the site's Hiera could not give a node's role.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HieraError {
    /// The `hiera.yaml` cannot be used.
    #[error("{}{}: {message}", file.display(), if *line > 0 { format!(":{line}") } else { String::new() })]
    Config {
        /// The `hiera.yaml`.
        file: PathBuf,
        /// Its line (0 when unknown).
        line: u32,
        /// What is wrong and what to do.
        message: String,
    },
    /// A data file of a level cannot be used for a node.
    #[error("{} (hierarchy level '{level}' of {}, node {node}): {message}", file.display(), config.display())]
    Data {
        /// The data file.
        file: PathBuf,
        /// The `hiera.yaml`.
        config: PathBuf,
        /// The level's name.
        level: String,
        /// The node whose lookup read it.
        node: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A node's facts file cannot be read.
    #[error("{} (facts of node {node}): {message}", file.display())]
    Facts {
        /// The facts file.
        file: PathBuf,
        /// The node.
        node: String,
        /// What is wrong.
        message: String,
    },
}

/// The backend a level reads its files with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Yaml,
    Json,
}

/// How a level names its files (before interpolation).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Spec {
    Path(String),
    Glob(String),
    /// `mapped_paths: [variable, key, template]`.
    Mapped {
        variable: String,
        key: String,
        template: String,
    },
}

#[derive(Clone, Debug)]
struct Level {
    name: String,
    datadir: PathBuf,
    backend: Backend,
    specs: Vec<Spec>,
}

/// A parsed Hiera 5 configuration and the data files read so far.
#[derive(Debug)]
pub struct SiteHiera {
    file: PathBuf,
    levels: Vec<Level>,
    facts_dir: Option<PathBuf>,
    /// Data files already read (one read per file for all nodes).
    cache: HashMap<PathBuf, Result<Option<J>, String>>,
}

/// The interpolation functions Hiera has that need a lookup dop cannot do.
const LOOKUP_FUNCTIONS: [&str; 4] = ["lookup", "hiera", "alias", "strict_alias"];

impl SiteHiera {
    /// Reads `file` (a Hiera 5 `hiera.yaml`). With `facts_dir`, each node's facts are read
    /// from `<facts_dir>/<fqdn>.yaml` (or `.json`, or under the node's name).
    pub fn load(file: &Path, facts_dir: Option<&Path>) -> Result<SiteHiera, HieraError> {
        let err = |line: u32, message: String| HieraError::Config {
            file: file.to_path_buf(),
            line,
            message,
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            err(
                0,
                format!(
                    "cannot read the Hiera configuration ({e}); set hiera_yaml (dop.conf or \
                     --hiera-yaml) to the site's hiera.yaml, or use_hiera: false for roles \
                     from the plan only"
                ),
            )
        })?;
        let doc = yaml::parse(&text).map_err(|e| {
            err(
                e.mark.map_or(0, |m| m.line),
                format!("not YAML: {}", e.message),
            )
        })?;
        let Value::Map(entries) = &doc.root.value else {
            return Err(err(
                doc.root.mark.line,
                "a hiera.yaml is a mapping with `version: 5` and a `hierarchy`".into(),
            ));
        };
        let hiera3 = entries.iter().any(|(k, _)| {
            matches!(&k.value, Value::Sym(_)) || matches!(k.key_text().as_str(), "backends")
        });
        let version = doc.root.get("version");
        match version.map(|v| &v.value) {
            Some(Value::Int(5)) => {}
            _ if hiera3 || version.is_none() => {
                return Err(err(
                    1,
                    "this is a Hiera 3 configuration (`:backends:`, `:hierarchy:`, no \
                     `version: 5`); dop reads Hiera 5 only: convert it to `version: 5` with \
                     `hierarchy` levels (a Hiera 3 level `nodes/%{::clientcert}` of the yaml \
                     backend is `- {name: nodes, path: \"nodes/%{::clientcert}.yaml\"}`), or \
                     set use_hiera: false"
                        .into(),
                ))
            }
            _ => {
                let at = version.map_or(1, |v| v.mark.line);
                return Err(err(
                    at,
                    "only `version: 5` is supported (Hiera 4 and older are not); convert the \
                     file to Hiera 5"
                        .into(),
                ));
            }
        }
        let base = file.parent().unwrap_or(Path::new("."));
        let mut defaults = LevelKeys::default();
        for (key, value) in entries {
            match key.key_text().as_str() {
                "version" => {}
                "defaults" => {
                    defaults = LevelKeys::read(value, "defaults").map_err(|(l, m)| err(l, m))?
                }
                "hierarchy" => {}
                "default_hierarchy" => {
                    return Err(err(
                        key.mark.line,
                        "`default_hierarchy` belongs in a module's hiera.yaml; dop reads the \
                         global or an environment's hiera.yaml: point hiera_yaml at one of those"
                            .into(),
                    ))
                }
                other => {
                    return Err(err(
                        key.mark.line,
                        format!("unknown key '{other}' (Hiera 5 has version, defaults, hierarchy)"),
                    ))
                }
            }
        }
        let mut levels = Vec::new();
        if let Some(hierarchy) = doc.root.get("hierarchy") {
            let Value::Seq(items) = &hierarchy.value else {
                return Err(err(
                    hierarchy.mark.line,
                    "`hierarchy` must be a list of levels".into(),
                ));
            };
            for item in items {
                levels.push(Level::read(item, &defaults, base).map_err(|(l, m)| err(l, m))?);
            }
        } else {
            // Hiera 5's default hierarchy: one level, common.yaml.
            levels.push(Level {
                name: "Common".into(),
                datadir: base.join(defaults.datadir.as_deref().unwrap_or("data")),
                backend: defaults.backend.unwrap_or(Backend::Yaml),
                specs: vec![Spec::Path("common.yaml".into())],
            });
        }
        Ok(SiteHiera {
            file: file.to_path_buf(),
            levels,
            facts_dir: facts_dir.map(Path::to_path_buf),
            cache: HashMap::new(),
        })
    }

    /// The node's scope: `trusted` (certname: the node's name, as Puppet knows dop's nodes),
    /// `::fqdn`, `::clientcert`, `::hostname`, `::domain`, and its facts on top.
    fn scope(&self, node: &Node) -> Result<Map<String, J>, HieraError> {
        let mut scope = Map::new();
        for (k, v) in [
            ("fqdn", node.fqdn.as_str()),
            ("clientcert", node.fqdn.as_str()),
            ("hostname", node.hostname()),
            ("domain", node.domainname()),
        ] {
            scope.insert(k.into(), J::String(v.into()));
        }
        let mut facts = scope.clone();
        if let Some(dir) = &self.facts_dir {
            if let Some(read) = read_facts(dir, node)? {
                for (k, v) in read {
                    facts.insert(k.clone(), v.clone());
                    if k != "trusted" && k != "facts" {
                        scope.insert(k, v);
                    }
                }
            }
        }
        scope.insert("facts".into(), J::Object(facts));
        let trusted = serde_json::json!({
            "certname": node.name,
            "hostname": node.name.split('.').next().unwrap_or(&node.name),
            "domain": node.name.split_once('.').map_or("", |(_, d)| d),
            "authenticated": "remote",
            "extensions": {},
        });
        scope.insert("trusted".into(), trusted);
        Ok(scope)
    }

    /// Looks `key` up for `node` through the hierarchy: the first level whose file has the key
    /// answers (Hiera's priority lookup). `None` when no level has it.
    pub fn lookup(&mut self, node: &Node, key: &str) -> Result<Option<J>, HieraError> {
        let scope = self.scope(node)?;
        let levels = self.levels.clone();
        let config = self.file.clone();
        for level in &levels {
            let data_err = |file: &Path, message: String| HieraError::Data {
                file: file.to_path_buf(),
                config: config.clone(),
                level: level.name.clone(),
                node: node.name.clone(),
                message,
            };
            for file in level
                .files(&scope)
                .map_err(|m| data_err(&level.datadir, m))?
            {
                let data = self
                    .read(&file, level.backend)
                    .map_err(|m| data_err(&file, m))?;
                let Some(found) = data.as_ref().and_then(|d| dig(d, key)) else {
                    continue;
                };
                return interpolate_value(found, &scope)
                    .map(Some)
                    .map_err(|m| data_err(&file, format!("the value of '{key}': {m}")));
            }
        }
        Ok(None)
    }

    /// A data file's content (`None`: missing, which Hiera skips).
    fn read(&mut self, file: &Path, backend: Backend) -> Result<Option<J>, String> {
        if let Some(known) = self.cache.get(file) {
            return known.clone();
        }
        let read = read_data(file, backend);
        self.cache.insert(file.to_path_buf(), read.clone());
        read
    }
}

fn read_data(file: &Path, backend: Backend) -> Result<Option<J>, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let data = match backend {
        Backend::Yaml => {
            let doc = yaml::parse(&text).map_err(|e| {
                let at = e
                    .mark
                    .map(|m| format!(" (line {})", m.line))
                    .unwrap_or_default();
                format!("{}{at}; fix the file", e.message)
            })?;
            doc.root.to_json()
        }
        Backend::Json => serde_json::from_str(&text)
            .map_err(|e| format!("not valid JSON at line {}: {e}; fix the file", e.line()))?,
    };
    match data {
        J::Null => Ok(Some(J::Object(Map::new()))),
        J::Object(_) => Ok(Some(data)),
        _ => Err("a Hiera data file must hold a mapping of keys".into()),
    }
}

/// A node's facts from the Puppet facts cache: `<dir>/<fqdn>.yaml` (or `.json`, or under the
/// node's name), the `values` of a `Puppet::Node::Facts` object or a plain mapping. `None`
/// when there is no file (the original: no facts).
fn read_facts(dir: &Path, node: &Node) -> Result<Option<Map<String, J>>, HieraError> {
    let mut names = vec![node.fqdn.as_str()];
    if node.name != node.fqdn {
        names.push(node.name.as_str());
    }
    for name in names {
        for ext in ["yaml", "json"] {
            let file = dir.join(format!("{name}.{ext}"));
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(HieraError::Facts {
                        file,
                        node: node.name.clone(),
                        message: format!("cannot read it: {e}"),
                    })
                }
            };
            let fail = |message: String| HieraError::Facts {
                file: file.clone(),
                node: node.name.clone(),
                message,
            };
            let data = if ext == "yaml" {
                yaml::parse(&text)
                    .map_err(|e| fail(format!("not valid YAML: {e}")))?
                    .root
                    .to_json()
            } else {
                serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?
            };
            let values = match data.get("values") {
                Some(J::Object(v)) => v.clone(),
                _ => match data {
                    J::Object(v) => v,
                    _ => return Err(fail("facts must be a mapping".into())),
                },
            };
            return Ok(Some(values));
        }
    }
    Ok(None)
}

/// The keys a level (or `defaults`) may set, as read.
#[derive(Clone, Debug, Default)]
struct LevelKeys {
    datadir: Option<String>,
    backend: Option<Backend>,
}

impl LevelKeys {
    /// Reads `datadir` and the backend of a level or of `defaults`; refuses what dop cannot
    /// evaluate.
    fn read(at: &Yaml, name: &str) -> Result<LevelKeys, (u32, String)> {
        let mut keys = LevelKeys::default();
        let Value::Map(entries) = &at.value else {
            return Err((at.mark.line, format!("'{name}' must be a mapping")));
        };
        for (key, value) in entries {
            let line = key.mark.line;
            let text = || {
                value.as_str().map(str::to_string).ok_or((
                    line,
                    format!("level '{name}': '{}' must be a string", key.key_text()),
                ))
            };
            match key.key_text().as_str() {
                "datadir" => keys.datadir = Some(text()?),
                "data_hash" => {
                    keys.backend = Some(match text()?.as_str() {
                        "yaml_data" => Backend::Yaml,
                        "json_data" => Backend::Json,
                        other => {
                            return Err((
                                line,
                                format!(
                                    "level '{name}': the data_hash backend '{other}' runs inside \
                                     Puppet and dop cannot evaluate it; use yaml_data or \
                                     json_data, move the role into such a level, or set \
                                     use_hiera: false"
                                ),
                            ))
                        }
                    })
                }
                "lookup_key" => {
                    let backend = text()?;
                    let why = if backend.contains("eyaml") {
                        "eyaml data is encrypted with keys only Puppet holds"
                    } else {
                        "a lookup_key backend runs inside Puppet"
                    };
                    return Err((
                        line,
                        format!(
                            "level '{name}': lookup_key '{backend}': {why}, so dop cannot read \
                             roles from it; keep roles in a yaml_data or json_data level, or set \
                             use_hiera: false"
                        ),
                    ));
                }
                "data_dig" => {
                    return Err((
                        line,
                        format!(
                            "level '{name}': data_dig backends run inside Puppet; keep roles in a \
                             yaml_data or json_data level, or set use_hiera: false"
                        ),
                    ))
                }
                "hiera3_backend" => {
                    return Err((
                        line,
                        format!(
                            "level '{name}': a legacy Hiera 3 backend runs inside Puppet and dop \
                             cannot evaluate it; keep roles in a yaml_data or json_data level, or \
                             set use_hiera: false"
                        ),
                    ))
                }
                "uri" | "uris" => {
                    return Err((
                        line,
                        format!(
                            "level '{name}': '{}' serves a custom backend, which dop cannot \
                             evaluate; keep roles in a yaml_data or json_data level",
                            key.key_text()
                        ),
                    ))
                }
                // Options of the backends dop reads, and the level's own keys.
                "options" | "name" | "path" | "paths" | "glob" | "globs" | "mapped_paths" => {}
                other => return Err((line, format!("level '{name}': unknown key '{other}'"))),
            }
        }
        Ok(keys)
    }
}

impl Level {
    fn read(at: &Yaml, defaults: &LevelKeys, base: &Path) -> Result<Level, (u32, String)> {
        let line = at.mark.line;
        let name = at
            .get("name")
            .and_then(Yaml::as_str)
            .ok_or((line, "a hierarchy level needs a `name`".to_string()))?
            .to_string();
        let own = LevelKeys::read(at, &name)?;
        let string = |v: &Yaml, what: &str| -> Result<String, (u32, String)> {
            let s = v.as_str().ok_or((
                v.mark.line,
                format!("level '{name}': '{what}' must be a string"),
            ))?;
            check_interpolations(s).map_err(|m| (v.mark.line, format!("level '{name}': {m}")))?;
            Ok(s.to_string())
        };
        let list = |v: &Yaml, what: &str| -> Result<Vec<String>, (u32, String)> {
            match &v.value {
                Value::Seq(items) => items.iter().map(|i| string(i, what)).collect(),
                _ => Err((
                    v.mark.line,
                    format!("level '{name}': '{what}' must be a list"),
                )),
            }
        };
        let mut specs = Vec::new();
        for (key, value) in at.as_map().unwrap_or_default() {
            match key.key_text().as_str() {
                "path" => specs.push(Spec::Path(string(value, "path")?)),
                "paths" => specs.extend(list(value, "paths")?.into_iter().map(Spec::Path)),
                "glob" => specs.push(Spec::Glob(glob_pattern(
                    string(value, "glob")?,
                    &name,
                    value,
                )?)),
                "globs" => {
                    for g in list(value, "globs")? {
                        specs.push(Spec::Glob(glob_pattern(g, &name, value)?));
                    }
                }
                "mapped_paths" => {
                    let parts = list(value, "mapped_paths")?;
                    let [variable, key, template] =
                        <[String; 3]>::try_from(parts).map_err(|_| {
                            (
                                value.mark.line,
                                format!(
                                    "level '{name}': mapped_paths is [variable, key, template] \
                                 (three strings)"
                                ),
                            )
                        })?;
                    specs.push(Spec::Mapped {
                        variable,
                        key,
                        template,
                    });
                }
                _ => {}
            }
        }
        if specs.is_empty() {
            return Err((
                line,
                format!("level '{name}': give path, paths, glob, globs or mapped_paths"),
            ));
        }
        let datadir = own
            .datadir
            .or_else(|| defaults.datadir.clone())
            .unwrap_or_else(|| "data".into());
        Ok(Level {
            name,
            datadir: base.join(datadir),
            backend: own.backend.or(defaults.backend).unwrap_or(Backend::Yaml),
            specs,
        })
    }

    /// The files this level reads for a scope, in Hiera's order.
    fn files(&self, scope: &Map<String, J>) -> Result<Vec<PathBuf>, String> {
        let mut files = Vec::new();
        for spec in &self.specs {
            match spec {
                Spec::Path(p) => files.push(self.datadir.join(interpolate(p, scope)?)),
                Spec::Glob(g) => {
                    let pattern = interpolate(g, scope)?;
                    for alternative in expand_braces(&pattern) {
                        let mut found = glob(&self.datadir, &alternative);
                        found.sort();
                        files.extend(found);
                    }
                }
                Spec::Mapped {
                    variable,
                    key,
                    template,
                } => {
                    let values = match variable_value(variable, scope)? {
                        None => Vec::new(),
                        Some(J::Array(items)) => items,
                        Some(J::Object(map)) => map.keys().cloned().map(J::String).collect(),
                        Some(other) => vec![other],
                    };
                    for v in values {
                        let mut local = scope.clone();
                        local.insert(key.clone(), v);
                        files.push(self.datadir.join(interpolate(template, &local)?));
                    }
                }
            }
        }
        Ok(files)
    }
}

/// Checks a configured glob: dop matches `*`, `?`, `**` and `{a,b}`.
fn glob_pattern(g: String, level: &str, at: &Yaml) -> Result<String, (u32, String)> {
    if g.contains('[') {
        return Err((
            at.mark.line,
            format!(
                "level '{level}': glob '{g}': character classes (`[...]`) are not supported by \
                 dop; use `*`, `?`, `**`, `{{a,b}}` or paths"
            ),
        ));
    }
    Ok(g)
}

/// Refuses interpolations dop cannot evaluate (lookup functions) in a configured path.
fn check_interpolations(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find("%{") {
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or(format!("'{text}': an interpolation `%{{` is not closed"))?;
        function_check(&after[..end])?;
        rest = &after[end + 1..];
    }
    Ok(())
}

fn function_check(expr: &str) -> Result<(), String> {
    let expr = expr.trim();
    if let Some((function, _)) = expr.split_once('(') {
        let function = function.trim();
        if LOOKUP_FUNCTIONS.contains(&function) {
            return Err(format!(
                "the interpolation `%{{{expr}}}` calls the function {function}(), which needs a \
                 Puppet lookup dop cannot do; use a fact or trusted variable (%{{facts.x}}, \
                 %{{trusted.certname}}) instead"
            ));
        }
        if function != "scope" && function != "literal" {
            return Err(format!(
                "the interpolation `%{{{expr}}}` calls an unknown function {function}()"
            ));
        }
    }
    Ok(())
}

/// Interpolates `%{…}` with the scope: variables (`::x`, `x`, `facts.x.y`, `trusted.certname`),
/// `scope('x')` and `literal('x')`. An unknown variable is the empty string, as in Hiera.
fn interpolate(text: &str, scope: &Map<String, J>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("%{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or(format!("'{text}': an interpolation `%{{` is not closed"))?;
        let expr = after[..end].trim();
        function_check(expr)?;
        let quoted = |inner: &str| {
            inner
                .trim()
                .trim_end_matches(')')
                .trim()
                .trim_matches(|c| c == '\'' || c == '"')
                .to_string()
        };
        let value = if let Some(inner) = expr.strip_prefix("literal(") {
            Some(J::String(quoted(inner)))
        } else if let Some(inner) = expr.strip_prefix("scope(") {
            variable_value(&quoted(inner), scope)?
        } else {
            variable_value(expr, scope)?
        };
        match value {
            None | Some(J::Null) => {}
            Some(J::String(s)) => out.push_str(&s),
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A variable of the scope: `::x` and `x` are top-scope, dots dig into hashes.
fn variable_value(name: &str, scope: &Map<String, J>) -> Result<Option<J>, String> {
    let name = name.trim().trim_start_matches("::");
    if name.is_empty() {
        return Ok(None);
    }
    let mut segments = name.split('.');
    let first = segments.next().unwrap_or_default();
    let Some(mut value) = scope.get(first) else {
        return Ok(None);
    };
    for segment in segments {
        match value.get(segment) {
            Some(v) => value = v,
            None => return Ok(None),
        }
    }
    Ok(Some(value.clone()))
}

/// A key in a data file: the whole key first, then dotted segments digging into hashes.
fn dig<'d>(data: &'d J, key: &str) -> Option<&'d J> {
    if let Some(v) = data.get(key) {
        return Some(v);
    }
    let mut value = data;
    for segment in key.split('.') {
        value = value.get(segment)?;
    }
    Some(value)
}

/// Interpolates the strings in a found value.
fn interpolate_value(value: &J, scope: &Map<String, J>) -> Result<J, String> {
    Ok(match value {
        J::String(s) => J::String(interpolate(s, scope)?),
        J::Array(items) => J::Array(
            items
                .iter()
                .map(|i| interpolate_value(i, scope))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(map) => J::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), interpolate_value(v, scope)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// `a{b,c}d` → `abd`, `acd` (one level of braces, repeated).
fn expand_braces(pattern: &str) -> Vec<String> {
    let Some(open) = pattern.find('{') else {
        return vec![pattern.to_string()];
    };
    let Some(close) = pattern[open..].find('}').map(|c| c + open) else {
        return vec![pattern.to_string()];
    };
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    pattern[open + 1..close]
        .split(',')
        .flat_map(|alt| expand_braces(&format!("{head}{alt}{tail}")))
        .collect()
}

/// The files under `dir` matching `pattern` (`*`, `?` within a segment, `**` any depth).
fn glob(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let segments: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let mut out = Vec::new();
    glob_in(dir, &segments, &mut out, 0);
    out
}

fn glob_in(dir: &Path, segments: &[&str], out: &mut Vec<PathBuf>, depth: usize) {
    // Bounded: data trees are shallow; a link loop must not run away.
    if depth > 32 {
        return;
    }
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    if *first == "**" {
        glob_in(dir, rest, out, depth + 1);
        for entry in entries(dir) {
            if entry.is_dir() {
                glob_in(&entry, segments, out, depth + 1);
            }
        }
        return;
    }
    if !first.contains(['*', '?']) {
        let path = dir.join(first);
        if rest.is_empty() {
            if path.is_file() {
                out.push(path);
            }
        } else if path.is_dir() {
            glob_in(&path, rest, out, depth + 1);
        }
        return;
    }
    for entry in entries(dir) {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || !wildcard(first.as_bytes(), name.as_bytes()) {
            continue;
        }
        if rest.is_empty() {
            if entry.is_file() {
                out.push(entry);
            }
        } else if entry.is_dir() {
            glob_in(&entry, rest, out, depth + 1);
        }
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// `*` and `?` matching of one path segment.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n, mut star, mut mark) = (0, 0, None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_braces() {
        assert!(wildcard(b"*.yaml", b"web.yaml"));
        assert!(wildcard(b"w?b*", b"web01.json"));
        assert!(!wildcard(b"*.yaml", b"web.json"));
        assert_eq!(expand_braces("a/{b,c}.yaml"), ["a/b.yaml", "a/c.yaml"]);
    }

    #[test]
    fn interpolation_of_variables_and_functions() {
        let scope: Map<String, J> = serde_json::from_value(serde_json::json!({
            "trusted": {"certname": "web01.example.com"},
            "facts": {"os": {"family": "Debian"}},
            "dc": "zrh",
        }))
        .unwrap();
        let i = |t: &str| interpolate(t, &scope);
        assert_eq!(
            i("nodes/%{trusted.certname}.yaml").unwrap(),
            "nodes/web01.example.com.yaml"
        );
        assert_eq!(
            i("nodes/%{::trusted.certname}").unwrap(),
            "nodes/web01.example.com"
        );
        assert_eq!(i("os/%{facts.os.family}").unwrap(), "os/Debian");
        assert_eq!(i("%{::dc}-%{dc}").unwrap(), "zrh-zrh");
        assert_eq!(i("x/%{unknown}.yaml").unwrap(), "x/.yaml");
        assert_eq!(i("%{literal('%')}{scope('dc')}").unwrap(), "%{scope('dc')}");
        assert_eq!(i("%{scope('dc')}").unwrap(), "zrh");
        assert!(i("%{lookup('x')}").unwrap_err().contains("lookup()"));
        assert!(i("%{alias('x')}").unwrap_err().contains("alias()"));
    }
}
