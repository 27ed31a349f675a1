//! [`serve`]: the router over HTTP/1.1 with hyper's connection builder, so that a client
//! that sends its request line and headers slowly (or not at all) is cut off after
//! `server.header_read_timeout_ms` (axum's `serve` sets no timer, so hyper's header timeout
//! never fires there). Shutdown is graceful: the listener closes, each connection finishes
//! the request it is answering, then the future resolves.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Connection options of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Longest a client may take to send a request's line and headers, from the moment
    /// the connection is ready for the next request (`server.header_read_timeout_ms`).
    pub header_read_timeout: Duration,
}

/// Serve `app` on `listener` until `shutdown` resolves, then wait for the connections in
/// flight to finish their current request. Accept errors (out of file descriptors, a
/// connection reset before it was accepted) are logged and the loop goes on after a pause.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // EMFILE and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
