//! A long-lived shell session on a node's connection: one channel whose `/bin/sh` runs command
//! after command, each in the node's login shell (`"$SHELL" -c command`, as sshd runs the
//! command of a channel of its own), with its own process, environment, standard output and
//! error, and exit status.
//!
//! Why: a channel per command costs the node's sshd a channel set-up, a fork of itself and a
//! login shell per command (1.9 ms of sshd's CPU per `true` on the bench machine, as much as
//! the command of a fresh login leaves to do); in a session the same command costs the fork
//! and exec of the login shell alone (0.9 ms). Mitogen does the same for Ansible, with Python.
//!
//! The protocol. The channel runs `exec /bin/sh -s` (through the login shell, whatever it is),
//! and dopi sends it a [`prelude`] that defines `__dop_run` and prints a ready line. Each
//! command is then one line, `__dop_run N 'the command'`, single-quoted, so the driver shell
//! takes it as data. `__dop_run` starts the command in the background with /dev/null as its
//! standard input, waits for it, and prints a marker on each stream: `TOKEN N STATUS` on
//! standard output and `TOKEN N` on standard error, after everything the command wrote there.
//! TOKEN is random per session, so no output can pass for a marker. A signal sent to the
//! session (TERM; USR1 for a kill, which the driver cannot trap itself) is forwarded to the
//! command and everything it started (on a channel of its own, sshd signals its shell alone).
//!
//! What differs from a channel of its own: a command whose process is ended by a signal reports
//! the shell's 128 + n as its exit status instead of no status; its standard input is /dev/null
//! and it starts with SIGINT and SIGQUIT ignored (a background job of a shell without job
//! control); `$0` is the login shell's path. Commands that leave work running in the background
//! (which would keep writing into the session after their end) and commands with input run on
//! a channel of their own ([`suits`]), and so does every command of a node whose sshd does not
//! give a usable session (a forced command, a shell that does not start `/bin/sh`).

use std::time::Duration;

use russh::client::Msg;
use russh::{Channel, ChannelMsg, Sig};
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::command::{signal_and_close, Event, Watch};
use super::SshError;
use crate::exec::{Finished, Lines, Stop, Stream};
use crate::plugins::ssh_custom::shell_quote;

/// What the channel runs: the driver, a POSIX shell reading its commands from the channel.
const DRIVER: &str = "exec /bin/sh -s";
/// How much of what a node says while refusing a session is kept for the reason.
const SAID_KEPT: usize = 1024;
/// How long a driver that ended (or closed its output) is given to finish saying why.
const SAID_GRACE: Duration = Duration::from_millis(500);

/// The driver's functions and traps, and its ready line. `SHLVL` is what sshd gave, so that a
/// login bash reads its `.bashrc` for each command as it does under sshd. A TERM or USR1 sent
/// to the session goes to its whole process group (sshd makes the session one): the command
/// and everything it started, so that a command past its timeout leaves nothing running. The
/// driver ignores the TERM itself, to forward the kill that may follow; a session that was
/// signalled is closed.
fn prelude(token: &str) -> String {
    format!(
        r#"unset SHLVL
__dop_run() {{
  "${{SHELL:-/bin/sh}}" -c "$2" </dev/null &
  __dop_p=$!
  while :; do
    wait "$__dop_p" 2>/dev/null
    __dop_s=$?
    [ "$__dop_s" -gt 128 ] && kill -0 "$__dop_p" 2>/dev/null || break
  done
  __dop_p=
  printf '%s %s %s\n' {token} "$1" "$__dop_s"
  printf '%s %s\n' {token} "$1" >&2
}}
trap 'trap "" TERM; kill -TERM 0 2>/dev/null' TERM
trap 'kill -KILL 0 2>/dev/null' USR1
printf '%s ready\n' {token}
"#
    )
}

/// Whether `command` may run in a shell session: it does not start work in the background
/// (a lone `&`, `nohup`, `setsid`, `disown`), which could go on writing into the session after
/// the command's end and into the next command's output. On a channel of its own, such a
/// command ends when what it started closes its output, as it always did.
pub fn suits(command: &str) -> bool {
    let bytes = command.as_bytes();
    let lone_ampersand = bytes.iter().enumerate().any(|(i, &b)| {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + 1).copied();
        b == b'&'
            && !matches!(before, Some(b'&' | b'>' | b'<' | b'|'))
            && !matches!(after, Some(b'&' | b'>'))
    });
    let starts_background_work = command
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .any(|word| matches!(word, "nohup" | "setsid" | "disown"));
    !lone_ampersand && !starts_background_work
}

/// Why a session could not be started.
pub enum NotStarted {
    /// The node will not give one (its sshd or login shell does not run the driver): the
    /// connection's commands take a channel each from now on.
    Refused(String),
    /// No ready line in time: this command takes a channel of its own, the next tries again.
    Slow,
}

/// A started session, idle or running a command; its permit is its place among the
/// connection's channels.
pub struct Shell {
    channel: Channel<Msg>,
    token: String,
    serial: u64,
    _permit: OwnedSemaphorePermit,
}

/// The random token of a session: 128 bits in hex.
fn new_token() -> String {
    format!(
        "dop-{:016x}{:016x}",
        super::admission::random_u64(),
        super::admission::random_u64()
    )
}

impl Shell {
    /// Starts the driver on `channel` and waits up to `within` for its ready line. On failure
    /// the channel is closed and the permit handed back.
    pub async fn start(
        mut channel: Channel<Msg>,
        permit: OwnedSemaphorePermit,
        within: Duration,
    ) -> Result<Shell, (NotStarted, OwnedSemaphorePermit)> {
        let token = new_token();
        let ready = format!("{token} ready\n");
        let started = async {
            channel.exec(true, DRIVER).await?;
            channel.data(prelude(&token).as_bytes()).await?;
            let mut seen: Vec<u8> = Vec::new();
            // What the node said on standard error, for the reason of a refusal.
            let mut said: Vec<u8> = Vec::new();
            let refused = |why: &str, said: &[u8]| {
                let said = String::from_utf8_lossy(said);
                match said.trim() {
                    "" => why.to_string(),
                    said => format!("{why}; it said: {said}"),
                }
            };
            // How the driver ended, once it has: sshd may send the exit status before the
            // last of its standard error, so what it said is read until the channel's end.
            let mut ended: Option<String> = None;
            let mut eof = false;
            loop {
                let message = if ended.is_none() && !eof {
                    channel.wait().await
                } else {
                    tokio::time::timeout(SAID_GRACE, channel.wait())
                        .await
                        .unwrap_or(None)
                };
                match message {
                    Some(ChannelMsg::Data { data }) if ended.is_none() => {
                        seen.extend_from_slice(&data);
                        if find(&seen, ready.as_bytes()).is_some() {
                            return Ok(Ok(()));
                        }
                        // What the login shell printed before the driver (a `.bashrc`) is not
                        // a command's: only the tail that may start the ready line is kept.
                        let keep = seen.len().saturating_sub(ready.len());
                        seen.drain(..keep);
                    }
                    Some(ChannelMsg::ExtendedData { data, .. }) => {
                        let room = SAID_KEPT.saturating_sub(said.len());
                        said.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    Some(ChannelMsg::Failure) => {
                        return Ok(Err(refused("the node refused to run a command", &said)))
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        ended.get_or_insert(format!(
                            "the driver ended with exit status {exit_status}"
                        ));
                    }
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                        ended.get_or_insert(format!("the driver ended by signal {signal_name:?}"));
                    }
                    Some(ChannelMsg::Eof) => eof = true,
                    Some(ChannelMsg::Close) | None => {
                        let why = ended
                            .as_deref()
                            .unwrap_or("the session closed before the driver started");
                        return Ok(Err(refused(why, &said)));
                    }
                    Some(_) => {}
                }
            }
        };
        let outcome: Result<Result<(), String>, russh::Error> =
            match tokio::time::timeout(within, started).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    let _ = channel.close().await;
                    return Err((NotStarted::Slow, permit));
                }
            };
        match outcome {
            Ok(Ok(())) => Ok(Shell {
                channel,
                token,
                serial: 0,
                _permit: permit,
            }),
            Ok(Err(why)) => {
                let _ = channel.close().await;
                Err((NotStarted::Refused(why), permit))
            }
            Err(e) => {
                let _ = channel.close().await;
                Err((NotStarted::Refused(e.to_string()), permit))
            }
        }
    }

    /// Closes the session (its driver ends with its standard input).
    pub async fn close(self) {
        // Within a grace: a node that stopped reading must not hold the caller.
        let _ = tokio::time::timeout(super::command::CLOSE_GRACE, self.channel.close()).await;
    }

    /// Whether the session is quiet, as an idle one must be: anything it sent since its last
    /// command (output of something that command left running, or the end of the session)
    /// means it cannot be trusted with the next one.
    pub fn is_quiet(&mut self) -> bool {
        use futures_util::FutureExt;
        loop {
            match self.channel.wait().now_or_never() {
                None => return true,
                // Flow control and late replies say nothing of the driver.
                Some(Some(
                    ChannelMsg::WindowAdjusted { .. } | ChannelMsg::Success | ChannelMsg::Failure,
                )) => {}
                Some(_) => return false,
            }
        }
    }

    /// Runs `command` in the session. `Ok((finished, reusable))`; a session that is not
    /// reusable (the command was signalled) is to be closed. `Err(NoExitStatus)` when the
    /// session ended before the command's end was reported (its driver was killed, or the
    /// connection dropped).
    pub async fn run(
        &mut self,
        command: &str,
        timeout: Duration,
        stop: watch::Receiver<Stop>,
        masker: &dop_run::Masker,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<(Finished, bool), SshError> {
        self.serial += 1;
        let serial = self.serial;
        let line = format!("__dop_run {serial} {}\n", shell_quote(command));
        let mut watch = Watch::new(timeout, stop);
        match watch.starting(self.channel.data(line.as_bytes())).await {
            Ok(sent) => sent?,
            Err(sig) => signal_and_close(&self.channel, forwarded(sig)).await,
        }
        let mut lines = Lines::new(masker.clone());
        let mut out = Framed::new(format!("{} {serial} ", self.token).into_bytes());
        let mut err = Framed::new(format!("{} {serial}\n", self.token).into_bytes());
        while !(out.ended() && err.ended()) {
            match watch.next(&mut self.channel).await {
                Event::Message(Some(ChannelMsg::Data { data })) => out.push(&data, &mut |bytes| {
                    lines.push(Stream::Stdout, bytes, on_line)
                }),
                Event::Message(Some(ChannelMsg::ExtendedData { data, ext: 1 })) => err
                    .push(&data, &mut |bytes| {
                        lines.push(Stream::Stderr, bytes, on_line)
                    }),
                Event::Message(Some(_)) => {}
                Event::Message(None) | Event::GiveUp => break,
                Event::Signal(sig) => signal_and_close(&self.channel, forwarded(sig)).await,
            }
        }
        // What was held back as the possible start of a marker that never came is output.
        out.flush(&mut |bytes| lines.push(Stream::Stdout, bytes, on_line));
        err.flush(&mut |bytes| lines.push(Stream::Stderr, bytes, on_line));
        let tail = lines.finish(on_line);
        let status = out.status();
        if watch.ended_by_us() {
            return Ok((
                Finished {
                    // The shell's 128 + n of the signal sent is no status of the command's.
                    exit_status: status.filter(|s| *s <= 128),
                    timed_out: watch.timed_out,
                    stopped: watch.stopped,
                    tail,
                },
                false,
            ));
        }
        match status {
            Some(status) if err.ended() => Ok((
                Finished {
                    exit_status: Some(status),
                    timed_out: false,
                    stopped: false,
                    tail,
                },
                true,
            )),
            _ => Err(SshError::NoExitStatus),
        }
    }
}

/// The signal the driver is sent for `sig`: it forwards TERM; it cannot trap KILL, so a kill
/// is asked for with USR1.
fn forwarded(sig: Sig) -> Sig {
    match sig {
        Sig::KILL => Sig::USR1,
        other => other,
    }
}

/// One stream of a session's command: its bytes up to the marker go to the command's output,
/// the marker's line ends it.
struct Framed {
    /// `TOKEN N ` on standard output (the status and a newline follow), `TOKEN N\n` on
    /// standard error.
    marker: Vec<u8>,
    /// Bytes not passed on yet: they may be the start of the marker.
    held: Vec<u8>,
    /// What followed the marker, once found, up to its newline.
    after_marker: Option<Vec<u8>>,
    ended: bool,
}

impl Framed {
    fn new(marker: Vec<u8>) -> Framed {
        Framed {
            marker,
            held: Vec::new(),
            after_marker: None,
            ended: false,
        }
    }

    fn ended(&self) -> bool {
        self.ended
    }

    /// The status after a standard output marker.
    fn status(&self) -> Option<i32> {
        let rest = self.after_marker.as_ref().filter(|_| self.ended)?;
        std::str::from_utf8(rest).ok()?.trim().parse().ok()
    }

    /// Passes on what is held back, when no marker ended the stream.
    fn flush(&mut self, output: &mut dyn FnMut(&[u8])) {
        if self.after_marker.is_none() && !self.held.is_empty() {
            output(&self.held);
            self.held.clear();
        }
    }

    fn push(&mut self, data: &[u8], output: &mut dyn FnMut(&[u8])) {
        if self.ended {
            // Nothing comes after a marker but the driver's next answers.
            return;
        }
        if let Some(after) = self.after_marker.as_mut() {
            after.extend_from_slice(data);
        } else {
            self.held.extend_from_slice(data);
            if let Some(at) = find(&self.held, &self.marker) {
                output(&self.held[..at]);
                self.after_marker = Some(self.held[at + self.marker.len()..].to_vec());
                self.held.clear();
                if self.marker.ends_with(b"\n") {
                    // Standard error's marker is a whole line.
                    self.ended = true;
                    return;
                }
            } else {
                let safe = self.held.len().saturating_sub(self.marker.len() - 1);
                if safe > 0 {
                    output(&self.held[..safe]);
                    self.held.drain(..safe);
                }
            }
        }
        if let Some(after) = self.after_marker.as_mut() {
            if let Some(newline) = after.iter().position(|b| *b == b'\n') {
                after.truncate(newline);
                self.ended = true;
            }
        }
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_work_goes_to_a_channel_of_its_own() {
        for ok in [
            "true",
            "a && b",
            "make 2>&1 | tee log",
            "cmd >/dev/null 2>&1",
            "cmd &>/dev/null",
            "cmd |& tee x",
            "echo 'nohupx'",
            "grep -q setsid-free file",
        ] {
            assert!(suits(ok), "{ok}");
        }
        for background in [
            "sleep 10 &",
            "a & b",
            "nohup daemon",
            "setsid x >/dev/null",
            "x; disown",
            "(sleep 1)&",
        ] {
            assert!(!suits(background), "{background}");
        }
    }

    /// Feeds `pieces` to a stream's framing, as the node's packets would cut them.
    fn frame(marker: &str, pieces: &[&str]) -> (String, Framed) {
        let mut framed = Framed::new(marker.as_bytes().to_vec());
        let mut output = Vec::new();
        for piece in pieces {
            framed.push(piece.as_bytes(), &mut |b| output.extend_from_slice(b));
        }
        (String::from_utf8(output).unwrap(), framed)
    }

    #[test]
    fn output_ends_at_the_marker_wherever_the_packets_cut_it() {
        let whole = "line one\nno newline at the endT0K 7 3\nnext answer";
        for cut in 0..whole.len() {
            let (output, framed) = frame("T0K 7 ", &[&whole[..cut], &whole[cut..]]);
            assert_eq!(output, "line one\nno newline at the end", "cut at {cut}");
            assert!(framed.ended(), "cut at {cut}");
            assert_eq!(framed.status(), Some(3), "cut at {cut}");
        }
        // A marker of another command, or a partial one, is output.
        let (output, framed) = frame("T0K 7 ", &["T0K 6 0\nT0K 7", " 1"]);
        assert_eq!(output, "T0K 6 0\n");
        assert!(!framed.ended());
        assert_eq!(framed.status(), None);
        // Without its marker (the session ended under the command) all of it is output.
        let (mut output, mut framed) = frame("T0K 7 ", &["last words"]);
        framed.flush(&mut |b| output.push_str(std::str::from_utf8(b).unwrap()));
        assert_eq!(output, "last words");
        // Standard error's marker is a whole line: command 1's is no prefix of command 12's.
        let (output, framed) = frame("T0K 1\n", &["oops\nT0K 12\n", "T0K 1", "\n"]);
        assert_eq!(output, "oops\nT0K 12\n");
        assert!(framed.ended());
    }

    #[test]
    fn tokens_differ_per_session() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 32);
        assert!(prelude(&a).contains(&format!("printf '%s ready\\n' {a}")));
    }
}
