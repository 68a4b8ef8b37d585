//! Response bodies: whole, or streamed as a function produces them.
//!
//! A streamed body is a bounded channel of [`Chunk`]s from a producer (an
//! executor, or the relay of a peer's stream) to whoever sends it on (a
//! front door, the mesh, the cache's tee). Three invariants hold for every
//! layer:
//!
//! - **An explicit end.** A stream is complete only when its producer sent
//!   [`StreamTx::end`]. A producer that vanishes without it (a task aborted,
//!   a peer reset, a worker killed) is [`StreamError::Lost`], never a clean
//!   end: no layer can turn a cut stream into a body that looks complete.
//! - **Bounded memory.** The channel holds [`QUEUE`] chunks; a producer
//!   waits in [`StreamTx::send`] while it is full, so a slow client slows
//!   the function.
//! - **Cancellation by drop.** Dropping the [`BodyStream`] closes the
//!   channel; producers see it on their next send or in
//!   [`StreamTx::closed`], and stop the function. Whatever the stream
//!   holds (admission permits, in-flight counters) is released with it.
//!
//! The limits of a streaming function (the whole-stream deadline, the idle
//! gap between chunks, the maximum size) are enforced here, on the consumer
//! side, so they hold whatever the producer is.
//!
//! Written by hand rather than with `http_body_util::channel`: that one has
//! no explicit end (a dropped sender is a clean EOF), which is the one
//! property every layer needs.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// Chunks a stream's channel holds before the producer waits.
pub(crate) const QUEUE: usize = 4;
/// Largest chunk the executors read at once.
pub(crate) const CHUNK: usize = 64 * 1024;

/// What travels in a stream's channel.
#[derive(Debug)]
pub(crate) enum Chunk {
    Data(Bytes),
    /// The producer finished cleanly: the body is complete.
    End,
    /// The producer failed after the first byte.
    Abort(StreamError),
}

/// Why a stream ended before its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StreamError {
    /// The function reported an error mid-stream.
    #[error("function error {error_type}: {message}")]
    Function { error_type: String, message: String },
    /// The worker, process or instance died mid-stream.
    #[error("function crashed mid-stream: {0}")]
    Crashed(String),
    /// The whole-stream deadline passed.
    #[error("deadline of {0:?} passed mid-stream")]
    Timeout(Duration),
    /// No chunk for longer than `stream_idle_ms`.
    #[error("no data for {0:?} (stream_idle_ms)")]
    Idle(Duration),
    /// More than `max_stream_bytes`.
    #[error("stream larger than {0} bytes (max_stream_bytes)")]
    TooLarge(u64),
    /// The edge that ran the function reset its stream.
    #[error("upstream edge reset the stream: {0}")]
    Upstream(String),
    /// The producer went away without ending the stream.
    #[error("stream lost: its producer stopped without an end")]
    Lost,
    /// The edge is shutting down.
    #[error("edge is shutting down")]
    ShuttingDown,
}

impl StreamError {
    /// The `end` label of `fnroute_stream_ends_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Function { .. } => "function_error",
            Self::Crashed(_) => "crashed",
            Self::Timeout(_) => "timeout",
            Self::Idle(_) => "idle",
            Self::TooLarge(_) => "too_large",
            Self::Upstream(_) => "upstream_reset",
            Self::Lost => "lost",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// The consumer went away (the stream was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream's consumer went away")]
pub(crate) struct Gone;

/// The producing end of a stream.
#[derive(Debug)]
pub(crate) struct StreamTx {
    tx: mpsc::Sender<Chunk>,
}

impl StreamTx {
    /// Sends one chunk, waiting while the channel is full (backpressure).
    /// Empty chunks are skipped.
    pub(crate) async fn send(&self, data: Bytes) -> Result<(), Gone> {
        if data.is_empty() {
            return Ok(());
        }
        self.tx.send(Chunk::Data(data)).await.map_err(|_| Gone)
    }

    /// Ends the stream cleanly.
    pub(crate) async fn end(self) {
        let _ = self.tx.send(Chunk::End).await;
    }

    /// Ends the stream with an error (the client sees an abort).
    pub(crate) async fn abort(self, e: StreamError) {
        let _ = self.tx.send(Chunk::Abort(e)).await;
    }

    /// Resolves when the consumer has gone away.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// The limits of one streamed response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    /// The whole stream ends by then.
    pub(crate) deadline: Instant,
    /// The invocation's timeout (for the message).
    pub(crate) timeout: Duration,
    /// Longest gap between chunks.
    pub(crate) idle: Duration,
    /// Most bytes.
    pub(crate) max_bytes: u64,
}

/// Where a stream's end is counted: `fnroute_stream_ends_total`.
#[derive(Debug, Clone)]
pub(crate) struct StreamLabels {
    pub(crate) edge: String,
    pub(crate) function: String,
    pub(crate) request_id: String,
}

/// The consuming end of a stream.
pub(crate) struct BodyStream {
    rx: mpsc::Receiver<Chunk>,
    state: State,
    limiter: Option<Box<Limiter>>,
    bytes: u64,
    started: Instant,
    labels: Option<Box<StreamLabels>>,
    /// Bytes read ahead (past a prelude) and given back.
    unread: Option<Bytes>,
    /// Released with the stream (admission permits, in-flight counters).
    held: Vec<Box<dyn Any + Send + Sync>>,
}

/// The limits of a stream and their timers.
struct Limiter {
    limits: StreamLimits,
    deadline: Pin<Box<Sleep>>,
    idle: Pin<Box<Sleep>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Ended,
    Failed,
}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyStream")
            .field("state", &self.state)
            .field("bytes", &self.bytes)
            .field("limits", &self.limiter.as_ref().map(|l| l.limits))
            .finish_non_exhaustive()
    }
}

/// A new stream: its producer and its consumer.
pub(crate) fn channel() -> (StreamTx, BodyStream) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        StreamTx { tx },
        BodyStream {
            rx,
            state: State::Open,
            limiter: None,
            bytes: 0,
            started: Instant::now(),
            labels: None,
            unread: None,
            held: Vec::new(),
        },
    )
}

impl BodyStream {
    /// Keeps `x` until the stream is dropped.
    pub(crate) fn hold<T: Any + Send + Sync>(&mut self, x: T) {
        self.held.push(Box::new(x));
    }

    /// Applies `limits` (the tighter of any already set).
    pub(crate) fn limit(&mut self, limits: StreamLimits) {
        let l = match self.limiter.as_ref().map(|l| l.limits) {
            Some(old) => StreamLimits {
                deadline: old.deadline.min(limits.deadline),
                timeout: old.timeout.min(limits.timeout),
                idle: old.idle.min(limits.idle),
                max_bytes: old.max_bytes.min(limits.max_bytes),
            },
            None => limits,
        };
        self.limiter = Some(Box::new(Limiter {
            limits: l,
            deadline: Box::pin(tokio::time::sleep_until(l.deadline)),
            idle: Box::pin(tokio::time::sleep(l.idle)),
        }));
    }

    /// Counts this stream's end under these labels (once).
    pub(crate) fn count_as(&mut self, labels: StreamLabels) {
        if self.labels.is_none() {
            self.labels = Some(Box::new(labels));
        }
    }

    /// The next chunk: `None` after a clean end.
    pub(crate) async fn next(&mut self) -> Option<Result<Bytes, StreamError>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn fail(&mut self, e: StreamError) -> Poll<Option<Result<Bytes, StreamError>>> {
        self.state = State::Failed;
        // Closing the channel tells the producer to stop.
        self.rx.close();
        self.ended(e.label());
        // Counted streams are the edge's answers; others (a client's, a
        // tee's upstream) are logged where they end.
        match &self.labels {
            Some(l) => tracing::info!(
                function = %l.function,
                req = %l.request_id,
                bytes = self.bytes,
                secs = self.started.elapsed().as_secs_f64(),
                error = %e,
                "stream aborted"
            ),
            None => tracing::debug!(bytes = self.bytes, error = %e, "stream aborted"),
        }
        Poll::Ready(Some(Err(e)))
    }

    fn ended(&self, end: &'static str) {
        if let Some(l) = &self.labels {
            crate::metrics::stream_end(&l.edge, &l.function, end, self.bytes);
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, StreamError>>> {
        if self.state != State::Open {
            return Poll::Ready(None);
        }
        if let Some(b) = self.unread.take() {
            return Poll::Ready(Some(Ok(b)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Chunk::Data(b))) => {
                self.bytes += b.len() as u64;
                if let Some(l) = self.limiter.as_mut() {
                    if self.bytes > l.limits.max_bytes {
                        let max = l.limits.max_bytes;
                        return self.fail(StreamError::TooLarge(max));
                    }
                    let next = Instant::now() + l.limits.idle;
                    l.idle.as_mut().reset(next);
                }
                return Poll::Ready(Some(Ok(b)));
            }
            Poll::Ready(Some(Chunk::End)) => {
                self.state = State::Ended;
                self.ended("complete");
                tracing::debug!(bytes = self.bytes, "stream complete");
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Chunk::Abort(e))) => return self.fail(e),
            Poll::Ready(None) => return self.fail(StreamError::Lost),
            Poll::Pending => {}
        }
        if let Some(l) = self.limiter.as_mut() {
            if l.deadline.as_mut().poll(cx).is_ready() {
                let t = l.limits.timeout;
                return self.fail(StreamError::Timeout(t));
            }
            if l.idle.as_mut().poll(cx).is_ready() {
                let t = l.limits.idle;
                return self.fail(StreamError::Idle(t));
            }
        }
        Poll::Pending
    }

    /// Puts `b` back in front of what comes next.
    pub(crate) fn unread(&mut self, b: Bytes) {
        self.unread = Some(match self.unread.take() {
            None => b,
            Some(rest) => {
                let mut both = BytesMut::from(&b[..]);
                both.extend_from_slice(&rest);
                both.freeze()
            }
        });
    }

    /// Reads a function URL prelude (JSON, then eight NUL bytes) off the
    /// front of the stream; what follows stays in the stream.
    pub(crate) async fn read_prelude(&mut self) -> Result<Bytes, PreludeError> {
        use crate::pipeline::function_url::{prelude_end, MAX_PRELUDE};
        let mut buf = BytesMut::new();
        loop {
            let chunk = match self.next().await {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(PreludeError::Stream(e)),
                None => return Err(PreludeError::NoDelimiter(buf.len())),
            };
            let from = buf.len();
            buf.extend_from_slice(&chunk);
            if let Some(end) = prelude_end(&buf, from) {
                let mut json = buf.split_to(end);
                json.truncate(end - 8);
                if !buf.is_empty() {
                    self.unread = Some(buf.freeze());
                }
                return Ok(json.freeze());
            }
            if buf.len() > MAX_PRELUDE {
                return Err(PreludeError::NoDelimiter(buf.len()));
            }
        }
    }

    /// The rest of the stream as one buffer, up to `max` bytes.
    pub(crate) async fn collect(&mut self, max: usize) -> Result<Bytes, StreamError> {
        let mut out = BytesMut::new();
        while let Some(chunk) = self.next().await {
            let chunk = chunk?;
            if out.len() + chunk.len() > max {
                return Err(StreamError::TooLarge(max as u64));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

impl Drop for BodyStream {
    fn drop(&mut self) {
        if self.state == State::Open {
            self.ended("client_gone");
            if let Some(l) = &self.labels {
                tracing::info!(
                    function = %l.function,
                    req = %l.request_id,
                    bytes = self.bytes,
                    "stream dropped before its end (client gone); function cancelled"
                );
            }
        }
    }
}

/// Why a streamed response's prelude could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PreludeError {
    #[error("the stream ended or passed 64 KiB ({0} bytes) before the prelude's eight NUL bytes")]
    NoDelimiter(usize),
    #[error("{0}")]
    Stream(StreamError),
}

/// A response body: whole, or a stream.
#[derive(Debug)]
pub(crate) enum ReplyBody {
    Full(Option<Bytes>),
    Stream(BodyStream),
}

impl ReplyBody {
    pub(crate) fn full(b: Bytes) -> Self {
        Self::Full(Some(b))
    }

    pub(crate) fn is_stream(&self) -> bool {
        matches!(self, Self::Stream(_))
    }

    /// The length of a whole body (`None` for a stream).
    pub(crate) fn len(&self) -> Option<usize> {
        match self {
            Self::Full(b) => Some(b.as_ref().map_or(0, Bytes::len)),
            Self::Stream(_) => None,
        }
    }

    /// The next chunk: `None` at the (clean) end.
    pub(crate) async fn next(&mut self) -> Option<Result<Bytes, StreamError>> {
        match self {
            Self::Full(b) => b.take().filter(|b| !b.is_empty()).map(Ok),
            Self::Stream(s) => s.next().await,
        }
    }
}

impl From<Bytes> for ReplyBody {
    fn from(b: Bytes) -> Self {
        Self::full(b)
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Self::Stream(s) => {
                let r = ready!(s.poll_next(cx));
                Poll::Ready(r.map(|r| r.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Self::Stream(s) => s.state != State::Open,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_clean_end_needs_end() {
        let (tx, mut rx) = channel();
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        drop(tx);
        assert_eq!(rx.next().await, Some(Ok(Bytes::from_static(b"a"))));
        assert_eq!(rx.next().await, Some(Err(StreamError::Lost)));
        assert_eq!(rx.next().await, None);

        let (tx, mut rx) = channel();
        tokio::spawn(async move {
            tx.send(Bytes::from_static(b"a")).await.unwrap();
            tx.end().await;
        });
        assert_eq!(rx.collect(10).await, Ok(Bytes::from_static(b"a")));
    }

    #[tokio::test]
    async fn an_abort_is_an_error() {
        let (tx, mut rx) = channel();
        tokio::spawn(async move {
            tx.send(Bytes::from_static(b"a")).await.unwrap();
            tx.abort(StreamError::Crashed("x".into())).await;
        });
        assert!(rx.next().await.unwrap().is_ok());
        assert_eq!(rx.next().await, Some(Err(StreamError::Crashed("x".into()))));
    }

    #[tokio::test]
    async fn a_full_channel_holds_the_producer() {
        let (tx, mut rx) = channel();
        for _ in 0..QUEUE {
            tx.send(Bytes::from_static(b"x")).await.unwrap();
        }
        let more =
            tokio::time::timeout(Duration::from_millis(50), tx.send(Bytes::from_static(b"y")));
        assert!(more.await.is_err(), "the fifth chunk must wait");
        assert!(rx.next().await.is_some());
        tx.send(Bytes::from_static(b"y")).await.unwrap();
    }

    #[tokio::test]
    async fn dropping_the_stream_tells_the_producer() {
        let (tx, rx) = channel();
        drop(rx);
        tokio::time::timeout(Duration::from_secs(1), tx.closed())
            .await
            .unwrap();
        assert_eq!(tx.send(Bytes::from_static(b"a")).await, Err(Gone));
    }

    #[tokio::test(start_paused = true)]
    async fn limits_end_a_stream() {
        let limits = |idle_ms, max| StreamLimits {
            deadline: Instant::now() + Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            idle: Duration::from_millis(idle_ms),
            max_bytes: max,
        };
        // Idle.
        let (tx, mut rx) = channel();
        rx.limit(limits(100, 1000));
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(rx.next().await.unwrap().is_ok());
        assert_eq!(
            rx.next().await,
            Some(Err(StreamError::Idle(Duration::from_millis(100))))
        );
        assert!(tx.tx.is_closed(), "a limit closes the producer's channel");
        // Size.
        let (tx, mut rx) = channel();
        rx.limit(limits(100, 3));
        tx.send(Bytes::from_static(b"abcd")).await.unwrap();
        assert_eq!(rx.next().await, Some(Err(StreamError::TooLarge(3))));
        // Deadline, though chunks keep coming.
        let (tx, mut rx) = channel();
        rx.limit(limits(5_000, 1 << 20));
        let producer = tokio::spawn(async move {
            loop {
                if tx.send(Bytes::from_static(b"a")).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut n = 0;
        let end = loop {
            match rx.next().await {
                Some(Ok(_)) => n += 1,
                other => break other,
            }
        };
        assert_eq!(
            end,
            Some(Err(StreamError::Timeout(Duration::from_secs(10))))
        );
        assert!((9..=11).contains(&n), "{n} chunks before the deadline");
        producer.await.unwrap();
    }
}
