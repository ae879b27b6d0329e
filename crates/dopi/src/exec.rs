//! Running a local program for a command (through [`dop_run::process::run_limited`]): its own
//! process group, a clean environment, a timeout, escalation on signals, and output read in
//! bounded pieces so that a command printing megabytes (or binary) neither blocks the run nor
//! fills memory, and capped (`max_program_output`) so that it does not fill the log either.

use std::collections::VecDeque;
use std::time::Duration;

use dop_run::process::{run_limited, truncation_marker, Limits, Overflow};
use dop_run::Masker;
use tokio::process::Command;
use tokio::sync::watch;

pub use dop_run::process::Stream;
pub use dop_run::Stop;

/// The `PATH` commands run with, as in the original.
pub const EXEC_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Lines of output kept for the state record.
pub const TAIL_LINES: usize = 20;
/// Longest line kept whole; longer lines are split (and binary output is shown lossily).
pub const MAX_LINE: usize = 8 * 1024;

/// Splits a byte stream into lines of at most `MAX_LINE` bytes and keeps the last
/// `TAIL_LINES` of them: shared by local and remote commands.
///
/// Each line is masked on its own later (in the node's log, in the state record's tail), so
/// no cut here may split one of the execution's secrets: a line longer than `MAX_LINE` is cut
/// before a secret that would cross the cut, and a tail line is shortened the same way.
/// Bytes that arrive in several writes are joined before any of this.
#[derive(Default)]
pub struct Lines {
    pending: [Vec<u8>; 2],
    tail: VecDeque<String>,
    masker: Masker,
}

/// Characters of a line kept in the tail.
const TAIL_LINE_CHARS: usize = 512;

impl Lines {
    /// Lines whose cuts split none of `masker`'s secrets (it is shared: secrets it learns
    /// later count from then on).
    pub fn new(masker: Masker) -> Lines {
        Lines {
            masker,
            ..Lines::default()
        }
    }

    /// Adds bytes of one stream; calls `emit` for every complete line. A line longer than
    /// `MAX_LINE` is cut every `MAX_LINE` bytes from its start (earlier where a secret would
    /// cross the cut), however the bytes arrived (in one piece or many).
    pub fn push(&mut self, stream: Stream, data: &[u8], emit: &mut dyn FnMut(Stream, &str)) {
        self.pending[stream as usize].extend_from_slice(data);
        self.emit_pieces(stream, false, emit);
    }

    /// Emits what is left of both streams and gives the tail.
    pub fn finish(mut self, emit: &mut dyn FnMut(Stream, &str)) -> Vec<String> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            self.emit_pieces(stream, true, emit);
        }
        self.tail.into_iter().collect()
    }

    fn emit_pieces(&mut self, stream: Stream, at_end: bool, emit: &mut dyn FnMut(Stream, &str)) {
        let which = stream as usize;
        while let Some(end) = self.piece_end(&self.pending[which], at_end) {
            let piece: Vec<u8> = self.pending[which].drain(..end).collect();
            self.emit(stream, &piece, emit);
        }
    }

    /// Where the next piece of `pending` ends: after its newline, or at a cut; `None` while
    /// what is still to come can change that (or nothing is pending).
    fn piece_end(&self, pending: &[u8], at_end: bool) -> Option<usize> {
        let window = &pending[..pending.len().min(MAX_LINE)];
        if let Some(at) = window.iter().position(|b| *b == b'\n') {
            return Some(at + 1);
        }
        if pending.len() < MAX_LINE {
            return (at_end && !pending.is_empty()).then_some(pending.len());
        }
        // A cut at MAX_LINE: first the bytes that would complete a secret begun before it,
        // unless the line or the stream ends sooner.
        let reach = MAX_LINE + self.masker.longest_on_one_line().saturating_sub(1);
        let seen = &pending[..pending.len().min(reach)];
        if seen.len() < reach && !at_end && !seen[MAX_LINE..].contains(&b'\n') {
            return None;
        }
        // A secret longer than a whole piece cannot be kept in one: cut at MAX_LINE.
        Some(match self.masker.cut_outside_secrets(seen, MAX_LINE) {
            0 => MAX_LINE,
            cut => cut,
        })
    }

    fn emit(&mut self, stream: Stream, bytes: &[u8], emit: &mut dyn FnMut(Stream, &str)) {
        let line = String::from_utf8_lossy(bytes);
        let line = line.trim_end_matches(['\r', '\n']);
        emit(stream, line);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        let shortened = match line.char_indices().nth(TAIL_LINE_CHARS) {
            // On a char boundary: a secret's bytes start on one.
            Some((at, _)) => &line[..self.masker.cut_outside_secrets(line.as_bytes(), at)],
            None => line,
        };
        self.tail.push_back(shortened.to_string());
    }
}

/// How a process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Its exit status (`None` when a signal ended it).
    pub exit_status: Option<i32>,
    /// It ran past its timeout and was stopped.
    pub timed_out: bool,
    /// A stop signal of the run ended it.
    pub stopped: bool,
    /// The last lines of output (both streams, in order of arrival).
    pub tail: Vec<String>,
}

/// A program to run.
pub struct Program<'a> {
    /// Run through `/bin/sh -c`, like the original's command strings.
    pub shell_command: &'a str,
    /// Variables on top of `HOME` and the fixed `PATH`.
    pub env: &'a [(String, String)],
    /// Stopped (terminated, then killed) after this long.
    pub timeout: Duration,
    /// Bytes of output (both streams) passed to the lines; the rest is dropped, and a
    /// [`truncation_marker`] line ends the output (`max_program_output`).
    pub max_output: u64,
    /// The execution's secrets: no cut of an output line splits one.
    pub masker: &'a Masker,
}

/// Runs the program; every output line goes to `on_line` (for logs and patterns). Output
/// beyond the program's `max_output` is dropped and ends in the marker line (on the stream
/// that went beyond it); the program runs on to its end or timeout.
pub async fn run(
    program: &Program<'_>,
    stop: watch::Receiver<Stop>,
    mut on_line: impl FnMut(Stream, &str) + Send,
) -> std::io::Result<Finished> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(program.shell_command)
        .env_clear()
        .env("PATH", EXEC_PATH);
    if let Some(home) = std::env::var_os("HOME") {
        cmd.env("HOME", home);
    }
    for (k, v) in program.env {
        cmd.env(k, v);
    }
    let limits = Limits {
        timeout: program.timeout,
        max_output: program.max_output,
    };
    let mut lines = Lines::new(program.masker.clone());
    let ended = run_limited(
        &mut cmd,
        limits,
        Overflow::Discard,
        Some(stop),
        |stream, data| lines.push(stream, data, &mut on_line),
    )
    .await?;
    let mut tail = lines.finish(&mut on_line);
    if ended.truncated {
        let marker = truncation_marker(program.max_output);
        on_line(Stream::Stderr, &marker);
        tail.push(marker);
    }
    Ok(Finished {
        exit_status: ended.status.code(),
        timed_out: ended.timed_out,
        stopped: ended.stopped,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(pieces: &[&[u8]]) -> Vec<String> {
        lines_and_tail(Masker::default(), pieces).0
    }

    /// The lines emitted, each masked as the node's log masks it, and the tail.
    fn lines_and_tail(masker: Masker, pieces: &[&[u8]]) -> (Vec<String>, Vec<String>) {
        let mut lines = Lines::new(masker.clone());
        let mut seen = Vec::new();
        let mut emit = |_: Stream, line: &str| seen.push(masker.mask(line).into_owned());
        for piece in pieces {
            lines.push(Stream::Stdout, piece, &mut emit);
        }
        let tail = lines.finish(&mut emit);
        (seen, tail)
    }

    #[test]
    fn no_cut_splits_a_secret_however_the_bytes_arrive() {
        let masker = Masker::default();
        masker.learn("s3cret-Pa55");
        // The secret crosses the cut at MAX_LINE, in one write or in two around the cut, and
        // at the very end of the output.
        let mut text = vec![b'y'; MAX_LINE - 2];
        text.extend_from_slice(b"s3cret-Pa55 after\n");
        let mut at_the_end = vec![b'y'; MAX_LINE - 2];
        at_the_end.extend_from_slice(b"s3cret-Pa55");
        for output in [&text, &at_the_end] {
            for split in [1, MAX_LINE - 1, MAX_LINE, MAX_LINE + 3, output.len()] {
                let (lines, _) =
                    lines_and_tail(masker.clone(), &[&output[..split], &output[split..]]);
                assert!(lines.iter().all(|l| l.len() <= MAX_LINE));
                assert_eq!(lines.len(), 2, "split at {split}");
                assert!(
                    lines
                        .iter()
                        .all(|l| !l.contains("Pa55") && !l.ends_with("s3")),
                    "split at {split}: {:?}",
                    lines
                        .iter()
                        .map(|l| &l[l.len().saturating_sub(20)..])
                        .collect::<Vec<_>>()
                );
                assert!(
                    lines[1].starts_with("****"),
                    "split at {split}: {}",
                    lines[1]
                );
            }
        }
    }

    #[test]
    fn a_tail_line_is_not_shortened_inside_a_secret() {
        let masker = Masker::default();
        masker.learn("s3cret-Pa55");
        let line = format!("{}s3cret-Pa55\n", "y".repeat(TAIL_LINE_CHARS - 3));
        let (_, tail) = lines_and_tail(masker.clone(), &[line.as_bytes()]);
        assert_eq!(tail, ["y".repeat(TAIL_LINE_CHARS - 3)]);
        // Without a secret there, a tail line keeps its first TAIL_LINE_CHARS characters.
        let (_, tail) = lines_and_tail(masker, &["é".repeat(600).as_bytes()]);
        assert_eq!(tail, ["é".repeat(TAIL_LINE_CHARS)]);
    }

    #[test]
    fn long_lines_are_cut_the_same_however_the_bytes_arrive() {
        let mut text = vec![b'x'; 2 * MAX_LINE + 100];
        text.extend_from_slice(b"\nshort\n");
        let whole = lines_of(&[&text]);
        assert_eq!(
            whole.iter().map(String::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 100, 5]
        );
        for cut in [
            1,
            100,
            MAX_LINE - 1,
            MAX_LINE,
            MAX_LINE + 1,
            2 * MAX_LINE + 100,
        ] {
            assert_eq!(
                lines_of(&[&text[..cut], &text[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let bytewise: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(lines_of(&bytewise), whole);
    }
}
