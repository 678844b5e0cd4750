//! The agent's Prometheus metrics, in the process-wide default registry.
//! Times are timestamps (seconds since the epoch), so that an alert computes
//! `time() - x` and a stalled agent cannot look healthy.
use std::sync::LazyLock;

use prometheus::{register_gauge_vec, register_int_counter_vec, register_int_gauge, GaugeVec, IntCounterVec, IntGauge};

pub static SPOOL_FILES: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("bascule_agent_spool_segments", "WAL files in the spool, not yet on both providers").unwrap());
pub static SPOOL_BYTES: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("bascule_agent_spool_bytes", "Bytes in the WAL spool").unwrap());
pub static WAL_OLDEST_PENDING: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "bascule_agent_wal_oldest_pending_timestamp_seconds",
        "When the oldest WAL file not yet on this provider was archived (now when none is pending)",
        &["provider"]
    )
    .unwrap()
});
pub static WAL_LAST_DURABLE: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "bascule_agent_wal_last_durable_timestamp_seconds",
        "When the newest WAL file this provider holds was archived",
        &["provider"]
    )
    .unwrap()
});
pub static UPLOAD_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("bascule_agent_upload_bytes_total", "Bytes uploaded to each provider", &["provider"]).unwrap()
});
pub static UPLOAD_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("bascule_agent_upload_errors_total", "Failed uploads to each provider", &["provider"]).unwrap()
});

pub static JOB_LAST_SUCCESS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "bascule_agent_job_last_success_timestamp_seconds",
        "When the newest run of a job that reached both providers ended",
        &["job"]
    )
    .unwrap()
});

/// Registers every metric, so that each shows up from the first scrape.
pub fn register() {
    LazyLock::force(&SPOOL_FILES);
    LazyLock::force(&SPOOL_BYTES);
    LazyLock::force(&WAL_OLDEST_PENDING);
    LazyLock::force(&WAL_LAST_DURABLE);
    LazyLock::force(&UPLOAD_BYTES);
    LazyLock::force(&UPLOAD_ERRORS);
    LazyLock::force(&JOB_LAST_SUCCESS);
}

/// Serves `GET /metrics` (and `/healthz`) until `cancel`.
pub async fn serve(listen: std::net::SocketAddr, cancel: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context;
    register();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async {
                let mut out = String::new();
                let _ = prometheus::TextEncoder::new().encode_utf8(&prometheus::gather(), &mut out);
                ([("content-type", "text/plain; version=0.0.4")], out)
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("metrics.listen {listen}"))?;
    tracing::info!(listen = %listen, "Serving /metrics");
    axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await?;
    Ok(())
}

pub fn timestamp(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
