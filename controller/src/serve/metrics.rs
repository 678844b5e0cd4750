//! The controller's Prometheus metrics, in the process-wide default
//! registry. Times are timestamps where they can be (`time() - x` in an
//! alert, so that a stalled controller cannot look healthy); the monitor's own
//! `bascule_monitor_last_cycle_timestamp_seconds` says when they were last
//! brought up to date.
use std::sync::LazyLock;

use prometheus::{
    register_gauge, register_gauge_vec, register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Gauge, GaugeVec,
    IntCounterVec, IntGauge, IntGaugeVec,
};

macro_rules! gauge_vec {
    ($name:ident, $metric:literal, $help:literal, $labels:expr) => {
        pub static $name: LazyLock<GaugeVec> = LazyLock::new(|| register_gauge_vec!($metric, $help, $labels).unwrap());
    };
}

gauge_vec!(
    REPLICATION_LAG,
    "bascule_replication_lag_seconds",
    "Age of the newest state a provider holds of a WAL-shipping tenant (now minus its signed HEAD's agent time)",
    &["tenant", "provider"]
);
gauge_vec!(
    LAST_WAL,
    "bascule_last_wal_timestamp_seconds",
    "Agent time of the HEAD naming the newest WAL file a provider holds",
    &["tenant", "provider"]
);
gauge_vec!(
    LAST_SNAPSHOT,
    "bascule_last_snapshot_timestamp_seconds",
    "Start time of the newest snapshot of each kind a provider holds",
    &["tenant", "provider", "kind"]
);
gauge_vec!(DRILL_RTO, "bascule_drill_rto_seconds", "Recovery time measured by the newest finished drill", &["runbook"]);
gauge_vec!(DRILL_RPO, "bascule_drill_rpo_seconds", "Data loss measured by the newest finished drill", &["runbook"]);
gauge_vec!(RTO_TARGET, "bascule_rto_target_seconds", "The runbook's recovery time objective", &["runbook"]);
gauge_vec!(
    DRILL_LAST_RUN,
    "bascule_drill_last_run_timestamp_seconds",
    "When the newest finished drill of a runbook with this result ended",
    &["runbook", "result"]
);
gauge_vec!(
    DRILL_STEP_DURATION,
    "bascule_drill_step_duration_seconds",
    "Duration of each step in the newest finished drill",
    &["runbook", "step"]
);

gauge_vec!(
    RESTORE_TEST_LAST_SUCCESS,
    "bascule_restore_test_last_success_timestamp_seconds",
    "When an on-site restore test of the tenant last passed (from its agent's signed HEAD)",
    &["tenant"]
);
pub static RESTORE_TEST_PASSED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "bascule_restore_test_passed",
        "1 when the tenant's newest on-site restore test passed, 0 when it failed",
        &["tenant"]
    )
    .unwrap()
});
gauge_vec!(PRUNE_LAST_RUN, "bascule_prune_last_run_timestamp_seconds", "When the scheduled prune of a tenant last ended", &["tenant"]);
gauge_vec!(PRUNE_FREED, "bascule_prune_freed_bytes", "Bytes the last scheduled prune of a tenant deleted (both providers)", &["tenant"]);
gauge_vec!(
    PRUNE_UNVERIFIED,
    "bascule_prune_unverified_manifests",
    "Manifests the last scheduled prune of a tenant found verifying on no provider (what they may name is kept)",
    &["tenant"]
);
gauge_vec!(
    PRUNE_REFUSED_LISTS,
    "bascule_prune_refused_lists",
    "Condemned lists the last scheduled prune of a tenant ignored, for this controller did not sign them",
    &["tenant"]
);
pub static PROVIDER_UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("bascule_provider_up", "1 when the provider answered the last monitor cycle", &["provider"]).unwrap()
});
pub static OBJECTS_MISSING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "bascule_objects_missing",
        "Objects of a tenant the other provider holds and this one lacks (at the last listing)",
        &["tenant", "provider"]
    )
    .unwrap()
});
pub static INTEGRITY_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "bascule_integrity_failures_total",
        "Objects refused: bad signature, rollback, wrong tenant",
        &["tenant", "provider", "reason"]
    )
    .unwrap()
});
pub static VERIFY_LAST_RUN: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!("bascule_verify_last_run_timestamp_seconds", "When the scheduled verify of a tenant last ended", &["tenant"])
        .unwrap()
});
pub static VERIFY_PROBLEMS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("bascule_verify_problems", "Problems the last scheduled verify of a tenant found", &["tenant"]).unwrap()
});
pub static CYCLE_SECONDS: LazyLock<Gauge> =
    LazyLock::new(|| register_gauge!("bascule_monitor_cycle_seconds", "Duration of the last monitor cycle").unwrap());
pub static ROUND_SECONDS: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "bascule_monitor_round_seconds",
        "Longest round (the HEADs or the listings of up to 2,000 tenants) of the monitor cycle under way or, when longer, of the last one: how long a tenant gained waits to be read"
    )
    .unwrap()
});
pub static LAST_CYCLE: LazyLock<Gauge> =
    LazyLock::new(|| register_gauge!("bascule_monitor_last_cycle_timestamp_seconds", "When the last monitor cycle ended").unwrap());
pub static TENANTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("bascule_monitor_tenants", "Tenants this process watches (its leases, with a shared state)").unwrap()
});
pub static TENANT_HELD: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "bascule_tenant_held",
        "1 for each tenant this process watches, labelled with the replica (with a shared state, each tenant is held by one replica)",
        &["tenant", "replica"]
    )
    .unwrap()
});
pub static API_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("bascule_api_requests_total", "API requests by route and status", &["route", "status"]).unwrap()
});

gauge_vec!(
    PROJECTED_RTO,
    "bascule_projected_rto_seconds",
    "How long a restore of the tenant would take now: its newest base backup and the WAL since (or its newest export), at the throughput its last restore measured",
    &["tenant"]
);
gauge_vec!(
    STANDBY_REPLAY_LAG,
    "bascule_standby_replay_lag_seconds",
    "How long the oldest WAL file on the providers that the standby has not replayed has been there (0: caught up)",
    &["tenant"]
);
gauge_vec!(
    STANDBY_REPLAY_LSN,
    "bascule_standby_replay_lsn_bytes",
    "The standby's last replayed WAL position, in bytes from 0/0",
    &["tenant"]
);
gauge_vec!(
    STANDBY_LAST_REPLAY,
    "bascule_standby_last_replay_timestamp_seconds",
    "Commit time of the last transaction the standby replayed",
    &["tenant"]
);
pub static STANDBY_UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("bascule_standby_up", "1 while the standby's server answers and is in recovery", &["tenant"]).unwrap()
});
pub static STANDBY_BEHIND: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("bascule_standby_wal_behind", "WAL segments on the providers the standby has not replayed", &["tenant"])
        .unwrap()
});

pub static API_REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "bascule_api_refusals_total",
        "API requests refused for their token (401, 403): answered, or answered 429 once the address had its share",
        &["outcome"]
    )
    .unwrap()
});
pub static API_HANDSHAKES_FAILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "bascule_api_tls_handshakes_failed_total",
        "TLS handshakes that failed, timed out, or were turned away (too many at once)",
        &["reason"]
    )
    .unwrap()
});

/// Registers every metric, so that each shows up from the first scrape.
pub fn register() {
    LazyLock::force(&REPLICATION_LAG);
    LazyLock::force(&LAST_WAL);
    LazyLock::force(&LAST_SNAPSHOT);
    LazyLock::force(&DRILL_RTO);
    LazyLock::force(&DRILL_RPO);
    LazyLock::force(&RTO_TARGET);
    LazyLock::force(&DRILL_LAST_RUN);
    LazyLock::force(&DRILL_STEP_DURATION);
    LazyLock::force(&RESTORE_TEST_LAST_SUCCESS);
    LazyLock::force(&RESTORE_TEST_PASSED);
    LazyLock::force(&PRUNE_LAST_RUN);
    LazyLock::force(&PRUNE_FREED);
    LazyLock::force(&PROVIDER_UP);
    LazyLock::force(&OBJECTS_MISSING);
    LazyLock::force(&INTEGRITY_FAILURES);
    LazyLock::force(&VERIFY_LAST_RUN);
    LazyLock::force(&VERIFY_PROBLEMS);
    LazyLock::force(&CYCLE_SECONDS);
    LazyLock::force(&LAST_CYCLE);
    LazyLock::force(&ROUND_SECONDS);
    LazyLock::force(&TENANTS);
    LazyLock::force(&TENANT_HELD);
    LazyLock::force(&API_REQUESTS);
    LazyLock::force(&API_REFUSALS);
    LazyLock::force(&PROJECTED_RTO);
    LazyLock::force(&STANDBY_REPLAY_LAG);
    LazyLock::force(&STANDBY_REPLAY_LSN);
    LazyLock::force(&STANDBY_LAST_REPLAY);
    LazyLock::force(&STANDBY_UP);
    LazyLock::force(&STANDBY_BEHIND);
    LazyLock::force(&API_HANDSHAKES_FAILED);
}

/// Drops a tenant's series once another replica watches it (the union of
/// the replicas' metrics names each tenant once; counters stay).
pub fn forget_tenant(tenant: &str, replica: &str, providers: &[String], kinds: &[&str]) {
    let _ = TENANT_HELD.remove_label_values(&[tenant, replica]);
    for p in providers {
        let _ = REPLICATION_LAG.remove_label_values(&[tenant, p]);
        let _ = LAST_WAL.remove_label_values(&[tenant, p]);
        let _ = OBJECTS_MISSING.remove_label_values(&[tenant, p]);
        for k in kinds {
            let _ = LAST_SNAPSHOT.remove_label_values(&[tenant, p, k]);
        }
    }
    for g in [
        &RESTORE_TEST_LAST_SUCCESS,
        &PRUNE_LAST_RUN,
        &PRUNE_FREED,
        &PRUNE_UNVERIFIED,
        &PRUNE_REFUSED_LISTS,
        &PROJECTED_RTO,
        &VERIFY_LAST_RUN,
    ] {
        let _ = g.remove_label_values(&[tenant]);
    }
    for g in [&RESTORE_TEST_PASSED, &VERIFY_PROBLEMS] {
        let _ = g.remove_label_values(&[tenant]);
    }
}

pub fn ts(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// The text exposition of the default registry.
pub fn render() -> String {
    let mut out = String::new();
    let _ = prometheus::TextEncoder::new().encode_utf8(&prometheus::gather(), &mut out);
    out
}
