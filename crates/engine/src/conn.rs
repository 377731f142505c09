//! One framed connection, owned by one task: the loop every hop runs.
//!
//! [`run`] reads every frame waiting per wake-up and hands each message to
//! the hop, takes events other tasks send the hop (replies, jobs), drives
//! the hop's one timer, and writes what the hop queued: one vectored write
//! per batch, racing reads, so two pipelining peers never deadlock on full
//! buffers. Malformed input is answered with a `PROTOCOL_ERROR` exception
//! (when the hop serves the peer) and closes this connection only.
//!
//! A connection is `Open`, then `Closing` (reading stopped; the hop
//! finishes what it owes, the writer empties, a last frame may follow),
//! then ends. A hop can also end it at once ([`Flow::End`]), or hand it
//! over ([`Flow::HandOff`]: like closing, but the socket stays open and
//! comes back with the bytes read past the last frame, for a successor
//! process to serve on).
//!
//! Select order (biased): events, the timer, the shutdown signal, frames,
//! and writing last, so everything ready is taken in before one write
//! carries it.

use std::future::{poll_fn, Future};
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rpc_codec::{FrameCodec, FrameError, Header, Message, LEN_PREFIX};
use rpc_transport::{FrameReader, FrameWriter, Stream, WriteHalf};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::lost::{protocol_error, Lost};

/// What the engine does after the hop handled something.
#[derive(Debug)]
pub enum Flow {
    Continue,
    /// Stop reading; end once the hop owes nothing and all is written.
    Close,
    /// As [`Flow::Close`], with this frame written last (a protocol error).
    CloseWith(Bytes),
    /// End in order now: write what is queued, then close.
    Finish,
    /// End now; frames not yet written are dropped.
    End(Lost),
    /// Stop reading; once the hop owes nothing and all is written, end
    /// without closing the socket ([`End::HandedOff`]).
    HandOff,
}

/// How a connection ended.
#[derive(Debug)]
pub enum End {
    /// In order: asked to, or the peer closed with nothing owed.
    Closed,
    Lost(Lost),
    /// Between two requests, everything read answered: the open socket
    /// and the bytes read from it past the last frame.
    HandedOff(Box<(Stream, BytesMut)>),
}

impl PartialEq for End {
    /// Sockets compare unequal: a handed-off end equals nothing.
    fn eq(&self, other: &End) -> bool {
        match (self, other) {
            (End::Closed, End::Closed) => true,
            (End::Lost(a), End::Lost(b)) => a == b,
            _ => false,
        }
    }
}

/// Limits of one connection.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_frame: usize,
    /// A frame still incomplete this long after it started is bad input.
    pub frame_timeout: Option<Duration>,
    /// Stop reading while this much is queued for a peer that does not
    /// read (for hops whose reads produce writes; `usize::MAX` for a hop
    /// that must read replies whatever it has yet to write).
    pub write_buffer_limit: usize,
    /// How long the last writes of an orderly close may take.
    pub flush_timeout: Duration,
}

impl Options {
    pub fn new(max_frame: usize) -> Options {
        Options {
            max_frame,
            frame_timeout: None,
            write_buffer_limit: 4 << 20,
            flush_timeout: Duration::from_secs(5),
        }
    }

    pub fn frame_timeout(mut self, t: Duration) -> Options {
        self.frame_timeout = Some(t);
        self
    }
}

/// What a hop gets while it handles something: the writer and the clock.
pub struct Cx<'a> {
    writer: &'a mut FrameWriter<WriteHalf>,
    now: Option<Instant>,
    pub peer: &'a str,
}

impl Cx<'_> {
    /// Queues a frame; it leaves with the batch.
    pub fn send(&mut self, frame: Bytes) {
        self.writer.push(frame);
    }

    /// The time of this wake-up: one clock read however much it carries.
    pub fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }
}

/// One hop: what to do with what the connection brings. Everything but
/// [`Hop::on_message`] has a default fit for a hop that serves its peer
/// and has no events or timer.
pub trait Hop {
    /// What other tasks send this connection (replies, jobs).
    type Event;

    /// A message from the peer (many per wake-up).
    fn on_message(&mut self, msg: Message, cx: &mut Cx<'_>) -> Flow;

    /// The next event, if one is ready (`Ready(None)`: no sender is left).
    fn poll_event(&mut self, _cx: &mut Context<'_>) -> Poll<Option<Self::Event>> {
        Poll::Pending
    }

    /// The next event already waiting, without waiting.
    fn try_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn on_event(&mut self, _ev: Self::Event, _cx: &mut Cx<'_>) -> Flow {
        Flow::Continue
    }

    /// Every sender of events is gone.
    fn on_events_closed(&mut self, _cx: &mut Cx<'_>) -> Flow {
        Flow::Close
    }

    /// Whether to take events now.
    fn wants_events(&self) -> bool {
        true
    }

    /// Whether to read frames now (backpressure), given how many frames
    /// wait to be written.
    fn wants_frames(&self, _queued: usize) -> bool {
        true
    }

    /// When [`Hop::on_timer`] should run next.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn on_timer(&mut self, _cx: &mut Cx<'_>) -> Flow {
        Flow::Continue
    }

    /// After each batch of messages or events.
    fn on_batch_end(&mut self, _cx: &mut Cx<'_>) {}

    /// The server is stopping.
    fn on_shutdown(&mut self, _cx: &mut Cx<'_>) -> Flow {
        Flow::Close
    }

    /// Whether the hop still owes the peer something (closing waits).
    fn owes(&self) -> bool {
        false
    }

    /// Whether the connection is lost when the peer closes it or reading
    /// fails (a hop that needs the peer: a backend, a worker's LB), rather
    /// than closed in order once what is owed is written (a hop whose
    /// peer may simply be done: a client).
    const NEEDS_PEER: bool = false;

    /// Whether bad input from the peer gets a `PROTOCOL_ERROR` exception
    /// before the connection closes (a hop that serves the peer's
    /// requests), rather than losing the connection (a hop whose peer
    /// answers it).
    const ANSWERS_PEER: bool = true;

    /// The peer closed its side.
    fn on_eof(&mut self, _cx: &mut Cx<'_>) -> Flow {
        if Self::NEEDS_PEER {
            Flow::End(Lost::Closed)
        } else {
            Flow::Close
        }
    }

    /// Reading failed.
    fn on_read_error(&mut self, e: &io::Error, cx: &mut Cx<'_>) -> Flow {
        tracing::debug!(peer = %cx.peer, error = %e, "read failed");
        if Self::NEEDS_PEER {
            Flow::End(Lost::io(e))
        } else {
            Flow::Close
        }
    }

    /// Bytes that are not a valid frame or message.
    fn on_bad_input(&mut self, error: &str, header: Option<Header>, cx: &mut Cx<'_>) -> Flow {
        tracing::warn!(peer = %cx.peer, error, "bad input, closing");
        if Self::ANSWERS_PEER {
            Flow::CloseWith(protocol_error(error, header))
        } else {
            Flow::End(Lost::bad_input(error))
        }
    }
}

/// The connection's state.
enum Phase {
    Open,
    /// Reading stopped; the frame to write last, if any.
    Closing(Option<Bytes>),
    /// Reading stopped; the socket goes back to the caller.
    HandingOff,
}

/// Runs `hop` on `stream` until the connection ends. `shutdown` resolving
/// asks the hop to stop ([`Hop::on_shutdown`]).
pub async fn run<H: Hop>(
    hop: &mut H,
    stream: Stream,
    shutdown: impl Future<Output = ()>,
    opts: &Options,
) -> End {
    run_with(hop, stream, BytesMut::new(), shutdown, opts).await
}

/// [`run`] on a connection another process handed over, `read` being the
/// bytes it had read past the last frame.
pub async fn run_with<H: Hop>(
    hop: &mut H,
    stream: Stream,
    read: BytesMut,
    shutdown: impl Future<Output = ()>,
    opts: &Options,
) -> End {
    let peer = stream.peer();
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::new(opts.max_frame)).with_buffered(read);
    if let Some(t) = opts.frame_timeout {
        reader = reader.with_frame_timeout(t);
    }
    let mut writer = FrameWriter::new(w);
    let mut phase = Phase::Open;
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut timer_at: Option<Instant> = None;
    tokio::pin!(shutdown);
    let mut shutdown_seen = false;

    let end = loop {
        if !matches!(phase, Phase::Open) && !hop.owes() && writer.is_empty() {
            if matches!(phase, Phase::HandingOff) {
                let (r, buffered) = reader.into_parts();
                return match Stream::reunite(r, writer.into_inner()) {
                    Ok(stream) => End::HandedOff(Box::new((stream, buffered))),
                    Err(e) => End::Lost(Lost::io(&e)),
                };
            }
            break End::Closed;
        }
        let at = hop.deadline();
        if at != timer_at {
            if let Some(t) = at {
                timer.as_mut().reset(t);
            }
            timer_at = at;
        }
        let reading = matches!(phase, Phase::Open)
            && hop.wants_frames(writer.len())
            && writer.queued_bytes() < opts.write_buffer_limit;
        if !reading {
            reader.reset_frame_clock();
        }
        let events = hop.wants_events();
        let flow = tokio::select! {
            biased;
            ev = poll_fn(|c| hop.poll_event(c)), if events => {
                events_batch(hop, ev, &mut cx(&mut writer, &peer))
            }
            _ = &mut timer, if timer_at.is_some() => {
                timer_at = None;
                hop.on_timer(&mut cx(&mut writer, &peer))
            }
            _ = &mut shutdown, if !shutdown_seen => {
                shutdown_seen = true;
                hop.on_shutdown(&mut cx(&mut writer, &peer))
            }
            frame = reader.next(), if reading => {
                frames_batch(hop, &mut reader, frame, &mut cx(&mut writer, &peer))
            }
            written = writer.write_some(), if !writer.is_empty() => match written {
                Ok(()) => Flow::Continue,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "write failed");
                    Flow::End(Lost::io(&e))
                }
            },
        };
        if let Some(end) = phase.apply(flow) {
            break end;
        }
    };
    if end == End::Closed {
        if let Phase::Closing(Some(last)) = phase {
            writer.push(last);
        }
        let flushed = tokio::time::timeout(opts.flush_timeout, writer.flush()).await;
        if let Ok(Ok(())) = flushed {
            let _ = writer.get_mut().shutdown().await;
        }
    }
    end
}

impl Phase {
    /// Moves on as `flow` says; `Some` when the connection ends now.
    fn apply(&mut self, flow: Flow) -> Option<End> {
        match flow {
            Flow::Continue => {}
            Flow::Close => {
                if matches!(self, Phase::Open) {
                    *self = Phase::Closing(None);
                }
            }
            Flow::CloseWith(last) => {
                if matches!(self, Phase::Open | Phase::Closing(None)) {
                    *self = Phase::Closing(Some(last));
                }
            }
            Flow::HandOff => {
                if matches!(self, Phase::Open) {
                    *self = Phase::HandingOff;
                }
            }
            Flow::Finish => return Some(End::Closed),
            Flow::End(lost) => return Some(End::Lost(lost)),
        }
        None
    }
}

fn cx<'a>(writer: &'a mut FrameWriter<WriteHalf>, peer: &'a str) -> Cx<'a> {
    Cx {
        writer,
        now: None,
        peer,
    }
}

/// The first event and every one already waiting behind it.
fn events_batch<H: Hop>(hop: &mut H, first: Option<H::Event>, cx: &mut Cx<'_>) -> Flow {
    let Some(ev) = first else {
        return hop.on_events_closed(cx);
    };
    let mut flow = hop.on_event(ev, cx);
    while matches!(flow, Flow::Continue) && hop.wants_events() {
        match hop.try_event() {
            Some(ev) => flow = hop.on_event(ev, cx),
            None => break,
        }
    }
    hop.on_batch_end(cx);
    flow
}

/// The first frame read and every one already buffered behind it (no more
/// reads), while the hop wants them.
fn frames_batch<H: Hop>(
    hop: &mut H,
    reader: &mut FrameReader,
    first: Option<Result<BytesMut, FrameError>>,
    cx: &mut Cx<'_>,
) -> Flow {
    let mut frame = first;
    let flow = loop {
        let flow = match frame {
            None => hop.on_eof(cx),
            Some(Ok(f)) => match Message::parse_or_peek(f) {
                Ok(msg) => hop.on_message(msg, cx),
                Err((e, header)) => hop.on_bad_input(&e.to_string(), header, cx),
            },
            Some(Err(FrameError::Io(e))) => hop.on_read_error(&e, cx),
            Some(Err(e)) => {
                // The header of an oversized frame may already be buffered.
                let header = reader.buffered().get(LEN_PREFIX..).and_then(Header::peek);
                hop.on_bad_input(&e.to_string(), header, cx)
            }
        };
        if !matches!(flow, Flow::Continue) || !hop.wants_frames(cx.writer.len()) {
            break flow;
        }
        match reader.next_buffered() {
            Some(f) => frame = Some(f),
            None => break Flow::Continue,
        }
    };
    hop.on_batch_end(cx);
    flow
}
