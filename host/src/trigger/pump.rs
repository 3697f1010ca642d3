//! The frame pump of one connection: a reader task that turns frames into
//! messages for the flow side, and a writer task that drains the bounded
//! outbound queue into the socket.
//!
//! It is written against any `AsyncRead + AsyncWrite` stream, so plain TCP
//! and TLS share one path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::Close;
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

/// A running connection: its shared state, the messages read from the
/// client, and the tasks that move frames.
pub struct Pump {
    pub shared: Arc<ConnectionShared>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Pump {
    /// Start moving frames. Returns the pump and the messages read from the
    /// client; the receiver yields `None` once the client has closed or the
    /// connection has failed.
    pub fn start<S>(
        ws: WebSocketStream<S>,
        id: u64,
        peer: SocketAddr,
        limits: &TriggerLimits,
    ) -> (Self, mpsc::Receiver<Message>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, stream) = ws.split();
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let shared = Arc::new(ConnectionShared::new(
            id,
            peer,
            limits.max_message_size,
            out_tx,
        ));
        let writer = tokio::spawn(write_loop(sink, out_rx, limits.ping_interval));
        let reader = tokio::spawn(read_loop(
            stream,
            in_tx,
            Arc::clone(&shared),
            limits.idle_timeout,
        ));
        let pump = Self {
            shared,
            reader,
            writer,
        };
        (pump, in_rx)
    }

    /// End the connection: send `close` (unless a close was already sent or
    /// received), wait for the closing handshake, then drop the socket.
    pub async fn finish(self, close: Option<(u16, &str)>) {
        let Self {
            shared,
            mut reader,
            writer,
        } = self;
        if let Some((code, reason)) = close {
            shared.close(code, reason).await;
        }
        if tokio::time::timeout(CLOSE_TIMEOUT, &mut reader)
            .await
            .is_err()
        {
            tracing::debug!(
                conn = shared.id,
                "client did not complete the closing handshake"
            );
            reader.abort();
        }
        // The writer has sent the close frame (or the peer closed first and
        // nothing more can be sent); stop it.
        writer.abort();
    }
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;
type Stream<S> = SplitStream<WebSocketStream<S>>;

async fn write_loop<S>(
    mut sink: Sink<S>,
    mut outbound: mpsc::Receiver<Outbound>,
    ping_interval: Option<Duration>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pings = ping_interval.map(|period| {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        let next = tokio::select! {
            next = outbound.recv() => next,
            _ = tick(&mut pings) => {
                if let Err(error) = sink.send(Message::Ping(Default::default())).await {
                    log_error("ping", &error);
                    return;
                }
                continue;
            }
        };
        let Some(next) = next else { return };
        let result = match next {
            Outbound::Message(message) => {
                // Batch: flush only once nothing else is waiting.
                if outbound.is_empty() {
                    sink.send(message).await
                } else {
                    sink.feed(message).await
                }
            }
            Outbound::Close(code, reason) => {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
        };
        if let Err(error) = result {
            log_error("write", &error);
            return;
        }
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
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Keep reading after a close frame: tungstenite sends its reply on the
    // next read, and the stream ends once the handshake is complete.
    loop {
        let next = match idle_timeout {
            // Any frame, a pong included, counts as activity. Once closing,
            // the close timeout of `Pump::finish` takes over.
            Some(idle) if !shared.is_closed() => {
                match tokio::time::timeout(idle, stream.next()).await {
                    Ok(next) => next,
                    Err(_elapsed) => {
                        tracing::debug!(conn = shared.id, "idle timeout");
                        let close = Close::IDLE;
                        shared.close(close.code, close.reason).await;
                        continue;
                    }
                }
            }
            _ => stream.next().await,
        };
        let Some(frame) = next else { break };
        match frame {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                // After the flow side has stopped (a trap, a shutdown), data
                // that still arrives is read and dropped.
                let _ = inbound.send(message).await;
            }
            Ok(Message::Close(_)) => shared.mark_closed(),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(error) => {
                if let Some((code, reason)) = close_for(&error) {
                    shared.close(code, reason).await;
                }
                log_error("read", &error);
                break;
            }
        }
    }
    shared.mark_closed();
}

/// The close a protocol-level read error calls for, if the connection can
/// still carry one.
fn close_for(error: &tungstenite::Error) -> Option<(u16, &'static str)> {
    match error {
        tungstenite::Error::Protocol(_) => Some((1002, "protocol error")),
        tungstenite::Error::Utf8(_) => Some((1007, "invalid UTF-8 in a text message")),
        tungstenite::Error::Capacity(_) => Some((1009, "message too big")),
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
