//! `asen serve`: open the store and the model once, serve the REST API until SIGINT/SIGTERM,
//! drain in-flight requests (bounded by `server.shutdown_timeout_ms`), flush the store.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use super::Needs;
use crate::api::{self, AppState, Keys};
use crate::config::Config;

/// Run the server.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let addr = config.bind_addr()?;
    let service = super::open_service(
        config,
        Needs {
            store: true,
            model: true,
        },
    )?;
    let store = service.store_handle().cloned();
    let state = AppState::new(
        service,
        Keys {
            api_key: config.server.api_key.clone(),
            read_key: config.server.read_key.clone(),
        },
        config.limits.request_timeout_ms,
        config.limits.max_body_bytes,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let drain = Duration::from_millis(config.server.shutdown_timeout_ms);
    let keys = config.server.api_key.is_some();
    let header_timeout_ms = config.server.header_read_timeout_ms;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        let local = listener.local_addr()?;
        // The one stdout line: scripts and tests read the bound address from it.
        println!("asen listening on http://{local}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        info!(%local, keys, "serving");
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let ready = state.ready.clone();
        let app = api::router(state);
        let options = api::ServeOptions {
            header_read_timeout: Duration::from_millis(header_timeout_ms),
        };
        let server = api::serve(listener, app, options, async move {
            shutdown_signal().await;
            ready.store(false, Ordering::Relaxed);
            info!("shutdown requested: draining");
            let _ = stop_tx.send(true);
        });
        let deadline = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            _ = server => {},
            _ = deadline => warn!(timeout_ms = drain.as_millis() as u64, "drain timed out; closing remaining connections"),
        }
        anyhow::Ok(())
    })?;
    // Blocking tasks still running finish before the runtime drops.
    if let Some(store) = store {
        store.flush().context("cannot flush the store")?;
    }
    info!("store flushed; bye");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
