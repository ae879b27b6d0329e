//! Running a local program for a command (through [`dop_run::process::run_limited`]): its own
//! process group, a clean environment, a timeout, escalation on signals, and output read in
//! bounded pieces so that a command printing megabytes (or binary) neither blocks the run nor
//! fills memory, and capped (`max_program_output`) so that it does not fill the log either.

use std::collections::VecDeque;
use std::time::Duration;

use dop_run::process::{run_limited, truncation_marker, Limits, Overflow};
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
#[derive(Default)]
pub struct Lines {
    pending: [Vec<u8>; 2],
    tail: VecDeque<String>,
}

impl Lines {
    /// Adds bytes of one stream; calls `emit` for every complete line. A line longer than
    /// `MAX_LINE` is cut every `MAX_LINE` bytes from its start, however the bytes arrived (in
    /// one piece or many).
    pub fn push(&mut self, stream: Stream, data: &[u8], emit: &mut dyn FnMut(Stream, &str)) {
        let which = stream as usize;
        self.pending[which].extend_from_slice(data);
        loop {
            let pending = &self.pending[which];
            let window = &pending[..pending.len().min(MAX_LINE)];
            let end = match window.iter().position(|b| *b == b'\n') {
                Some(at) => at + 1,
                None if pending.len() >= MAX_LINE => MAX_LINE,
                None => break,
            };
            let piece: Vec<u8> = self.pending[which].drain(..end).collect();
            self.emit(stream, &piece, emit);
        }
    }

    /// Emits what is left of both streams and gives the tail.
    pub fn finish(mut self, emit: &mut dyn FnMut(Stream, &str)) -> Vec<String> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.pending[stream as usize]);
            if !rest.is_empty() {
                self.emit(stream, &rest, emit);
            }
        }
        self.tail.into_iter().collect()
    }

    fn emit(&mut self, stream: Stream, bytes: &[u8], emit: &mut dyn FnMut(Stream, &str)) {
        let line = String::from_utf8_lossy(bytes);
        let line = line.trim_end_matches(['\r', '\n']);
        emit(stream, line);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.chars().take(512).collect());
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
    let mut lines = Lines::default();
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
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        let mut emit = |_: Stream, line: &str| seen.push(line.to_string());
        for piece in pieces {
            lines.push(Stream::Stdout, piece, &mut emit);
        }
        lines.finish(&mut emit);
        seen
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
