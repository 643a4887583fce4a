//! Entry points: `run_with(config, data plane, store, listener, shutdown)` wires the driver and
//! the gRPC services over any adapters (the binary passes Kafka and Redis, dev mode and tests the
//! in-memory ones) and serves until `shutdown` resolves, like mini-redis's `server::run`.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::driver::{Driver, DriverError, DriverSettings};
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::ports::{DataPlane, StateStore};
use crate::service::{ServiceSettings, grpc_services};
use crate::tls::{GrpcTls, TlsError};

/// Why the control plane stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The driver failed (its store or broker refused it for good).
    #[error("driver: {0}")]
    Driver(#[from] DriverError),
    /// The gRPC server failed.
    #[error("grpc: {0}")]
    Service(#[from] ServiceError),
    /// The auth file cannot be used.
    #[error("{0}")]
    Auth(String),
    /// The gRPC port's TLS files cannot be used.
    #[error("grpc tls: {0}")]
    Tls(#[from] TlsError),
    /// The SIGHUP handler (TLS reload) cannot be installed.
    #[error("grpc tls: cannot handle SIGHUP: {0}")]
    Signal(#[from] std::io::Error),
}

/// How the gRPC port authenticates callers under `config`: the auth file, or nobody (allowed by
/// `--insecure`; the binary refuses to start with neither, in-process servers may).
pub fn authenticator(config: &Config) -> Result<Authenticator, RunError> {
    match &config.auth_file {
        Some(path) => Authenticator::from_file(path.clone()).map_err(RunError::Auth),
        None if config.insecure => Ok(Authenticator::open("--insecure")),
        None => Ok(Authenticator::open("no --auth-file")),
    }
}

/// The driver settings of a configuration.
pub fn driver_settings(config: &Config) -> DriverSettings {
    DriverSettings {
        max_objects: config.max_objects,
        zone_durations_ms: config.zone_durations_ms.clone(),
        zones: config.zones.clone(),
        execution_timeout: config.execution_timeout,
        zone_execution_timeouts: config.zone_execution_timeouts.clone(),
        lease_ttl: config.lease_ttl,
        verify_results: config.verify_results,
        result_key_rotation: config.result_key_rotation,
        finished_retention: config.finished_retention,
        metrics: Metrics::default(),
        ..DriverSettings::default()
    }
}

/// Serves the control plane over the given adapters, gRPC on `listener` (over TLS when the
/// configuration names a certificate: [`crate::tls`], reloaded on SIGHUP) and the HTTP admin
/// port (metrics, health; [`crate::admin`]) on `admin` if given, until `shutdown` resolves: the
/// gRPC server stops taking calls (watch streams end), then the driver stops between two steps.
/// Everything acknowledged before is durable in the store. TLS files that cannot be used are an
/// error before anything starts.
pub async fn run_with<D: DataPlane, S: StateStore>(
    config: &Config,
    data: Arc<D>,
    store: Arc<S>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let auth = authenticator(config)?;
    auth.log_mode();
    #[cfg(unix)]
    auth.reload_on_sighup()
        .map_err(|e| RunError::Auth(format!("cannot watch SIGHUP: {e}")))?;
    let tls = match config.grpc_tls() {
        Some(files) => {
            let (tls, served) = GrpcTls::load(files)?;
            info!(subject = %served.subject, not_after = %served.not_after, mode = tls.mode(), "gRPC TLS certificate loaded");
            Some(tls)
        }
        None => None,
    };
    let reload = tls.as_ref().map(GrpcTls::reload_on_sighup).transpose()?;
    let settings = driver_settings(config);
    let metrics = settings.metrics.clone();
    metrics.init_zones(&config.zones);
    let (driver, handle) = Driver::new(data.clone(), store.clone(), settings);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
    let driver_task = tokio::spawn(async move {
        let r = driver
            .run(async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            })
            .await;
        let _ = ended_tx.send(());
        r
    });
    let admin_state = Admin {
        handle: handle.clone(),
        data,
        store: store.clone(),
        metrics: metrics.clone(),
        zones: config.zones.clone(),
        unauthenticated: auth.open_because(),
        transport: tls.as_ref().map_or("plaintext", |t| t.mode()),
    };
    let services = grpc_services(handle, store, ServiceSettings::from_config(config))
        .await?
        .authenticated_by(auth);
    info!(addr = ?listener.local_addr().ok(), security = admin_state.transport, "control plane serving gRPC");
    let grpc_health = admin_state
        .clone()
        .keep_grpc_health(services.health.clone());
    let (admin_stop_tx, admin_stop) = tokio::sync::oneshot::channel::<()>();
    let admin_task = admin.map(|listener| {
        info!(addr = ?listener.local_addr().ok(), "control plane serving /metrics and /health");
        let router = admin_state.router();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = admin_stop.await;
            };
            if let Err(e) = strata_runtime::admin::serve_until(listener, router, stopped).await {
                warn!(error = %e, "admin port failed");
            }
        })
    });
    // A driver that gave up (its store or broker refused it for good) ends the server too, so
    // the process exits and its supervisor can restart it.
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            _ = ended_rx => warn!("the driver stopped; stopping the gRPC server"),
        }
        // From now on the gRPC health says NOT_SERVING, whatever the checks find.
        grpc_health.abort();
    };
    let served = match &tls {
        Some(tls) => {
            services
                .serve_incoming(tls.incoming(listener, metrics), shutdown)
                .await
        }
        None => services.serve(listener, shutdown).await,
    };
    if let Some(reload) = reload {
        reload.abort();
    }
    let _ = admin_stop_tx.send(());
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    stop_tx.send_replace(true);
    let driven = match driver_task.await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "driver task ended abnormally");
            Ok(())
        }
    };
    served?;
    driven?;
    Ok(())
}
