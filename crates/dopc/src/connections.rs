//! The connections the server keeps open: at most `max_connections` at once.
//!
//! Every connection costs a file descriptor from the moment it is accepted, long before a
//! request (and its token) is read; without a bound, clients that open connections and send
//! nothing use up the server's descriptors, and then it can open neither its databases nor
//! its logs. A connection over the bound is closed as soon as it is accepted (it never waits:
//! waiting would hold its descriptor too). One within it is closed when its first request head
//! has not arrived within `header_read_timeout_secs` of its accept (counted here: hyper's own
//! header-read timeout only starts once the first bytes have told it the HTTP version, so a
//! connection that sends nothing was never closed), its later heads by hyper's timeout (see
//! `server::serve`); a TLS handshake gets as long, from the TLS acceptor.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An acceptor that admits a connection only while fewer than the limit are open, then hands
/// it to `inner` (plain, or the TLS handshake).
#[derive(Clone)]
pub struct Limited<A> {
    inner: A,
    open: Arc<Semaphore>,
    /// When a refusal was last logged (ms since the epoch): once per 10 s at most, so that a
    /// flood of connections does not become a flood of log lines.
    last_said: Arc<AtomicU64>,
    limit: usize,
    first_head: Duration,
}

impl<A> Limited<A> {
    /// At most `limit` connections (at least one) through `inner`, each closed unless its
    /// first request head has arrived within `first_head` of its accept.
    pub fn new(inner: A, limit: usize, first_head: Duration) -> Limited<A> {
        let limit = limit.max(1);
        Limited {
            inner,
            open: Arc::new(Semaphore::new(limit)),
            last_said: Arc::default(),
            limit,
            first_head,
        }
    }

    fn refused(&self) -> io::Error {
        let now = dop_store::now_ms();
        let last = self.last_said.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self
                .last_said
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit = self.limit,
                "connections refused: {} are open (max_connections)",
                self.limit
            );
        }
        io::Error::other("too many connections")
    }
}

impl<A, I, S> Accept<I, S> for Limited<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Counted<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            // Dropping the stream closes the connection now.
            drop(stream);
            let refused = self.refused();
            return Box::pin(std::future::ready(Err(refused)));
        };
        let deadline = tokio::time::Instant::now() + self.first_head;
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            Ok((
                Counted {
                    stream,
                    first_head: Some(FirstHead {
                        deadline: Box::pin(tokio::time::sleep_until(deadline)),
                        newlines: 0,
                    }),
                    _permit: permit,
                },
                service,
            ))
        })
    }
}

/// A connection counted against the limit until it is dropped (closed).
pub struct Counted<S> {
    stream: S,
    /// Until the end of the first request head has been read.
    first_head: Option<FirstHead>,
    _permit: OwnedSemaphorePermit,
}

/// The wait for the end of a connection's first request head.
struct FirstHead {
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Line ends in a row so far (`\r` aside): two end the head.
    newlines: u8,
}

impl FirstHead {
    /// Reads `bytes`; true once the head has ended.
    fn ended_in(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            match b {
                b'\n' => {
                    self.newlines += 1;
                    if self.newlines == 2 {
                        return true;
                    }
                }
                b'\r' => {}
                _ => self.newlines = 0,
            }
        }
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some(head) = this.first_head.as_mut() else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                if head.ended_in(&buf.filled()[before..]) {
                    this.first_head = None;
                }
                Poll::Ready(Ok(()))
            }
            // Nothing more yet: past the deadline the connection is closed (a client that
            // sends its head a byte at a time gets no longer than one that sends nothing).
            Poll::Pending if head.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request head within header_read_timeout_secs",
                )))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum_server::accept::DefaultAcceptor;

    #[tokio::test]
    async fn a_connection_over_the_limit_is_refused_until_one_closes() {
        let limited = Limited::new(DefaultAcceptor::new(), 2, Duration::from_secs(10));
        let first = limited.accept(tokio::io::empty(), ()).await.unwrap();
        let second = limited.accept(tokio::io::empty(), ()).await.unwrap();
        let third = limited.accept(tokio::io::empty(), ()).await;
        assert_eq!(third.err().unwrap().to_string(), "too many connections");
        drop(first);
        assert!(limited.accept(tokio::io::empty(), ()).await.is_ok());
        drop(second);
    }

    #[tokio::test]
    async fn the_first_head_ends_at_an_empty_line() {
        let mut head = FirstHead {
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(10))),
            newlines: 0,
        };
        assert!(!head.ended_in(b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(!head.ended_in(b"\n"));
        assert!(head.ended_in(b"\r\n"));
        let mut bare = FirstHead {
            newlines: 0,
            ..head
        };
        assert!(!bare.ended_in(b"GET / HTTP/1.1\nA: b\n"));
        assert!(bare.ended_in(b"\nbody"));
    }

    #[tokio::test]
    async fn a_connection_without_a_head_is_closed_at_the_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limited = Limited::new(DefaultAcceptor::new(), 2, Duration::from_millis(200));
        let (mut client, server) = tokio::io::duplex(64);
        let (mut accepted, ()) = limited.accept(server, ()).await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(accepted.read(&mut buf).await.unwrap(), 16);
        let err = accepted.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // One whose head ended may wait for its body as long as it likes.
        let (mut client, server) = tokio::io::duplex(64);
        let (mut accepted, ()) = limited.accept(server, ()).await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(accepted.read(&mut buf).await.unwrap(), 18);
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            client.write_all(b"x").await.unwrap();
            client
        });
        assert_eq!(accepted.read(&mut buf).await.unwrap(), 1);
        drop(late.await.unwrap());
    }
}
