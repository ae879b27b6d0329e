//! How a command's result is judged, shared by `custom` and `ssh/custom`: expected exit codes,
//! error and warning patterns on every output line, `fail_on_warning`.

use regex::Regex;

use crate::exec::{Finished, Stream};
use crate::plugin::{params, CommandOptions, CommandOutcome, ParamProblem};

/// The judging parameters of a command, read once.
pub struct Checks {
    codes: Option<Vec<i32>>,
    errors: Vec<Regex>,
    warnings: Vec<Regex>,
    fail_on_warning: bool,
    error_lines: usize,
    warning_lines: usize,
}

/// The parameter names `Checks` reads.
pub const KEYS: [&str; 3] = ["expect_exit_codes", "parse_output", "fail_on_warning"];

impl Checks {
    /// Reads the parameters.
    pub fn from_options(options: &CommandOptions) -> Result<Checks, String> {
        let (errors, warnings) = params::output_patterns(options.get("parse_output"))?;
        Ok(Checks {
            codes: params::exit_codes(options.get("expect_exit_codes"), &[0])?,
            errors,
            warnings,
            fail_on_warning: options
                .get("fail_on_warning")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            error_lines: 0,
            warning_lines: 0,
        })
    }

    /// The problems of the parameters, for `check`.
    pub fn problems(options: &CommandOptions) -> Vec<ParamProblem> {
        let mut problems = Vec::new();
        if let Err(e) = params::exit_codes(options.get("expect_exit_codes"), &[0]) {
            problems.push(ParamProblem::error("expect_exit_codes", e));
        }
        if let Err(e) = params::output_patterns(options.get("parse_output")) {
            problems.push(ParamProblem::error("parse_output", e));
        }
        if options
            .get("fail_on_warning")
            .is_some_and(|f| !f.is_boolean())
        {
            problems.push(ParamProblem::error(
                "fail_on_warning",
                "'fail_on_warning' must be true or false",
            ));
        }
        problems
    }

    /// Looks at one output line; returns a note for the log when a pattern matched.
    pub fn line(&mut self, _stream: Stream, text: &str) -> Option<String> {
        if self.errors.iter().any(|re| re.is_match(text)) {
            self.error_lines += 1;
            Some(format!("error pattern matched: {text}"))
        } else if self.warnings.iter().any(|re| re.is_match(text)) {
            self.warning_lines += 1;
            Some(format!("warning pattern matched: {text}"))
        } else {
            None
        }
    }

    /// The outcome of a finished command.
    pub fn outcome(&self, finished: Finished, timeout_secs: u64) -> CommandOutcome {
        let mut problems = Vec::new();
        if finished.timed_out {
            problems.push(format!("timed out after {timeout_secs} s (plugin_timeout)"));
        }
        match (finished.exit_status, &self.codes) {
            (None, _) => problems.push(
                "ended without an exit status (a signal, or the connection dropped)".to_string(),
            ),
            (Some(code), Some(codes)) if !codes.contains(&code) => problems.push(format!(
                "exit status {code}, expected {}",
                codes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
            _ => {}
        }
        if self.error_lines > 0 {
            problems.push(format!(
                "{} output line(s) matched an error pattern",
                self.error_lines
            ));
        }
        if self.warning_lines > 0 && self.fail_on_warning {
            problems.push(format!(
                "{} output line(s) matched a warning pattern (fail_on_warning)",
                self.warning_lines
            ));
        }
        CommandOutcome {
            success: problems.is_empty(),
            exit_status: finished.exit_status,
            output_tail: finished.tail,
            message: (!problems.is_empty()).then(|| problems.join("; ")),
            interrupted: finished.stopped,
        }
    }
}
