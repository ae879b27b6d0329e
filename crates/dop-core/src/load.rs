//! Reading a plan from a file or a string: includes, YAML, model, diagnostics.

use std::path::Path;

use crate::configuration::LookupSettings;
use crate::diagnostic::{Collector, Diagnostic, Severity};
use crate::include::{self, Expanded, IncludeError, SourceMap};
use crate::plan::{self, Plan};
use crate::yaml;

/// What reading a plan produced: the plan when it is valid, and every finding.
#[derive(Debug)]
pub struct Loaded {
    /// The plan, when there are no errors.
    pub plan: Option<Plan>,
    /// Errors and warnings, in the order found.
    pub diagnostics: Vec<Diagnostic>,
    /// The text after include expansion (what a store keeps), when the file could be read.
    pub expanded: Option<Expanded>,
}

impl Loaded {
    /// True when the plan has no errors.
    pub fn is_valid(&self) -> bool {
        self.plan.is_some()
    }

    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }
}

/// Reads, expands and validates a plan file.
pub fn load_file(path: &Path, settings: &LookupSettings) -> Loaded {
    match include::expand_file(path) {
        Ok(expanded) => {
            let stem = path.file_stem().and_then(|s| s.to_str());
            let mut loaded = load_expanded(&expanded.text, &expanded.map, stem, settings);
            loaded.expanded = Some(expanded);
            loaded
        }
        Err(e) => Loaded {
            plan: None,
            diagnostics: vec![include_diagnostic(&e)],
            expanded: None,
        },
    }
}

/// Validates a plan given as text (no includes are expanded). `file` names it in findings.
pub fn load_str(text: &str, file: Option<&Path>, settings: &LookupSettings) -> Loaded {
    let map = SourceMap::single(file, text);
    let stem = file.and_then(|f| f.file_stem()).and_then(|s| s.to_str());
    let mut loaded = load_expanded(text, &map, stem, settings);
    loaded.expanded = Some(Expanded {
        text: text.to_string(),
        map,
    });
    loaded
}

fn load_expanded(
    text: &str,
    map: &SourceMap,
    stem: Option<&str>,
    settings: &LookupSettings,
) -> Loaded {
    let mut collector = Collector::new(map);
    let plan = match yaml::parse(text) {
        Err(e) => {
            collector.push_at(Severity::Error, e.mark, "", e.message);
            None
        }
        Ok(doc) => {
            for dup in &doc.duplicate_keys {
                collector.push_at(
                    Severity::Warning,
                    Some(dup.mark),
                    "",
                    format!(
                        "the key '{}' appears twice in one mapping; the later value is used",
                        dup.key
                    ),
                );
            }
            let plan = plan::parse_plan(&mut collector, &doc.root, stem, settings);
            drop_aside(doc, text.len());
            plan
        }
    };
    let mut diagnostics = collector.diagnostics;
    // Errors first, each group in file order.
    diagnostics.sort_by(|a, b| {
        (a.severity, &a.file, a.line, a.column).cmp(&(b.severity, &b.file, b.line, b.column))
    });
    Loaded {
        plan,
        diagnostics,
        expanded: None,
    }
}

/// Texts from this size on have their YAML tree freed on a thread of its own.
const DROP_ASIDE_FROM: usize = 512 * 1024;

/// Frees a large plan's YAML tree (hundreds of thousands of small allocations, a tenth of the
/// load of a 10 000-node plan) beside the caller instead of in its way; a small one in place.
fn drop_aside(doc: yaml::Document, text_len: usize) {
    if text_len < DROP_ASIDE_FROM {
        return;
    }
    // Should no thread be available, the closure and the tree are dropped here.
    let _ = std::thread::Builder::new()
        .name("dop-yaml-drop".to_string())
        .spawn(move || drop(doc));
}

fn include_diagnostic(e: &IncludeError) -> Diagnostic {
    let location = e.location();
    Diagnostic {
        file: Some(
            location
                .as_ref()
                .map_or_else(|| e.file().to_path_buf(), |l| l.file.clone()),
        ),
        path: String::new(),
        line: location.as_ref().map(|l| l.line),
        column: location.as_ref().map(|l| l.column),
        message: e.to_string(),
        severity: Severity::Error,
    }
}
