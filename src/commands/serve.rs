//! `asen serve`: open the store and the model once, serve the REST API until SIGINT/SIGTERM,
//! drain in-flight requests (bounded by `server.shutdown_timeout_ms`), flush the store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use asen_index::{CatalogueStore, Durability, HnswConfig, LocalStore, StoreOptions};
use tracing::{info, warn};

use crate::api::{self, AppState, Keys};
use crate::cli::ServeArgs;
use crate::config::{Config, Overrides};
use crate::service::thumbnails::Thumbnails;
use crate::service::{Service, ServiceLimits};

/// Open the store and model described by `config`.
pub fn open_service(config: &Config) -> anyhow::Result<Service> {
    let started = Instant::now();
    let dir = &config.server.data_dir;
    let store = LocalStore::open(
        dir,
        StoreOptions {
            durability: if config.index.flush_writes {
                Durability::Flush
            } else {
                Durability::Deferred
            },
            cache_capacity_bytes: config.index.cache_capacity_bytes,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("cannot open store {}", dir.display()))?;
    let catalogues = store.list_catalogues()?.len();
    info!(data = %dir.display(), catalogues, "store opened");
    let thumbnails = Thumbnails::open(dir, config.index.thumbnails)
        .with_context(|| format!("cannot open the thumbnails of {}", dir.display()))?;
    let model_args = crate::cli::ModelArgs {
        model: config.model.path.clone(),
        device: config.model.device.clone(),
        batch_size: config.model.batch_size,
        max_pixels: config.limits.max_pixels,
    };
    let embedder = super::load_embedder(&model_args)?;
    let card = embedder.card();
    info!(
        backbone = %card.backbone,
        attributes = card.attributes.len(),
        dimension = card.embedding_dim,
        calibrated = card.match_thresholds.is_some(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
    Ok(Service {
        store: Arc::new(store),
        embedder: Arc::new(embedder),
        limits: ServiceLimits {
            max_batch_items: config.limits.max_batch_items,
            max_k: config.limits.max_k,
        },
        hnsw: HnswConfig {
            m: config.index.m,
            ef_construction: config.index.ef_construction,
            ef_search: config.index.ef_search,
        },
        thumbnails: Some(Arc::new(thumbnails)),
    })
}

/// Run the server.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(
        args.config.as_deref(),
        std::env::vars(),
        &Overrides {
            bind: args.bind,
            data_dir: args.data,
            model: args.model,
            device: args.device,
        },
    )?;
    let addr = config.bind_addr()?;
    let service = open_service(&config)?;
    let store = service.store.clone();
    let thumbnails = service.thumbnails.clone();
    let state = AppState::new(
        service,
        Keys {
            api_key: config.server.api_key.clone(),
            read_key: config.server.read_key.clone(),
        },
        config.server.max_concurrent_forwards,
        config.limits.request_timeout_ms,
        config.limits.max_body_bytes,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let drain = Duration::from_millis(config.server.shutdown_timeout_ms);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        let local = listener.local_addr()?;
        // The one stdout line: scripts and tests read the bound address from it.
        println!("asen listening on http://{local}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        info!(%local, keys = config.server.api_key.is_some(), "serving");
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let ready = state.ready.clone();
        let app = api::router(state);
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
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
            res = server => res.context("server failed")?,
            _ = deadline => warn!(timeout_ms = drain.as_millis() as u64, "drain timed out; closing remaining connections"),
        }
        anyhow::Ok(())
    })?;
    // Blocking tasks still running finish before the runtime drops.
    store.flush().context("cannot flush the store")?;
    if let Some(t) = &thumbnails {
        t.flush().context("cannot flush the thumbnails")?;
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
