//! Validation findings: what is wrong, where in the plan, where in which file.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::include::SourceMap;
use crate::yaml::{Mark, Yaml};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The plan cannot be used.
    Error,
    /// The plan can be used, but something in it is probably not what its author meant.
    Warning,
}

/// One finding about a plan. Serialised as `{file, path, line, column, message, severity}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The file the finding is in, as the operator named it.
    pub file: Option<PathBuf>,
    /// Where inside the plan: `nodes.web01.interfaces.eth0.ip`; empty for the whole plan.
    pub path: String,
    /// Line, from 1, where known.
    pub line: Option<u32>,
    /// Column, from 1, where known.
    pub column: Option<u32>,
    /// What is wrong, and where useful what to do about it.
    pub message: String,
    /// Error or warning.
    pub severity: Severity,
}

impl Diagnostic {
    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// Renders as `error: PATH: MESSAGE` and, when the file is known, `  --> FILE:LINE:COLUMN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.path.is_empty() {
            write!(f, "{label}: {}", self.message)?;
        } else {
            write!(f, "{label}: {}: {}", self.path, self.message)?;
        }
        if let Some(file) = &self.file {
            write!(f, "\n  --> {}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(column) = self.column {
                    write!(f, ":{column}")?;
                }
            }
        }
        Ok(())
    }
}

/// Collects findings while a plan is read, placing each at its file and line.
pub(crate) struct Collector<'a> {
    map: &'a SourceMap,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(map: &'a SourceMap) -> Self {
        Collector {
            map,
            diagnostics: Vec::new(),
        }
    }

    pub(crate) fn push_at(
        &mut self,
        severity: Severity,
        mark: Option<Mark>,
        path: &str,
        message: String,
    ) {
        let location = mark.and_then(|m| self.map.locate(m));
        let file = match &location {
            Some(l) => Some(l.file.clone()),
            None => self.map.main_file().map(PathBuf::from),
        }
        .filter(|f| !f.as_os_str().is_empty());
        self.diagnostics.push(Diagnostic {
            file,
            path: path.to_string(),
            line: location.as_ref().map(|l| l.line),
            column: location.as_ref().map(|l| l.column),
            message,
            severity,
        });
    }

    /// An error about the value `at`.
    pub(crate) fn error(&mut self, at: &Yaml, path: &str, message: impl Into<String>) {
        self.push_at(Severity::Error, Some(at.mark), path, message.into());
    }

    /// A warning about the value `at`.
    pub(crate) fn warn(&mut self, at: &Yaml, path: &str, message: impl Into<String>) {
        self.push_at(Severity::Warning, Some(at.mark), path, message.into());
    }

    pub(crate) fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

/// `parent.key`, or `key` at the top.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[index]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}
