//! One command's life on a channel, shared by both ways of running it (a channel of its own, or
//! a line sent to a [`shell`](super::shell) session): its deadline, the run's stop requests, and
//! the grace a node gets to confirm the end once the command was signalled.
//!
//! A command past its deadline, or stopped by the run (terminate or kill), is signalled and its
//! channel closed; the node then has [`CLOSE_GRACE`] to confirm, so that a node that never does
//! cannot hold the run. Only the signal differs between the two ways: a channel of its own is
//! signalled directly, a shell session's driver forwards what it is sent to the command.

use std::time::Duration;

use russh::client::Msg;
use russh::{Channel, ChannelMsg, Sig};
use tokio::sync::watch;

use super::SshError;
use crate::exec::{Finished, Lines, Stop, Stream};

/// How long a node may take to confirm the close of a channel whose command was signalled.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// What a running command's loop has to act on next.
pub enum Event {
    /// A message of the channel; `None` once the channel is closed.
    Message(Option<ChannelMsg>),
    /// The command must be signalled with this (its deadline passed, or the run asked); the
    /// channel is to be closed after.
    Signal(Sig),
    /// The node did not confirm the close within the grace: stop waiting for it.
    GiveUp,
}

/// A running command's deadline, the run's stop requests and the grace after either.
pub struct Watch {
    stop: watch::Receiver<Stop>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    give_up: std::pin::Pin<Box<tokio::time::Sleep>>,
    closing: bool,
    stop_gone: bool,
    /// The command ran past its deadline.
    pub timed_out: bool,
    /// The run stopped the command (terminate or kill).
    pub stopped: bool,
}

impl Watch {
    /// Starts watching a command that may run for `timeout`.
    pub fn new(timeout: Duration, stop: watch::Receiver<Stop>) -> Watch {
        Watch {
            stop,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            // Armed (with CLOSE_GRACE) only once the command was signalled.
            give_up: Box::pin(tokio::time::sleep(Duration::from_secs(86_400 * 365))),
            closing: false,
            stop_gone: false,
            timed_out: false,
            stopped: false,
        }
    }

    /// Whether the command was signalled (timed out or stopped).
    pub fn ended_by_us(&self) -> bool {
        self.timed_out || self.stopped
    }

    fn start_closing(&mut self) {
        if !self.closing {
            self.closing = true;
            self.give_up
                .as_mut()
                .reset(tokio::time::Instant::now() + CLOSE_GRACE);
        }
    }

    /// Waits for `step` of starting the command (the exec request, its input, the line sent to
    /// a shell session) under the same deadline and stop requests as the command itself: a
    /// node that stops reading holds neither. `Err(signal)` when the deadline passed or the run
    /// asked first: the command (if it started) is to be signalled and its channel closed, and
    /// [`Watch::next`] then gives up after the grace.
    pub async fn starting<T>(
        &mut self,
        step: impl std::future::Future<Output = T>,
    ) -> Result<T, Sig> {
        tokio::pin!(step);
        loop {
            tokio::select! {
                done = &mut step => return Ok(done),
                () = &mut self.deadline, if !self.timed_out => {
                    self.timed_out = true;
                    self.start_closing();
                    return Err(Sig::TERM);
                }
                changed = self.stop.changed(), if !self.stop_gone => {
                    if changed.is_err() {
                        self.stop_gone = true;
                        continue;
                    }
                    let level = *self.stop.borrow();
                    if level >= Stop::Terminate {
                        self.stopped = true;
                        self.start_closing();
                        return Err(if level == Stop::Kill { Sig::KILL } else { Sig::TERM });
                    }
                }
            }
        }
    }

    /// The next thing to act on.
    pub async fn next(&mut self, channel: &mut Channel<Msg>) -> Event {
        loop {
            tokio::select! {
                () = &mut self.give_up, if self.closing => return Event::GiveUp,
                msg = channel.wait() => return Event::Message(msg),
                () = &mut self.deadline, if !self.timed_out => {
                    self.timed_out = true;
                    self.start_closing();
                    return Event::Signal(Sig::TERM);
                }
                changed = self.stop.changed(), if !self.stop_gone => {
                    if changed.is_err() {
                        // Nobody can ask any more: stop listening (a closed watch is always ready).
                        self.stop_gone = true;
                        continue;
                    }
                    let level = *self.stop.borrow();
                    if level >= Stop::Terminate {
                        self.stopped = true;
                        self.start_closing();
                        return Event::Signal(if level == Stop::Kill { Sig::KILL } else { Sig::TERM });
                    }
                }
            }
        }
    }
}

/// Signals the command on `channel` and closes it, each within [`CLOSE_GRACE`]: on a node that
/// stopped reading, the messages wait behind data that will never be taken, and a stop must
/// not wait with them.
pub async fn signal_and_close(channel: &Channel<Msg>, signal: Sig) {
    let _ = tokio::time::timeout(CLOSE_GRACE, channel.signal(signal)).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, channel.close()).await;
}

/// Runs `command` on a channel of its own (the node's login shell runs it, as `ssh node
/// command` does), with `input` on its standard input, or none (an immediate end of file).
/// `Err(NoExitStatus)` when the channel ended without saying how the command did. No cut of
/// an output line splits one of `masker`'s secrets.
pub async fn on_channel(
    mut channel: Channel<Msg>,
    command: &str,
    input: Option<&[u8]>,
    timeout: Duration,
    stop: watch::Receiver<Stop>,
    masker: &dop_run::Masker,
    on_line: &mut (dyn FnMut(Stream, &str) + Send),
) -> Result<Finished, SshError> {
    let mut watch = Watch::new(timeout, stop);
    let start = async {
        channel.exec(true, command).await?;
        if let Some(input) = input {
            channel.data(input).await?;
        }
        // A command that reads its standard input sees its end instead of waiting for it until
        // its timeout (and reads the same as in a shell session, where it is /dev/null).
        channel.eof().await
    };
    match watch.starting(start).await {
        Ok(started) => started?,
        Err(sig) => signal_and_close(&channel, sig).await,
    }
    let mut lines = Lines::new(masker.clone());
    let (mut exit_status, mut signalled) = (None, false);
    loop {
        match watch.next(&mut channel).await {
            Event::Message(Some(ChannelMsg::Data { data })) => {
                lines.push(Stream::Stdout, &data, on_line)
            }
            Event::Message(Some(ChannelMsg::ExtendedData { data, ext: 1 })) => {
                lines.push(Stream::Stderr, &data, on_line)
            }
            Event::Message(Some(ChannelMsg::ExitStatus { exit_status: s })) => {
                exit_status = i32::try_from(s).ok()
            }
            Event::Message(Some(ChannelMsg::ExitSignal { .. })) => signalled = true,
            Event::Message(Some(_)) => {}
            Event::Message(None) | Event::GiveUp => break,
            Event::Signal(sig) => signal_and_close(&channel, sig).await,
        }
    }
    let tail = lines.finish(on_line);
    if exit_status.is_none() && !signalled && !watch.ended_by_us() {
        return Err(SshError::NoExitStatus);
    }
    Ok(Finished {
        exit_status,
        timed_out: watch.timed_out,
        stopped: watch.stopped,
        tail,
    })
}
