//! The server: configuration, shared state, the router, serving and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use dop_store::Store;
use serde::Deserialize;

use axum_server::accept::DefaultAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

use crate::connections::Limited;
use crate::runner::{Runner, RunnerConfig};

/// The server's settings (`dopc.toml`, then environment, then flags).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Where to listen (default `127.0.0.1:8780`: loopback only).
    pub bind: SocketAddr,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Connections open at once (streams included); one more is closed as soon as it is
    /// accepted, before anything is read from it.
    pub max_connections: usize,
    /// Seconds a connection may take to send a request's head (its first, and the next on a
    /// kept-alive connection) before it is closed; a TLS handshake gets as long.
    pub header_read_timeout_secs: u64,
    /// How long a shutdown waits for running executions to stop.
    pub shutdown_timeout_secs: u64,
    /// The `local` provider's directory (default `<store>/local`).
    pub local_dir: Option<PathBuf>,
    /// The PostgreSQL database of the store (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`),
    /// when neither `--store-url`, `DOP_STORE_URL` nor dop.conf's `store_url` names one;
    /// `None`: sled in the store directory.
    pub store_url: Option<String>,
    /// Seconds dopi waits for a node's SSH server.
    pub connect_timeout_secs: u64,
    /// Seconds one cloud API request (OpenStack) of a dopv execution may take (dopv's
    /// `--api-timeout`).
    pub provider_api_timeout_secs: u64,
    /// Seconds a dopv execution waits for a cloud resource to reach a status (dopv's
    /// `--wait-timeout`).
    pub provider_wait_timeout_secs: u64,
    /// Serve HTTPS (and WSS) with this certificate chain and key (PEM files).
    pub tls: Option<TlsConfig>,
    /// Per plan, its monitor (`[monitor.<plan>]`); the API can override it.
    pub monitor: std::collections::BTreeMap<String, crate::monitor::MonitorSettings>,
    /// How much execution history is kept (`[retention]`).
    pub retention: crate::retention::Retention,
    /// How the nodes' roles resolve, for runs, resets, plan states and plan checks (from
    /// `dop.conf`, as dopi and dopv read it, not `dopc.toml`).
    #[serde(skip)]
    pub lookup: dop_core::LookupSettings,
    /// Where to write the Hiera data for Puppet after plan changes (from `dop.conf`);
    /// `None`: not written.
    #[serde(skip)]
    pub hiera_dir: Option<PathBuf>,
    /// The time and output limits of hooks, `content.exec` programs and local commands (from
    /// `dop.conf`, as dopi and dopv read them).
    #[serde(skip)]
    pub limits: dop_core::ProgramLimits,
}

/// `[tls]` of `dopc.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8780)),
            max_body_bytes: 8 * 1024 * 1024,
            max_connections: 512,
            header_read_timeout_secs: 10,
            shutdown_timeout_secs: 30,
            local_dir: None,
            store_url: None,
            connect_timeout_secs: 10,
            provider_api_timeout_secs: dopv::provider::ProviderOptions::API_TIMEOUT.as_secs(),
            provider_wait_timeout_secs: dopv::provider::ProviderOptions::WAIT_TIMEOUT.as_secs(),
            tls: None,
            monitor: std::collections::BTreeMap::new(),
            retention: crate::retention::Retention::default(),
            lookup: dop_core::LookupSettings::default(),
            hiera_dir: None,
            limits: dop_core::ProgramLimits::default(),
        }
    }
}

impl ServeConfig {
    /// Reads a `dopc.toml`; unknown keys are an error naming them.
    pub fn from_toml(text: &str) -> Result<ServeConfig, String> {
        let config: ServeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.max_connections == 0 || config.header_read_timeout_secs == 0 {
            return Err(
                "max_connections and header_read_timeout_secs must be at least 1 (0 would \
                 refuse every connection)"
                    .into(),
            );
        }
        if let Some(url) = &config.store_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(
                    "store_url must be a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/\
                     DATABASE); remove it to keep the store in the store directory"
                        .into(),
                );
            }
        }
        for (plan, settings) in &config.monitor {
            settings
                .check()
                .map_err(|e| format!("[monitor.{plan}]: {e}"))?;
        }
        Ok(config)
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The plan store.
    pub store: Arc<Store>,
    /// The execution queue.
    pub runner: Arc<Runner>,
    /// Where execution logs are.
    pub log_dir: PathBuf,
    /// Becomes true when the server stops: streams say goodbye.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Recently computed plan states.
    pub state_cache: Arc<crate::api::state::StateCache>,
    /// The API tokens, as last read.
    pub tokens: Arc<crate::auth::TokenCache>,
    /// The monitor (schedules, policies, findings).
    pub monitor: Arc<crate::monitor::Monitor>,
    /// The numbers `/metrics` serves.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What dopv's providers need (to tell each node's standing).
    pub providers: dopv::provider::ProviderOptions,
    /// How the nodes' roles resolve.
    pub lookup: Arc<dop_core::LookupSettings>,
    /// Where the Hiera data for Puppet goes.
    pub hiera_dir: Option<PathBuf>,
}

/// The API router (`/api/v1/...`).
pub fn router(state: AppState, max_body: usize) -> Router {
    use crate::api::{executions, logs, monitor, plans, state as plan_state};
    let authenticated = Router::new()
        .route(
            "/plans",
            get(plans::list)
                .post(plans::add)
                .put(plans::update_original),
        )
        .route(
            "/plans/{name}",
            get(plans::get).put(plans::update).delete(plans::remove),
        )
        .route("/plans/{name}/versions", get(plans::versions))
        .route("/plans/{name}/diff", get(plans::diff))
        .route("/plans/{name}/reset", put(plans::reset))
        .route("/plans/{name}/state", get(plan_state::get))
        .route("/plans/{name}/state/stream", get(plan_state::stream))
        .route(
            "/plans/{name}/monitor",
            get(monitor::get).put(monitor::put).delete(monitor::remove),
        )
        .route("/metrics", get(monitor::metrics))
        .route(
            "/executions",
            get(executions::list)
                .post(executions::create)
                .delete(executions::clear),
        )
        .route(
            "/executions/{id}",
            get(executions::get).delete(executions::remove),
        )
        .route("/executions/{id}/cancel", post(executions::cancel))
        .route("/executions/{id}/log", get(logs::get))
        .route("/executions/{id}/log/stream", get(logs::stream))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            note_plan_writes,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ));
    let api = Router::new()
        .route(
            "/ping",
            get(|| async {
                axum::Json(dopc_client::api::Pong {
                    pong: "pong".into(),
                })
            }),
        )
        .merge(authenticated)
        .fallback(|| async { crate::error::ApiError::not_found("no such endpoint") });
    Router::new()
        .nest("/api/v1", api)
        .fallback(|| async {
            crate::error::ApiError::not_found("no such endpoint; the API is under /api/v1")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// A request that changed plans tells the runner, so that no cached state outlives it; one
/// that stored or removed a plan's text (`/plans`, `/plans/{name}`) also writes the Hiera data
/// for Puppet before it answers (a reset or a monitor setting leaves that data as it is).
async fn note_plan_writes(
    axum::extract::State(s): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let after_plans = path.split_once("/plans").map(|(_, rest)| rest);
    let writes = req.method() != axum::http::Method::GET && after_plans.is_some();
    let plan_text = after_plans.is_some_and(|rest| !rest.trim_start_matches('/').contains('/'));
    let response = next.run(req).await;
    if writes && response.status().is_success() {
        s.runner.changed();
        if let (true, Some(dir)) = (plan_text, s.hiera_dir.clone()) {
            let (store, lookup) = (s.store.clone(), s.lookup.clone());
            let written =
                tokio::task::spawn_blocking(move || dop_puppet::hiera::sync(&store, &dir, &lookup))
                    .await;
            match written {
                Ok(Ok(index)) => {
                    for (plan, problem) in index.problems() {
                        tracing::warn!(
                            plan,
                            problem,
                            "Puppet keeps the previous Hiera data of the plan"
                        );
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the Hiera data for Puppet was not updated")
                }
                Err(e) => tracing::error!(error = %e, "the Hiera data for Puppet was not updated"),
            }
        }
    }
    response
}

/// One structured log line per request.
async fn log_request(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let started = Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// Applies the history limits when the server starts and then every interval, until it stops.
async fn keep_history(
    runner: Arc<Runner>,
    log_dir: PathBuf,
    retention: crate::retention::Retention,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (runner, log_dir, policy) = (runner.clone(), log_dir.clone(), retention.clone());
        let applied = tokio::task::spawn_blocking(move || {
            policy.apply(runner.book(), &log_dir, dop_store::now_ms())
        })
        .await;
        match applied {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!(
                    removed = removed.len(),
                    "retention: removed old executions and their logs"
                );
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "retention: cannot remove old executions"),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.interval()) => {}
            _ = closing.wait_for(|c| *c) => return,
        }
    }
}

/// HTTP/1.1 only (the API and its websockets need nothing else; the clients speak nothing
/// else), with the header-read timeout: hyper closes a connection whose request head has not
/// arrived in time, idle kept-alive ones included.
fn bounded<A: axum_server::Address>(
    server: axum_server::Server<A>,
    header_timeout: Duration,
) -> axum_server::Server<A> {
    let mut server = server;
    let builder = server.http_builder();
    *builder = builder.clone().http1_only();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    server
}

/// The certificate and key, for HTTP/1.1 only (ALPN offers nothing else).
async fn rustls_config(tls: &TlsConfig) -> std::io::Result<RustlsConfig> {
    // ring, as everywhere in dop (no C crypto build); set once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let loaded = RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "TLS: cannot use {} and {}: {e}",
                    tls.cert.display(),
                    tls.key.display()
                ),
            )
        })?;
    let mut config = (*loaded.get_inner()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

/// Serves until `shutdown` resolves, then stops taking requests and hands running executions
/// back (see [`Runner::shutdown`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    log_dir: PathBuf,
    config: &ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local_dir = config
        .local_dir
        .clone()
        .unwrap_or_else(|| store.root().join("local"));
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let providers = dopv::provider::ProviderOptions {
        api_timeout: std::time::Duration::from_secs(config.provider_api_timeout_secs.max(1)),
        wait_timeout: std::time::Duration::from_secs(config.provider_wait_timeout_secs.max(1)),
        puppet_hiera_dir: config.hiera_dir.clone(),
        ..dopv::provider::ProviderOptions::new(local_dir)
    };
    // The server reads the catalog, iterations and its records with every request and run.
    store.hold_databases();
    let runner = Runner::start(
        store.clone(),
        RunnerConfig {
            log_dir: log_dir.clone(),
            providers: providers.clone(),
            connect_timeout: config.connect_timeout_secs,
            limits: config.limits,
            lookup: config.lookup.clone(),
        },
        metrics.clone(),
    )
    .map_err(std::io::Error::other)?;
    let monitor = crate::monitor::Monitor::new(
        runner.clone(),
        metrics.clone(),
        providers.clone(),
        config.monitor.clone(),
    );
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    tokio::spawn(monitor.clone().run(closing.clone()));
    tokio::spawn(keep_history(
        runner.clone(),
        log_dir.clone(),
        config.retention.clone(),
        closing.clone(),
    ));
    let state = AppState {
        store,
        runner: runner.clone(),
        log_dir,
        closing,
        state_cache: Arc::default(),
        tokens: Arc::default(),
        monitor,
        metrics,
        providers,
        lookup: Arc::new(config.lookup.clone()),
        hiera_dir: config.hiera_dir.clone(),
    };
    let app = router(state, config.max_body_bytes);
    let shutdown = async move {
        shutdown.await;
        tracing::info!("stopping: no new requests; streams are closed");
        closing_tx.send_replace(true);
    };
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(None);
    });
    let address = listener.local_addr()?;
    let header_timeout = Duration::from_secs(config.header_read_timeout_secs.max(1));
    let app = app.into_make_service();
    match &config.tls {
        None => {
            tracing::info!(%address, "dopc serving (HTTP)");
            let plain = Limited::new(DefaultAcceptor, config.max_connections, header_timeout);
            bounded(axum_server::from_tcp(listener.into_std()?)?, header_timeout)
                .acceptor(plain)
                .handle(handle)
                .serve(app)
                .await?;
        }
        Some(tls) => {
            let rustls = rustls_config(tls).await?;
            tracing::info!(%address, "dopc serving (HTTPS)");
            // The connection is counted from its accept, before its handshake, which gets as
            // long as a request head.
            let acceptor = Limited::new(
                RustlsAcceptor::new(rustls).handshake_timeout(header_timeout),
                config.max_connections,
                header_timeout,
            );
            bounded(axum_server::from_tcp(listener.into_std()?)?, header_timeout)
                .acceptor(acceptor)
                .handle(handle)
                .serve(app)
                .await?;
        }
    }
    runner
        .shutdown(Duration::from_secs(config.shutdown_timeout_secs))
        .await;
    tracing::info!("dopc stopped");
    Ok(())
}

#[cfg(test)]
mod config_tests {
    use super::ServeConfig;

    #[test]
    fn the_provider_timeouts_are_read_and_default_to_dopvs() {
        let default = ServeConfig::default();
        assert_eq!(default.provider_api_timeout_secs, 60);
        assert_eq!(default.provider_wait_timeout_secs, 600);
        let set = ServeConfig::from_toml(
            "provider_api_timeout_secs = 5\nprovider_wait_timeout_secs = 30\n",
        )
        .unwrap();
        assert_eq!(
            (
                set.provider_api_timeout_secs,
                set.provider_wait_timeout_secs
            ),
            (5, 30)
        );
        let typo = ServeConfig::from_toml("provider_api_timeout = 5\n").unwrap_err();
        assert!(typo.contains("provider_api_timeout"), "{typo}");
    }

    #[test]
    fn connection_bounds_are_read_and_zero_is_refused() {
        let default = ServeConfig::default();
        assert_eq!(
            (default.max_connections, default.header_read_timeout_secs),
            (512, 10)
        );
        let set =
            ServeConfig::from_toml("max_connections = 16\nheader_read_timeout_secs = 2\n").unwrap();
        assert_eq!((set.max_connections, set.header_read_timeout_secs), (16, 2));
        for zero in ["max_connections = 0\n", "header_read_timeout_secs = 0\n"] {
            let refused = ServeConfig::from_toml(zero).unwrap_err();
            assert!(refused.contains("at least 1"), "{refused}");
        }
    }

    #[test]
    fn a_store_url_is_read_and_must_be_a_postgresql_url() {
        assert_eq!(ServeConfig::default().store_url, None);
        let set =
            ServeConfig::from_toml("store_url = \"postgres://dop:pw@db:5432/dop\"\n").unwrap();
        assert_eq!(
            set.store_url.as_deref(),
            Some("postgres://dop:pw@db:5432/dop")
        );
        let refused = ServeConfig::from_toml("store_url = \"/var/lib/dop\"\n").unwrap_err();
        assert!(
            refused.contains("store_url must be a PostgreSQL URL"),
            "{refused}"
        );
    }
}
