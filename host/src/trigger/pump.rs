//! The frame pump of one connection: a reader that turns frames into
//! messages for the flow side, a writer that drains the outbound queue into
//! the socket, and the flow side itself, all polled by the connection's
//! one task.
//!
//! The socket side (reader and writer) and the flow side end on their own:
//! a client's close is answered and the socket closed whatever the flow is
//! doing, and what a flow queued is delivered after it has returned.
//!
//! The pump is written against any `AsyncRead + AsyncWrite` stream, so
//! plain TCP and TLS share one path.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use super::progress::WriteProgress;
use super::together;
use crate::app::{AppInfo, AppStats, ByteBudget, Charge};
use crate::close::Close;
use crate::manifest::spec::TriggerLimits;
use crate::metrics::Limit;
use crate::runtime::connection::{Inbound, InboundSender};
use crate::runtime::flag::Flag;
use crate::runtime::queue;
use crate::runtime::{ConnectionShared, Outbound};

/// Messages read ahead of the flow side, whatever their size (the byte
/// budgets bound them further). Reading stops (and TCP pushes back on the
/// client) while the queue is full.
const INBOUND_QUEUE: usize = 16;

/// How long the host waits for the client to answer a close frame, or for
/// a close frame to be written, before it drops the connection.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// After the closing handshake (or a read error), the host stops writing and
/// reads and discards what the client still sends for up to this long
/// before closing the socket: closing with unread data would reset the
/// connection and could destroy the close frame before the client reads it.
const LINGER: Duration = Duration::from_secs(2);

/// Serve one connection in the current task: a reader that turns frames
/// into messages for the flow side, a writer that drains the outbound
/// queue into the socket, and `flow_side` (data or connection mode), which
/// gets the connection's shared state and the messages read (`None` once
/// the client has closed or the connection has failed) and returns the
/// close to send. `progress` is fed by the stream under `socket`.
///
/// Once the socket is closed, the flow side has the app's `wall_time` to
/// finish; then it is stopped. Returns the code and reason the connection
/// ended with (see [`ConnectionShared::ended_with`]).
pub(super) async fn run<S, F, Fut>(
    socket: Halves<S>,
    id: u64,
    app: Arc<AppInfo>,
    peer: SocketAddr,
    limits: &TriggerLimits,
    progress: Arc<WriteProgress>,
    // Boxed: called once, at the start, it would otherwise keep the room
    // of what it captures in this future for the connection's life.
    flow_side: Box<F>,
) -> (u16, String)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Arc<ConnectionShared>, Inbound) -> Fut,
    Fut: Future<Output = Option<Close>>,
{
    let (out_tx, out_rx) = queue::channel(Outbound::slots(app.limits.queue_per_connection));
    let (in_tx, in_rx) = Inbound::channel(INBOUND_QUEUE);
    let shared = Arc::new(ConnectionShared::new(
        id,
        app,
        peer,
        limits.max_message_size,
        out_tx,
    ));
    // Pinned here and lent: moved into `drive_flow` or `together::join`
    // as arguments, each side's future would take its room there twice
    // (an `async fn` keeps its arguments beside the locals they are moved
    // into).
    let socket = std::pin::pin!(serve_socket(
        socket, &shared, limits, progress, out_rx, in_tx
    ));
    let flow = std::pin::pin!(flow_side(Arc::clone(&shared), in_rx));
    let flow = std::pin::pin!(drive_flow(&shared, flow));
    // In rounds: a message read and handled in one poll of the task, its
    // reply written in the next (`together`).
    together::join(socket, flow).await;
    shared.ended_with()
}

/// Run the flow side to its end, then close the connection with the close
/// it returns (1000 if none). Once the client has gone, the flow side has
/// `wall_time` left: a flow that sleeps or computes instead of noticing
/// would otherwise hold its execution slot for nobody.
async fn drive_flow<F>(shared: &ConnectionShared, mut flow: Pin<&mut F>)
where
    F: Future<Output = Option<Close>>,
{
    let close = tokio::select! {
        biased;
        close = flow.as_mut() => close,
        () = shared.gone().raised() => {
            let grace = shared.app.limits.wall_time;
            match tokio::time::timeout(grace, flow.as_mut()).await {
                Ok(close) => close,
                Err(_elapsed) => {
                    tracing::error!(
                        "execution stopped: still running {grace:?} after its client closed"
                    );
                    AppStats::add(&shared.app.stats.executions_limit_exceeded, 1);
                    shared.app.stats.metrics.record_limit(Limit::WallTime);
                    return;
                }
            }
        }
    };
    shared.close(close.unwrap_or(Close::NORMAL));
}

/// Read and write until the connection is closed, then close the socket.
async fn serve_socket<S>(
    (sink, stream): Halves<S>,
    shared: &ConnectionShared,
    limits: &TriggerLimits,
    progress: Arc<WriteProgress>,
    outbound: queue::Receiver<Outbound>,
    inbound: InboundSender,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reader_done = Flag::new();
    let stop_reader = Flag::new();
    let reader = async {
        let stream = read_loop(stream, inbound, shared, limits.idle_timeout, &stop_reader).await;
        reader_done.raise();
        stream
    };
    let writer = async {
        let writer = Writer {
            sink,
            outbound,
            shared,
            progress,
            patience: shared.app.limits.slow_client_timeout,
        };
        let sink = writer.run(limits.ping_interval).await;
        // The writer has sent a close frame, or passed on the reply to the
        // client's: the client has `CLOSE_TIMEOUT` to complete the closing
        // handshake, which ends the reader.
        if tokio::time::timeout(CLOSE_TIMEOUT, reader_done.raised())
            .await
            .is_err()
        {
            tracing::debug!("client did not complete the closing handshake");
            stop_reader.raise();
        }
        sink
    };
    let (stream, sink) = tokio::join!(reader, writer);
    shared.mark_gone();
    if !shared.aborted().is_raised()
        && let Ok(ws) = sink.reunite(stream)
    {
        linger(ws.into_inner()).await;
    }
}

/// Half-close the socket and drain what the client still sends, so the
/// final frames reach it intact.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut socket: S) {
    let drain = async {
        let _ = socket.shutdown().await;
        // On the heap: in this future it would take its room in every
        // connection's task for the connection's whole life.
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;
type Stream<S> = SplitStream<WebSocketStream<S>>;

/// A connection's WebSocket split into its writing and reading halves
/// (`StreamExt::split`), as the pump takes it: split where it is upgraded,
/// no future that lives as long as the connection holds the whole
/// `WebSocketStream` (each would keep room for it, moved out or not).
pub(super) type Halves<S> = (Sink<S>, Stream<S>);

/// How a write to the client ended.
enum Written {
    Done(Result<(), tungstenite::Error>),
    /// The client took no bytes for too long, or missed the deadline.
    Stalled,
    Aborted,
}

/// When the writer gives up on a write.
#[derive(Clone, Copy)]
enum Patience {
    /// While open: when the client has taken no bytes for this long.
    Progress(Duration),
    /// While closing: at this instant.
    Deadline(Instant),
}

/// The writing half of a connection.
struct Writer<'a, S> {
    sink: Sink<S>,
    outbound: queue::Receiver<Outbound>,
    shared: &'a ConnectionShared,
    progress: Arc<WriteProgress>,
    /// `slow_client_timeout`.
    patience: Duration,
}

impl<S> Writer<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Write until the connection closes. Returns the sink once a close
    /// frame has been written (or the connection cannot carry one).
    async fn run(mut self, ping_interval: Option<Duration>) -> Sink<S> {
        if self.write_while_open(ping_interval).await {
            // Boxed: it runs once, at the end; inline it would size every
            // connection's future for its whole life.
            Box::pin(self.write_close()).await;
        }
        self.sink
    }

    /// Write messages and pings until the connection starts closing.
    /// Returns whether a close frame may still be written.
    async fn write_while_open(&mut self, ping_interval: Option<Duration>) -> bool {
        let mut pings = ping_interval.map(|period| {
            let mut interval = tokio::time::interval_at(Instant::now() + period, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        let shared = self.shared;
        let abort = shared.aborted();
        // Kept across the loop: registered once.
        let mut aborted = std::pin::pin!(abort.raised());
        let mut closing = std::pin::pin!(shared.closing().raised());
        // The charge of the message written last, held for its drop: its
        // bytes may still sit in the WebSocket's buffer until the next
        // write or flush.
        let mut _in_flight: Option<Charge> = None;
        loop {
            let (written, charge) = tokio::select! {
                biased;
                () = aborted.as_mut() => return false,
                // What is still queued is written (or dropped) by
                // `write_close`, within its deadline.
                () = closing.as_mut() => return true,
                next = self.outbound.recv() => {
                    let Some(Outbound { message, charge }) = next else { return true };
                    // Batch: flush only once nothing else is waiting.
                    let flush = self.outbound.is_empty();
                    let write = if flush {
                        Either::Left(self.sink.send(message))
                    } else {
                        Either::Right(self.sink.feed(message))
                    };
                    let patience = Patience::Progress(self.patience);
                    let written = watch(&self.progress, abort, patience, write).await;
                    // Fed but not flushed, the message may still sit in the
                    // WebSocket's buffer: it holds its bytes until the next
                    // write.
                    (written, (!flush).then_some(charge))
                }
                _ = tick(&mut pings) => {
                    let ping = self.sink.send(Message::Ping(Default::default()));
                    let patience = Patience::Progress(self.patience);
                    (watch(&self.progress, abort, patience, ping).await, None)
                }
            };
            _in_flight = charge;
            match written {
                Written::Done(Ok(())) => {}
                Written::Done(Err(error)) => {
                    note_error(self.shared, "write", &error);
                    return false;
                }
                Written::Stalled => {
                    self.shared.close_slow_client(&format!(
                        "it took no bytes for {:?} while messages waited for it",
                        self.patience
                    ));
                    return true;
                }
                Written::Aborted => return false,
            }
        }
    }

    /// The connection is closing. If the client closed, push out the reply
    /// to its close frame. If the host closed, write what is queued, then
    /// the close frame, within `slow_client_timeout`; a client that has not
    /// taken it all by then is closed with 1008 instead, and the rest is
    /// dropped.
    async fn write_close(&mut self) {
        let abort = self.shared.aborted();
        let Some(mut close) = self.shared.take_requested_close() else {
            // The client closed: tungstenite answers it; what is still
            // queued is not wanted.
            let flush = Patience::Deadline(Instant::now() + CLOSE_TIMEOUT);
            let _ = watch(&self.progress, abort, flush, self.sink.flush()).await;
            return;
        };
        let deadline = Patience::Deadline(Instant::now() + self.patience);
        while !self.shared.is_slow() {
            let Ok(Outbound { message, charge }) = self.outbound.try_recv() else {
                break;
            };
            let write = self.sink.feed(message);
            match watch(&self.progress, abort, deadline, write).await {
                Written::Done(Ok(())) => drop(charge),
                Written::Done(Err(error)) => {
                    note_error(self.shared, "write", &error);
                    return;
                }
                Written::Stalled => self.shared.close_slow_client(&format!(
                    "it did not take what was queued before the close within {:?}",
                    self.patience
                )),
                Written::Aborted => return,
            }
        }
        if self.shared.is_slow() {
            // Give the budgets back; the client is told by the 1008.
            self.outbound.close();
            while self.outbound.try_recv().is_ok() {}
            close = Close::SLOW_CLIENT;
        }
        let last = Patience::Deadline(Instant::now() + CLOSE_TIMEOUT);
        let frame = close.into_frame();
        self.shared
            .record_close(u16::from(frame.code), &frame.reason);
        let frame = self.sink.send(Message::Close(Some(frame)));
        match watch(&self.progress, abort, last, frame).await {
            Written::Done(_) | Written::Aborted => {}
            Written::Stalled => {
                tracing::debug!("the close frame could not be written; dropping the connection");
                self.shared.abort();
            }
        }
    }
}

/// Run `write` unless the connection is aborted or the client runs out of
/// `patience`.
async fn watch<F>(
    progress: &WriteProgress,
    abort: &Flag,
    patience: Patience,
    mut write: F,
) -> Written
where
    F: Future<Output = Result<(), tungstenite::Error>> + Unpin,
{
    if abort.is_raised() {
        return Written::Aborted;
    }
    let started = Instant::now();
    // The write first: one that completes at once (the usual case)
    // registers no waits.
    let first = std::future::poll_fn(|cx| match Pin::new(&mut write).poll(cx) {
        Poll::Ready(result) => Poll::Ready(Some(result)),
        Poll::Pending => Poll::Ready(None),
    });
    if let Some(result) = first.await {
        return Written::Done(result);
    }
    // Boxed: the waits are large and needed only by a write the socket
    // does not take at once; inline they would size every idle
    // connection's future.
    Box::pin(wait_for_write(progress, abort, patience, started, write)).await
}

/// The rest of [`watch`]: wait for `write` until it completes, the
/// connection is aborted or the client runs out of `patience`.
async fn wait_for_write<F>(
    progress: &WriteProgress,
    abort: &Flag,
    patience: Patience,
    started: Instant,
    mut write: F,
) -> Written
where
    F: Future<Output = Result<(), tungstenite::Error>> + Unpin,
{
    let mut aborted = std::pin::pin!(abort.raised());
    loop {
        // Measured from the client's last progress, but never from before
        // this write began: an idle connection has not stalled.
        let give_up_at = match patience {
            Patience::Progress(patience) => progress.last().max(started) + patience,
            Patience::Deadline(deadline) => deadline,
        };
        // The write first: one that completes at once registers no waits.
        tokio::select! {
            biased;
            result = &mut write => return Written::Done(result),
            () = aborted.as_mut() => return Written::Aborted,
            () = tokio::time::sleep_until(give_up_at) => {
                let still = match patience {
                    Patience::Progress(patience) => progress.last().max(started) + patience,
                    Patience::Deadline(deadline) => deadline,
                };
                if still <= Instant::now() {
                    return Written::Stalled;
                }
            }
        }
    }
}

/// Sleep for `duration`, or forever without one.
async fn sleep_or_never(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// Wait for the next tick, or forever without an interval.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn read_loop<S>(
    mut stream: Stream<S>,
    inbound: InboundSender,
    shared: &ConnectionShared,
    idle_timeout: Option<Duration>,
    stop: &Flag,
) -> Stream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Keep reading after a close frame: tungstenite sends its reply on the
    // next read, and the stream ends once the handshake is complete.
    let budget = ByteBudget::new(shared.app.limits.queue_per_connection);
    // Kept across the loop: registered once.
    let mut aborted = std::pin::pin!(shared.aborted().raised());
    let mut stopped = std::pin::pin!(stop.raised());
    loop {
        // Any frame, a pong included, counts as activity. Once closing,
        // the close timeout takes over.
        let idle = idle_timeout.filter(|_| !shared.is_closed());
        let next = tokio::select! {
            // Stopping first: a client that always has a frame ready is
            // still stopped.
            biased;
            () = aborted.as_mut() => break,
            () = stopped.as_mut() => break,
            next = stream.next() => next,
            () = sleep_or_never(idle) => {
                tracing::debug!("idle timeout");
                shared.close(Close::IDLE);
                continue;
            }
        };
        let Some(frame) = next else { break };
        match frame {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                let stats = &shared.app.stats;
                AppStats::add(&stats.messages_in, 1);
                AppStats::add(&stats.bytes_in, message.len() as u64);
                stats.metrics.message_size_in.record(message.len() as u64);
                // Once the host is closing, what still arrives is read and
                // dropped, so the client's close reply can be read.
                if shared.is_closed() {
                    continue;
                }
                let len = message.len();
                // Room now (the usual case): nothing to wait for or register.
                if let Some(own) = budget.try_take(len)
                    && let Some(app) = shared.app.inbound_budget.try_take(len)
                    && let Ok(slot) = inbound.try_reserve()
                {
                    slot.send((message, Charge::new(own, app)));
                    continue;
                }
                // Boxed: the waits are large and rare; inline they would
                // size every idle connection's future.
                let waited = Box::pin(async {
                    let deliver = async {
                        let own = budget.take(len).await;
                        let app = shared.app.inbound_budget.take(len).await;
                        inbound.send((message, Charge::new(own, app))).await
                    };
                    tokio::select! {
                        biased;
                        _ = deliver => true,
                        () = aborted.as_mut() => false,
                        () = stopped.as_mut() => false,
                        () = shared.closing().raised() => true,
                    }
                });
                if !waited.await {
                    break;
                }
            }
            Ok(Message::Close(frame)) => {
                match &frame {
                    Some(frame) => shared.record_close(u16::from(frame.code), &frame.reason),
                    // RFC 6455 7.1.5: a close frame without a code is 1005.
                    None => shared.record_close(1005, ""),
                }
                shared.mark_closed();
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(error) => {
                // First: a send still waiting is told why the connection ends.
                note_error(shared, "read", &error);
                match close_for(&error) {
                    Some(close) => {
                        shared.close(close);
                    }
                    // Nothing more can be sent or received.
                    None => shared.abort(),
                }
                break;
            }
        }
    }
    shared.mark_closed();
    stream
}

/// The close a protocol-level read error calls for, if the connection can
/// still carry one.
fn close_for(error: &tungstenite::Error) -> Option<Close> {
    match error {
        // The client went away without a close frame: nobody to tell.
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => None,
        tungstenite::Error::Protocol(_) => Some(Close::PROTOCOL_ERROR),
        tungstenite::Error::Utf8(_) => Some(Close::INVALID_UTF8),
        tungstenite::Error::Capacity(_) => Some(Close::TOO_BIG),
        _ => None,
    }
}

/// One place decides what a failed read or write means and what is worth
/// logging: a peer going away is normal; a socket the kernel gave up on
/// (see `progress::give_up_after`) is a client that does not read.
fn note_error(shared: &ConnectionShared, side: &str, error: &tungstenite::Error) {
    use tungstenite::Error;
    match error {
        Error::ConnectionClosed | Error::AlreadyClosed => {}
        Error::Io(io) if is_disconnect(io) => {}
        Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            shared.close_slow_client(&format!(
                "what was sent to it went unacknowledged for {:?} (the kernel gave up)",
                shared.app.limits.slow_client_timeout
            ));
        }
        Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {}
        Error::Protocol(_) | Error::Utf8(_) | Error::Capacity(_) => {
            tracing::debug!("{side}: client broke the protocol: {error}");
        }
        _ => tracing::warn!("{side}: connection failed: {error}"),
    }
}

fn is_disconnect(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::manifest::spec::AppSpec;

    /// A flow side's state as large as this makes a second copy of it in
    /// the pump's future stand out from everything else the future holds.
    const FLOW_STATE: usize = 16 << 10;

    #[tokio::test]
    async fn the_pump_holds_its_flow_side_once() {
        let app = Arc::new(AppInfo::new(&AppSpec::bare("t", Default::default())));
        let limits = TriggerLimits {
            max_connections: None,
            max_pending_handshakes: 256,
            max_message_size: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: None,
            ping_interval: None,
        };
        let (server, _client) = tokio::io::duplex(64);
        let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let flow_side = |_shared: Arc<ConnectionShared>, _inbound: Inbound| async move {
            let state = [0u8; FLOW_STATE];
            std::future::pending::<()>().await;
            Some(Close::NORMAL).filter(|_| state[0] == 1)
        };
        let pump = run(
            ws.split(),
            1,
            app,
            "127.0.0.1:1".parse().unwrap(),
            &limits,
            Arc::new(WriteProgress::new()),
            Box::new(flow_side),
        );
        // What an idle connection costs is mostly this future: the flow
        // side's state once, and the pump's own few KiB beside it.
        let size = size_of_val(&pump);
        assert!(size > FLOW_STATE, "{size}");
        assert!(size < FLOW_STATE + FLOW_STATE / 2, "{size} bytes");
    }
}
