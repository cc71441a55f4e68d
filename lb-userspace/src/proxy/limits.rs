//! What bounds a proxied connection besides its read timeouts: a deadline on every write
//! (a peer that stops reading is cut off), a wait for readability that holds no buffer
//! (idle connections cost no read buffer), and the watch over an HTTP/2 connection (idle
//! with no stream, or sending responses that make no progress).

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};

use super::{
    body::{BoxError, ProxyBody},
    observe::Traffic,
};

/// A stream whose writes must make progress within `timeout`: a write, flush or shutdown
/// that stays pending that long fails with `TimedOut`, so a peer that never reads (its
/// receive window full) cannot hold the connection, nor the one on the other side, for
/// ever. Reads pass through; their deadlines are the caller's.
pub struct Deadlined<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write is pending; allocated on the first stall only.
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Where the bytes read and written are counted, if anywhere.
    traffic: Option<Arc<Traffic>>,
}

impl<S> Deadlined<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Deadlined {
            inner,
            timeout,
            stall: None,
            armed: false,
            traffic: None,
        }
    }

    /// Count the bytes read and written in `traffic`.
    pub fn counted(mut self, traffic: Arc<Traffic>) -> Self {
        self.traffic = Some(traffic);
        self
    }

    fn count_written(&self, poll: &Poll<io::Result<usize>>) {
        if let (Some(t), Poll::Ready(Ok(n))) = (&self.traffic, poll) {
            t.written.fetch_add(*n as u64, Relaxed);
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// After the inner stream answered `poll`: disarm on progress; on pending, arm the
    /// deadline (once per stall) and fail when it has passed.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.armed = false;
            return poll;
        }
        let at = Instant::now() + self.timeout;
        let stall = match &mut self.stall {
            Some(s) if self.armed => s,
            Some(s) => {
                s.as_mut().reset(at);
                s
            }
            None => self.stall.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        self.armed = true;
        ready!(stall.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer read nothing within the write deadline",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlined<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Some(t), Poll::Ready(Ok(()))) = (&self.traffic, &poll) {
            let n = buf.filled().len() - before;
            t.read.fetch_add(n as u64, Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlined<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        self.count_written(&poll);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_written(&poll);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }
}

/// A client stream that can wait for its next bytes without a buffer: an idle keep-alive
/// connection then holds no read buffer (16 KiB each before; 10,000 idle clients are
/// common).
pub trait Readable {
    /// Resolves when a read may find bytes (it may still wait: then the read does).
    fn readable(&self) -> impl Future<Output = ()> + Send;
}

impl Readable for Deadlined<TcpStream> {
    async fn readable(&self) {
        // Peeking, not `TcpStream::readable`: a socket just registered with tokio counts as
        // readable at once. A byte peeked (or the end of the stream) is still there for the
        // read that follows.
        let _ = self.inner.peek(&mut [0u8; 1]).await;
    }
}

impl Readable for tokio_rustls::server::TlsStream<Deadlined<TcpStream>> {
    async fn readable(&self) {
        let (tcp, tls) = self.get_ref();
        // Plaintext already decrypted is readable at once; otherwise TLS needs more bytes.
        if tls.wants_read() {
            tcp.readable().await;
        }
    }
}

/// What an HTTP/2 connection is doing, for its watch: requests in flight (from their
/// arrival until their response body is dropped), response bodies being sent, and when
/// each last changed. Shared with hyper's service, hence atomics.
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    sending: AtomicUsize,
    /// Milliseconds since `epoch`: when the last request ended (idle since then), and when a
    /// response body last began or yielded a frame.
    idle_since: AtomicU64,
    progress: AtomicU64,
}

/// What the watch should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet; look again at this instant.
    CheckAt(Instant),
    /// No stream for the idle timeout: say GOAWAY.
    Idle,
    /// Responses are being sent but none moved for the stall timeout: the client stopped
    /// reading (or opening its flow-control window); close.
    Stalled,
}

impl Activity {
    pub fn new(now: Instant) -> Arc<Activity> {
        Arc::new(Activity {
            epoch: now,
            in_flight: AtomicUsize::new(0),
            sending: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            progress: AtomicU64::new(0),
        })
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// A request arrived; it is in flight until the returned guard is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    pub fn verdict(&self, now: Instant, idle: Duration, stall: Duration) -> Verdict {
        if self.in_flight.load(Relaxed) == 0 {
            let at = self.at(self.idle_since.load(Relaxed)) + idle;
            return if now >= at {
                Verdict::Idle
            } else {
                Verdict::CheckAt(at)
            };
        }
        if self.sending.load(Relaxed) == 0 {
            // Waiting for servers or request bodies: their own timeouts bound that.
            return Verdict::CheckAt(now + stall);
        }
        let at = self.at(self.progress.load(Relaxed)) + stall;
        if now >= at {
            Verdict::Stalled
        } else {
            Verdict::CheckAt(at)
        }
    }
}

/// A request of an HTTP/2 connection, in flight while this lives.
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// The response body, counted as being sent while it lives.
    pub fn body(self, inner: ProxyBody) -> ProxyBody {
        let a = &self.0;
        a.progress.store(a.ms(Instant::now()), Relaxed);
        a.sending.fetch_add(1, Relaxed);
        http_body_util::BodyExt::boxed(Sending { inner, turn: self })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Relaxed) == 1 {
            a.idle_since.store(a.ms(Instant::now()), Relaxed);
        }
    }
}

struct Sending {
    inner: ProxyBody,
    turn: InFlight,
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.turn.0.sending.fetch_sub(1, Relaxed);
    }
}

impl Body for Sending {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let a = &self.turn.0;
        a.progress.store(a.ms(Instant::now()), Relaxed);
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(10);
    const STALL: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_idle_without_streams_and_stalled_without_progress() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let a = Activity::new(t0);
        assert_eq!(a.verdict(t0, IDLE, STALL), Verdict::CheckAt(t0 + IDLE));
        assert_eq!(a.verdict(t0 + s(10), IDLE, STALL), Verdict::Idle);
        // A request waiting for its server is neither idle nor stalled.
        tokio::time::advance(s(60)).await;
        let request = a.request();
        let now = Instant::now();
        assert_eq!(a.verdict(now, IDLE, STALL), Verdict::CheckAt(now + STALL));
        // Its response is being sent: it must make progress within STALL.
        let body = request.body(crate::proxy::body::empty());
        assert_eq!(
            a.verdict(now + s(29), IDLE, STALL),
            Verdict::CheckAt(now + STALL)
        );
        assert_eq!(a.verdict(now + STALL, IDLE, STALL), Verdict::Stalled);
        // Once it is done, the connection is idle from then on.
        tokio::time::advance(s(20)).await;
        drop(body);
        let ended = Instant::now();
        assert_eq!(
            a.verdict(ended, IDLE, STALL),
            Verdict::CheckAt(ended + IDLE)
        );
        assert_eq!(a.verdict(ended + IDLE, IDLE, STALL), Verdict::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_at_its_deadline() {
        // A duplex pipe of 8 bytes whose reader never reads.
        let (writer, _reader) = tokio::io::duplex(8);
        let mut w = Deadlined::new(writer, Duration::from_secs(5));
        use tokio::io::AsyncWriteExt as _;
        let start = Instant::now();
        w.write_all(b"12345678").await.unwrap();
        let e = w.write_all(b"more").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
