//! A cycle's HEADs: checked against their rollback guards all at once,
//! then what each says, into the view and the metrics.
use bascule_core::head::{Head, RollbackGuard};
use bascule_core::provider::Provider;
use bascule_core::Error;

use std::collections::BTreeMap;

use super::{ProviderView, Watched};
use crate::serve::metrics::{self as m, ts};
use crate::tenant::{HeadFetch, HeadRead, HeadState};

/// Checks the opened HEADs of a cycle against their rollback guards in one
/// call to the store ([`RollbackGuard::accept_many`]); each fetch becomes
/// what a guarded read gives.
pub(super) fn guard_all(
    tenants: &BTreeMap<usize, Watched>,
    providers: &[Provider],
    fetched: Vec<(usize, Vec<HeadFetch>)>,
) -> Vec<(usize, Vec<HeadRead>)> {
    let mut asks = Vec::new();
    for (i, per) in &fetched {
        for (p, f) in per.iter().enumerate() {
            if let HeadFetch::Opened(h, _) = f {
                asks.push((&*tenants[i].tenant.guards[p], providers[p].name.as_str(), h));
            }
        }
    }
    let verdicts = RollbackGuard::accept_many(&asks);
    drop(asks);
    let mut verdicts: std::collections::VecDeque<Result<(), Error>> = match verdicts {
        Ok(v) => v.into(),
        // the store did not answer: no HEAD is taken as newer this cycle
        Err(e) => {
            tracing::error!(error = %e, "Cannot check the rollback marks");
            std::iter::repeat_with(|| Err(Error::Mark { name: "(cycle)".into(), reason: e.to_string() }))
                .take(fetched.iter().map(|(_, per)| per.iter().filter(|f| matches!(f, HeadFetch::Opened(..))).count()).sum())
                .collect()
        }
    };
    fetched
        .into_iter()
        .map(|(i, per)| {
            let reads = per
                .into_iter()
                .map(|f| match f {
                    HeadFetch::NotModified => HeadRead::NotModified,
                    HeadFetch::Absent => HeadRead::Read { state: HeadState::Absent, etag: None },
                    HeadFetch::Opened(h, etag) => match verdicts.pop_front().unwrap_or(Ok(())) {
                        Ok(()) => HeadRead::Read { state: HeadState::Valid(h), etag },
                        Err(e) => HeadRead::Read { state: HeadState::Refused(e), etag: None },
                    },
                    HeadFetch::Refused(e) => HeadRead::Read { state: HeadState::Refused(e), etag: None },
                    HeadFetch::Unreachable(e) => HeadRead::Unreachable(e),
                })
                .collect();
            (i, reads)
        })
        .collect()
}

/// What the tenant's HEAD on each provider said; returns the refusals and,
/// per provider, (answered, changed).
pub(super) fn apply_heads(t: &mut Watched, providers: &[Provider], reads: Vec<HeadRead>) -> (usize, Vec<(bool, bool)>) {
    let mut refused = 0;
    let mut per_result = Vec::new();
    for ((i, p), read) in providers.iter().enumerate().zip(reads) {
        let st = &mut t.per[i];
        let mut changed = false;
        t.dirty |= !matches!(read, HeadRead::NotModified);
        let ok = match read {
            HeadRead::NotModified => true,
            HeadRead::Read { state: HeadState::Absent, .. } => {
                st.etag = None;
                st.view = ProviderView { provider: std::mem::take(&mut st.view.provider), status: "absent".into(), ..Default::default() };
                true
            }
            HeadRead::Read { state: HeadState::Valid(h), etag } => {
                changed = st.view.sequence != Some(h.sequence);
                take_head(h, &mut st.view);
                st.etag = etag;
                st.view.status = "ok".into();
                true
            }
            HeadRead::Read { state: HeadState::Refused(e @ Error::Mark { .. }), .. } => {
                // the marks could not be checked (the state store): not taken, read again next time
                st.view.status = format!("not checked: {e}");
                st.etag = None;
                true
            }
            HeadRead::Read { state: HeadState::Refused(e), .. } => {
                let reason = match &e {
                    Error::Rollback { .. } => "rollback",
                    Error::BadSignature { .. } => "bad_signature",
                    _ => "bad_head",
                };
                m::INTEGRITY_FAILURES.with_label_values(&[&t.name, &p.name, reason]).inc();
                tracing::error!(tenant = %t.name, provider = %p.name, error = %e, "HEAD refused");
                st.view.status = format!("refused: {e}");
                // keep the last good state; read it again next time
                st.etag = None;
                refused += 1;
                true
            }
            HeadRead::Unreachable(e) => {
                st.view.status = format!("unreachable: {e}");
                false
            }
        };
        if st.view.sequence.is_some() {
            show_head(&t.name, &p.name, &st.view);
        }
        t.changed |= changed;
        per_result.push((ok, changed));
    }
    (refused, per_result)
}

/// What a valid HEAD says, into the view.
fn take_head(h: Head, view: &mut ProviderView) {
    view.sequence = Some(h.sequence);
    view.latest_snapshot = h.latest_snapshot;
    view.latest_wal = h.latest_wal;
    view.agent_time = Some(h.agent_time);
    view.restore_test = h.restore_test;
}

/// What the last valid HEAD said (kept in the view), into the metrics.
fn show_head(tenant: &str, provider: &str, view: &ProviderView) {
    let Some(agent_time) = view.agent_time else { return };
    if let Some(rt) = &view.restore_test {
        m::RESTORE_TEST_PASSED.with_label_values(&[tenant]).set(rt.passed as i64);
        if let Some(at) = rt.last_success_at {
            let g = m::RESTORE_TEST_LAST_SUCCESS.with_label_values(&[tenant]);
            g.set(g.get().max(ts(at)));
        }
    }
    if view.latest_wal.is_some() {
        m::LAST_WAL.with_label_values(&[tenant, provider]).set(ts(agent_time));
        let lag = (chrono::Utc::now() - agent_time).num_milliseconds().max(0) as f64 / 1000.0;
        m::REPLICATION_LAG.with_label_values(&[tenant, provider]).set(lag);
    }
}
