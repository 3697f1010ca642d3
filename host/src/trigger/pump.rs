//! The frame pump of one connection: a reader task that turns frames into
//! messages for the flow side, and a writer task that drains the bounded
//! outbound queue into the socket.
//!
//! It is written against any `AsyncRead + AsyncWrite` stream, so plain TCP
//! and TLS share one path.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::app::{AppInfo, AppStats};
use crate::close::Close;
use crate::manifest::spec::TriggerLimits;
use crate::runtime::{ConnectionShared, Outbound};

/// Messages a connection may have queued towards the client before a
/// sending flow waits: enough to batch writes, small enough that a client
/// that never reads costs the host little.
const OUTBOUND_QUEUE: usize = 64;

/// Messages read ahead of the flow side. Reading stops (and TCP pushes back
/// on the client) while this many wait.
const INBOUND_QUEUE: usize = 16;

/// How long the host waits for the client to answer a close frame before it
/// drops the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// After the closing handshake (or a read error), the host stops writing and
/// reads and discards what the client still sends for up to this long
/// before closing the socket: closing with unread data would reset the
/// connection and could destroy the close frame before the client reads it.
const LINGER: Duration = Duration::from_secs(2);

/// Serve one connection in the current task: a reader that turns frames
/// into messages for the flow side, a writer that drains the bounded
/// outbound queue into the socket, and `flow_side` (data or connection
/// mode), which gets the connection's shared state and the messages read
/// (`None` once the client has closed or the connection has failed) and
/// returns the close to send. All three are polled by this one task, so a
/// message crosses no thread and an idle connection costs one task.
pub(super) async fn run<S, F, Fut>(
    ws: WebSocketStream<S>,
    id: u64,
    app: Arc<AppInfo>,
    peer: SocketAddr,
    limits: &TriggerLimits,
    flow_side: F,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Arc<ConnectionShared>, mpsc::Receiver<Message>) -> Fut,
    Fut: Future<Output = Option<Close>>,
{
    let (sink, stream) = ws.split();
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    let shared = Arc::new(ConnectionShared::new(
        id,
        app,
        peer,
        limits.max_message_size,
        out_tx,
    ));
    let reader_done = CancellationToken::new();
    let stop_reader = CancellationToken::new();
    let writer_done = CancellationToken::new();
    let stop_writer = CancellationToken::new();

    let reader = async {
        let stream = read_loop(
            stream,
            in_tx,
            Arc::clone(&shared),
            limits.idle_timeout,
            stop_reader.clone(),
        )
        .await;
        reader_done.cancel();
        stream
    };
    let writer = async {
        let sink = write_loop(
            sink,
            out_rx,
            limits.ping_interval,
            stop_writer.clone(),
            shared.aborted().clone(),
        )
        .await;
        writer_done.cancel();
        sink
    };
    let control = async {
        let close = flow_side(Arc::clone(&shared), in_rx).await;
        if let Some(close) = close {
            shared.close(close).await;
        }
        // The reader ends once the closing handshake is complete.
        if tokio::time::timeout(CLOSE_TIMEOUT, reader_done.cancelled())
            .await
            .is_err()
        {
            tracing::debug!("client did not complete the closing handshake");
            stop_reader.cancel();
        }
        // The writer sends what is still queued up to a close frame, then
        // stops; a client that does not read cannot hold it.
        stop_writer.cancel();
        if tokio::time::timeout(CLOSE_TIMEOUT, writer_done.cancelled())
            .await
            .is_err()
        {
            shared.abort();
        }
    };
    let (stream, sink, ()) = tokio::join!(reader, writer, control);
    if !shared.aborted().is_cancelled()
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
        let mut buf = [0u8; 4096];
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

async fn write_loop<S>(
    mut sink: Sink<S>,
    mut outbound: mpsc::Receiver<Outbound>,
    ping_interval: Option<Duration>,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Sink<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pings = ping_interval.map(|period| {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        let next = tokio::select! {
            biased;
            next = outbound.recv() => next,
            _ = tick(&mut pings) => {
                if let Err(error) = sink.send(Message::Ping(Default::default())).await {
                    log_error("ping", &error);
                    return sink;
                }
                continue;
            }
            () = abort.cancelled() => return sink,
            () = stop.cancelled() => {
                // Only a queued close frame still matters.
                while let Ok(next) = outbound.try_recv() {
                    if let Outbound::Close(close) = next {
                        tokio::select! {
                            () = send_close(&mut sink, close) => {}
                            () = abort.cancelled() => {}
                        }
                        break;
                    }
                }
                return sink;
            }
        };
        let Some(next) = next else { return sink };
        let result = match next {
            Outbound::Message(message) => {
                // Batch: flush only once nothing else is waiting. A client
                // that does not read is dropped by `abort`, even mid-write.
                let flush = outbound.is_empty();
                tokio::select! {
                    result = async {
                        if flush { sink.send(message).await } else { sink.feed(message).await }
                    } => result,
                    () = abort.cancelled() => return sink,
                }
            }
            Outbound::Close(close) => {
                tokio::select! {
                    () = send_close(&mut sink, close) => {}
                    () = abort.cancelled() => {}
                }
                return sink;
            }
        };
        if let Err(error) = result {
            log_error("write", &error);
            return sink;
        }
    }
}

async fn send_close<S>(sink: &mut Sink<S>, close: Close)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = sink.send(Message::Close(Some(close.into_frame()))).await;
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
    inbound: mpsc::Sender<Message>,
    shared: Arc<ConnectionShared>,
    idle_timeout: Option<Duration>,
    stop: CancellationToken,
) -> Stream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Keep reading after a close frame: tungstenite sends its reply on the
    // next read, and the stream ends once the handshake is complete.
    let abort = shared.aborted().clone();
    loop {
        // Any frame, a pong included, counts as activity. Once closing,
        // the close timeout of `Pump::finish` takes over.
        let idle = idle_timeout.filter(|_| !shared.is_closed());
        let next = tokio::select! {
            next = stream.next() => next,
            () = sleep_or_never(idle) => {
                tracing::debug!("idle timeout");
                shared.close(Close::IDLE).await;
                continue;
            }
            () = abort.cancelled() => break,
            () = stop.cancelled() => break,
        };
        let Some(frame) = next else { break };
        match frame {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                AppStats::add(&shared.app.stats.messages_in, 1);
                AppStats::add(&shared.app.stats.bytes_in, message.len() as u64);
                // After the flow side has stopped (a trap, a shutdown), data
                // that still arrives is read and dropped.
                tokio::select! {
                    _ = inbound.send(message) => {}
                    () = abort.cancelled() => break,
                    () = stop.cancelled() => break,
                }
            }
            Ok(Message::Close(_)) => shared.mark_closed(),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(error) => {
                if let Some(close) = close_for(&error) {
                    shared.close(close).await;
                }
                log_error("read", &error);
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
        tungstenite::Error::Protocol(_) => Some(Close::PROTOCOL_ERROR),
        tungstenite::Error::Utf8(_) => Some(Close::INVALID_UTF8),
        tungstenite::Error::Capacity(_) => Some(Close::TOO_BIG),
        _ => None,
    }
}

/// One place decides what is worth logging: a peer going away is normal.
fn log_error(side: &str, error: &tungstenite::Error) {
    use tungstenite::Error;
    match error {
        Error::ConnectionClosed | Error::AlreadyClosed => {}
        Error::Io(io) if is_disconnect(io) => {}
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
