//! The admin endpoint (`wsflow up --admin ADDR`): a minimal HTTP server that
//! answers `GET /stats` with every app's counters as JSON. It is for the
//! host operator: bind it to a loopback address.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::StatsHandle;
use crate::sockets::AcceptBackoff;

/// Requests larger than this are not HTTP requests for `/stats`.
const MAX_REQUEST: usize = 8 * 1024;

/// Serve `GET /stats` on `listener` until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, stats: StatsHandle, shutdown: CancellationToken) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(error) => {
                let pause = backoff.failed(&error);
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let first_line = request.split(|&b| b == b'\r').next().unwrap_or_default();
            let (status, body) = if first_line.starts_with(b"GET /stats ") {
                ("200 OK", format!("{:#}\n", stats.to_json()))
            } else {
                (
                    "404 Not Found",
                    "only GET /stats is served here\n".to_owned(),
                )
            };
            let content_type = if status.starts_with("200") {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
