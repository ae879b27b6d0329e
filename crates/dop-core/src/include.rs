//! The include pre-processor: replaces `include: FILE` lines with the file's lines, indented to
//! where the directive stood, and remembers where every resulting line came from so errors can
//! name the file and line an operator wrote.
//!
//! It keeps the original tool's textual model (plans written for it expand the same way) but
//! only treats a line that *is* a directive as one: `include: PATH` or `- include: PATH`, with
//! an optional trailing comment. Commented-out directives and directives after other text are
//! left alone. Like the original, the pre-processor does not know YAML: a line of a block scalar
//! (`|`, `>`) that consists of a directive is expanded too.

use std::fs;
use std::path::{Path, PathBuf};

use crate::yaml::Mark;

/// Largest plan, after includes are expanded, that dop reads.
pub const MAX_PLAN_BYTES: u64 = 32 * 1024 * 1024;
/// Deepest chain of includes.
pub const MAX_INCLUDE_DEPTH: usize = 32;

/// A place in a file an operator wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file, as the operator named it (relative paths stay relative).
    pub file: PathBuf,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

#[derive(Clone, Copy, Debug)]
struct LineOrigin {
    file: u32,
    line: u32,
    /// Columns the pre-processor added in front of the line.
    shift: u32,
}

/// Maps lines of the expanded text back to the files they came from.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<PathBuf>,
    lines: Vec<LineOrigin>,
}

impl SourceMap {
    /// A map for text read from one file (or from no file, with `None`), without includes.
    pub fn single(file: Option<&Path>, text: &str) -> SourceMap {
        let files = vec![file.map(Path::to_path_buf).unwrap_or_default()];
        let lines = (0..text.lines().count().max(1))
            .map(|i| LineOrigin {
                file: 0,
                line: u32::try_from(i + 1).unwrap_or(u32::MAX),
                shift: 0,
            })
            .collect();
        SourceMap { files, lines }
    }

    /// Where a position of the expanded text was written.
    pub fn locate(&self, mark: Mark) -> Option<Location> {
        let index = usize::try_from(mark.line).ok()?.checked_sub(1)?;
        // The parser may report the position just past the last line.
        let origin = self.lines.get(index).or_else(|| self.lines.last())?;
        let file = self.files.get(origin.file as usize)?.clone();
        Some(Location {
            file,
            line: origin.line,
            column: mark.column.saturating_sub(origin.shift).max(1),
        })
    }

    /// The file the text was read from.
    pub fn main_file(&self) -> Option<&Path> {
        self.files.first().map(PathBuf::as_path)
    }
}

/// A plan file's text with every include expanded.
#[derive(Clone, Debug)]
pub struct Expanded {
    /// The text to parse as YAML; this is what the store keeps.
    pub text: String,
    /// Where each line of `text` came from.
    pub map: SourceMap,
}

/// Why a plan file could not be read or expanded.
#[derive(Debug, thiserror::Error)]
pub enum IncludeError {
    /// The main plan file could not be read.
    #[error("cannot read the plan file: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An included file could not be read.
    #[error("cannot read the included file {}: {source}", included.display())]
    ReadInclude {
        /// The directive.
        at: Location,
        /// The file it names, resolved.
        included: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not text.
    #[error("{} is not UTF-8 text; a plan must be a YAML text file", file.display())]
    NotText {
        /// The file.
        file: PathBuf,
        /// The directive that included it, if any.
        at: Option<Location>,
    },
    /// The plan is too large.
    #[error("the plan is larger than {} MiB after includes; split it or remove data", MAX_PLAN_BYTES / 1024 / 1024)]
    TooLarge {
        /// The file that made it too large.
        file: PathBuf,
        /// The directive that included it, if any.
        at: Option<Location>,
    },
    /// A file includes itself, directly or through others.
    #[error("include loop: {}", chain.join(" -> "))]
    Loop {
        /// The directive that closes the loop.
        at: Location,
        /// The files of the loop, each with the line of its directive.
        chain: Vec<String>,
    },
    /// Includes nest too deep.
    #[error("includes nest deeper than {MAX_INCLUDE_DEPTH} files")]
    TooDeep {
        /// The directive that went too deep.
        at: Location,
    },
}

impl IncludeError {
    /// Where the error was found.
    pub fn location(&self) -> Option<Location> {
        match self {
            IncludeError::Read { .. } => None,
            IncludeError::ReadInclude { at, .. }
            | IncludeError::Loop { at, .. }
            | IncludeError::TooDeep { at } => Some(at.clone()),
            IncludeError::NotText { at, .. } | IncludeError::TooLarge { at, .. } => at.clone(),
        }
    }

    /// The file the error is about (the main file when the location is not known).
    pub fn file(&self) -> &Path {
        match self {
            IncludeError::Read { file, .. }
            | IncludeError::NotText { file, .. }
            | IncludeError::TooLarge { file, .. } => file,
            IncludeError::ReadInclude { at, .. }
            | IncludeError::Loop { at, .. }
            | IncludeError::TooDeep { at } => &at.file,
        }
    }
}

/// An `include:` directive found on a line.
#[derive(Debug, PartialEq)]
struct Directive<'a> {
    /// Column (0-based) of the `-` of a list item, if the directive is one.
    dash: Option<usize>,
    /// Column (0-based) of `include`.
    column: usize,
    path: &'a str,
}

/// Recognises `include: PATH`, `- include: PATH`, with `'quoted path'` or `"quoted path"` and
/// an optional trailing `# comment`.
fn directive(line: &str) -> Option<Directive<'_>> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let indent = line.len() - line.trim_start_matches(' ').len();
    let mut rest = &line[indent..];
    let mut dash = None;
    let mut column = indent;
    if let Some(after) = rest.strip_prefix("- ") {
        let spaces = after.len() - after.trim_start_matches(' ').len();
        dash = Some(indent);
        column = indent + 2 + spaces;
        rest = &after[spaces..];
    }
    let rest = rest.strip_prefix("include:")?;
    let value = rest.trim_start_matches([' ', '\t']);
    if value.len() == rest.len() {
        return None;
    }
    let (path, tail) = match value.chars().next()? {
        quote @ ('\'' | '"') => {
            let end = value[1..].find(quote)? + 1;
            (&value[1..end], &value[end + 1..])
        }
        _ => {
            let end = value.find([' ', '\t']).unwrap_or(value.len());
            (&value[..end], &value[end..])
        }
    };
    let tail = tail.trim();
    if path.is_empty() || !(tail.is_empty() || tail.starts_with('#')) {
        return None;
    }
    Some(Directive { dash, column, path })
}

struct Expander {
    out: String,
    map: SourceMap,
    /// Canonical paths of the files being expanded, each with the display form and the line of
    /// the directive that leads to the next one.
    chain: Vec<(PathBuf, PathBuf, u32)>,
}

/// Reads a plan file and expands its includes.
pub fn expand_file(path: &Path) -> Result<Expanded, IncludeError> {
    let text = read_text(path, None, 0)?;
    let mut expander = Expander {
        out: String::with_capacity(text.len()),
        map: SourceMap::default(),
        chain: Vec::new(),
    };
    expander.expand(path, &text, "", None)?;
    Ok(Expanded {
        text: expander.out,
        map: expander.map,
    })
}

fn read_text(path: &Path, at: Option<&Location>, already: u64) -> Result<String, IncludeError> {
    let io_error = |source| match at {
        None => IncludeError::Read {
            file: path.to_path_buf(),
            source,
        },
        Some(at) => IncludeError::ReadInclude {
            at: at.clone(),
            included: path.to_path_buf(),
            source,
        },
    };
    let meta = fs::metadata(path).map_err(io_error)?;
    if meta.is_dir() {
        return Err(io_error(std::io::Error::other("it is a directory")));
    }
    let too_large = || IncludeError::TooLarge {
        file: path.to_path_buf(),
        at: at.cloned(),
    };
    if meta.len().saturating_add(already) > MAX_PLAN_BYTES {
        return Err(too_large());
    }
    let bytes = fs::read(path).map_err(io_error)?;
    if (bytes.len() as u64).saturating_add(already) > MAX_PLAN_BYTES {
        return Err(too_large());
    }
    if bytes.contains(&0) {
        return Err(IncludeError::NotText {
            file: path.to_path_buf(),
            at: at.cloned(),
        });
    }
    String::from_utf8(bytes).map_err(|_| IncludeError::NotText {
        file: path.to_path_buf(),
        at: at.cloned(),
    })
}

impl Expander {
    /// Appends `text` (the content of `path`), each line prefixed with `prefix` (the first line
    /// with `first_prefix` when given, for `- include:`).
    fn expand(
        &mut self,
        path: &Path,
        text: &str,
        prefix: &str,
        mut first_prefix: Option<String>,
    ) -> Result<(), IncludeError> {
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let file_id = u32::try_from(self.map.files.len()).unwrap_or(u32::MAX);
        self.map.files.push(path.to_path_buf());
        self.chain.push((canonical, path.to_path_buf(), 0));
        let included = self.chain.len() > 1;
        let base = path.parent().unwrap_or(Path::new("."));
        for (index, line) in text.lines().enumerate() {
            let line_no = u32::try_from(index + 1).unwrap_or(u32::MAX);
            // A document start at the top of an included file would turn into a plain scalar
            // once indented; it says nothing inside another file, so it is dropped.
            if index == 0 && included && line.trim_end() == "---" {
                continue;
            }
            let line_prefix = match &first_prefix {
                Some(first) if !line.trim().is_empty() && !line.trim_start().starts_with('#') => {
                    let first = first.clone();
                    first_prefix = None;
                    first
                }
                _ => prefix.to_string(),
            };
            if let Some(found) = directive(line) {
                let at = Location {
                    file: path.to_path_buf(),
                    line: line_no,
                    column: u32::try_from(found.column + 1).unwrap_or(u32::MAX),
                };
                self.include(base, &found, &line_prefix, at)?;
                continue;
            }
            self.out.push_str(&line_prefix);
            self.out.push_str(line.strip_suffix('\r').unwrap_or(line));
            self.out.push('\n');
            self.map.lines.push(LineOrigin {
                file: file_id,
                line: line_no,
                shift: u32::try_from(line_prefix.len()).unwrap_or(u32::MAX),
            });
        }
        self.chain.pop();
        Ok(())
    }

    fn include(
        &mut self,
        base: &Path,
        found: &Directive<'_>,
        line_prefix: &str,
        at: Location,
    ) -> Result<(), IncludeError> {
        if let Some(last) = self.chain.last_mut() {
            last.2 = at.line;
        }
        let target = base.join(found.path);
        let canonical = fs::canonicalize(&target).unwrap_or_else(|_| target.clone());
        if self.chain.iter().any(|(c, _, _)| *c == canonical) {
            let mut chain: Vec<String> = self
                .chain
                .iter()
                .map(|(_, shown, line)| format!("{}:{line}", shown.display()))
                .collect();
            chain.push(target.display().to_string());
            return Err(IncludeError::Loop { at, chain });
        }
        if self.chain.len() >= MAX_INCLUDE_DEPTH {
            return Err(IncludeError::TooDeep { at });
        }
        let text = read_text(&target, Some(&at), self.out.len() as u64)?;
        // The directive's own indentation (relative to the including file) plus whatever the
        // including file was itself indented by.
        let (inner_prefix, first) = match found.dash {
            Some(dash) => (
                format!("{line_prefix}{}", " ".repeat(found.column)),
                Some(format!(
                    "{line_prefix}{}- {}",
                    " ".repeat(dash),
                    " ".repeat(found.column - dash - 2)
                )),
            ),
            None => (format!("{line_prefix}{}", " ".repeat(found.column)), None),
        };
        self.expand(&target, &text, &inner_prefix, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_directives() {
        let d = directive("  include: parts/a.yaml").unwrap();
        assert_eq!((d.dash, d.column, d.path), (None, 2, "parts/a.yaml"));
        let d = directive("- include: 'my file.yaml' # note").unwrap();
        assert_eq!((d.dash, d.column, d.path), (Some(0), 2, "my file.yaml"));
        assert_eq!(directive("# include: x.yaml"), None);
        assert_eq!(directive("key: include: x.yaml"), None);
        assert_eq!(directive("include: x.yaml trailing"), None);
        assert_eq!(directive("included: x"), None);
        assert_eq!(directive("include:"), None);
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn expands_nested_and_list_includes_and_maps_lines_back() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "incl/list.yaml", "- an_item\n- another_item");
        write(dir.path(), "incl/map.yaml", "---\na: 1\nb: 2\n");
        let main = write(
            dir.path(),
            "plan.yaml",
            "name: x\nsome_key:\n  include: incl/list.yaml\nitems:\n  - include: incl/map.yaml\n# include: missing.yaml\nafter: z\n",
        );
        let expanded = expand_file(&main).unwrap();
        assert_eq!(
            expanded.text,
            "name: x\nsome_key:\n  - an_item\n  - another_item\nitems:\n  - a: 1\n    b: 2\n# include: missing.yaml\nafter: z\n"
        );
        let loc = expanded.map.locate(Mark { line: 7, column: 5 }).unwrap();
        assert!(loc.file.ends_with("incl/map.yaml"));
        assert_eq!((loc.line, loc.column), (3, 1));
        let loc = expanded.map.locate(Mark { line: 9, column: 1 }).unwrap();
        assert_eq!((loc.file, loc.line), (main, 7));
    }

    #[test]
    fn loops_missing_files_and_binary_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", "x:\n  include: b.yaml\n");
        write(dir.path(), "b.yaml", "include: ./a.yaml\n");
        let err = expand_file(&dir.path().join("a.yaml")).unwrap_err();
        assert!(matches!(err, IncludeError::Loop { .. }), "{err}");
        assert!(err.to_string().contains("a.yaml:2 -> "), "{err}");

        let main = write(dir.path(), "c.yaml", "a: 1\ninclude: nope.yaml\n");
        let err = expand_file(&main).unwrap_err();
        assert_eq!(err.location().unwrap().line, 2);

        fs::write(dir.path().join("bin.yaml"), [0u8, 159, 146, 150]).unwrap();
        let err = expand_file(&dir.path().join("bin.yaml")).unwrap_err();
        assert!(matches!(err, IncludeError::NotText { .. }));
    }
}
