//! Round trips of every signed or sealed codec of the format, on arbitrary
//! values: what is signed (or sealed) opens back to the same value, bound to
//! its tenant and its key; moved under another key, it is refused.
use std::sync::OnceLock;
use std::time::Duration;

use bascule_controller::drill::report::{Measure, Report, ReportStep, Verdict};
use bascule_controller::model::{DrillStatus, Mode, Outcome};
use bascule_core::chunker::ChunkerParams;
use bascule_core::condemned::Condemned;
use bascule_core::head::Head;
use bascule_core::keys::{AgentKey, Identities, Recipient, TrustedKey};
use bascule_core::manifest::{ArchiveLayout, DataBlock, Extent, Index, Manifest, Segment, SnapshotKind};
use bascule_core::object::ObjectRef;
use bascule_core::restore_test::{RestoreTestResult, RestoreTestSummary};
use bascule_core::retention::Retention;
use bascule_core::signed::Signed;
use bascule_core::wal::{Lsn, WalName, WalRange, WalRecord};
use chrono::{DateTime, Utc};
use proptest::prelude::*;

fn key() -> &'static AgentKey {
    static K: OnceLock<AgentKey> = OnceLock::new();
    K.get_or_init(AgentKey::generate)
}

fn customer() -> &'static (Identities, Recipient) {
    static C: OnceLock<(Identities, Recipient)> = OnceLock::new();
    C.get_or_init(Identities::generate)
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9éèçà ._/-]{0,16}"
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,15}"
}

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800, 0u32..1_000_000_000).prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap_or_default())
}

fn hash() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

fn object() -> impl Strategy<Value = ObjectRef> {
    (text(), any::<u64>(), hash()).prop_map(|(key, len, hash)| ObjectRef { key, len, hash })
}

fn retention() -> impl Strategy<Value = Option<Retention>> {
    proptest::option::of(
        (any::<u32>(), any::<u32>(), any::<u32>(), proptest::option::of(0u64..10_000_000))
            .prop_map(|(daily, weekly, monthly, w)| Retention { daily, weekly, monthly, pitr_window: w.map(Duration::from_secs) }),
    )
}

fn manifest() -> impl Strategy<Value = Manifest> {
    let ids = (name(), "[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}", name(), text(), time(), time());
    let sizes = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>());
    let kinds = prop_oneof![Just(SnapshotKind::PgDump), Just(SnapshotKind::Command), Just(SnapshotKind::Basebackup)];
    let wal = proptest::option::of((any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(a, b, tl)| WalRange {
        start: Lsn(a),
        stop: Lsn(b),
        timeline: tl,
    }));
    let refs = (object(), proptest::collection::vec(object(), 0..5), proptest::collection::vec(text(), 0..3));
    let chunker = (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(min_size, avg_size, max_size)| ChunkerParams {
        min_size,
        avg_size,
        max_size,
    });
    (ids, sizes, kinds, wal, refs, chunker, retention()).prop_map(
        |((tenant, name, job, host, started_at, finished_at), s, kind, wal, (index, objects, recipients), chunker, retention)| Manifest {
            format: bascule_core::manifest::FORMAT,
            tenant,
            name,
            kind,
            job,
            host,
            started_at,
            finished_at,
            source_bytes: s.0,
            chunk_count: s.1,
            new_bytes: s.2,
            stored_bytes: s.3,
            recipients,
            chunker,
            pack_size: s.4,
            segment_size: s.5,
            index,
            objects,
            wal,
            retention,
        },
    )
}

fn summary() -> impl Strategy<Value = RestoreTestSummary> {
    (text(), name(), text(), time(), any::<bool>(), proptest::option::of(time())).prop_map(
        |(key, job, snapshot, at, passed, last_success_at)| RestoreTestSummary { key, job, snapshot, at, passed, last_success_at },
    )
}

fn head() -> impl Strategy<Value = Head> {
    (name(), any::<u64>(), proptest::option::of(text()), proptest::option::of(text()), time(), proptest::option::of(summary())).prop_map(
        |(tenant, sequence, latest_snapshot, latest_wal, agent_time, restore_test)| Head {
            format: 1,
            tenant,
            sequence,
            latest_snapshot,
            latest_wal,
            agent_time,
            restore_test,
        },
    )
}

fn wal_name() -> impl Strategy<Value = WalName> {
    let segment = (1u32..u32::MAX, any::<u32>(), 0u32..256).prop_map(|(tl, log, seg)| format!("{tl:08X}{log:08X}{seg:08X}"));
    let history = (2u32..u32::MAX).prop_map(|tl| format!("{tl:08X}.history"));
    let partial = (1u32..u32::MAX, any::<u32>(), 0u32..256).prop_map(|(tl, log, seg)| format!("{tl:08X}{log:08X}{seg:08X}.partial"));
    prop_oneof![segment, history, partial].prop_map(|n| WalName::parse(&n).expect("a WAL name"))
}

fn wal_record() -> impl Strategy<Value = WalRecord> {
    (name(), wal_name(), any::<u64>(), hash(), any::<u64>(), hash(), any::<u64>(), time(), text()).prop_map(
        |(tenant, w, size, plain_hash, len, chash, sequence, archived_at, host)| WalRecord {
            format: 1,
            tenant,
            kind: w.kind,
            timeline: w.timeline,
            size,
            plain_hash,
            object: ObjectRef { key: w.object_key(), len, hash: chash },
            recipients: vec![customer().1.to_string()],
            sequence,
            archived_at,
            host,
            name: w.name,
        },
    )
}

fn index() -> impl Strategy<Value = Index> {
    let segments = proptest::collection::vec(
        (any::<u32>(), any::<u64>(), any::<u32>(), hash()).prop_map(|(pack, at, len, hash)| Segment { pack, at, len, hash }),
        0..8,
    );
    let extents = proptest::collection::vec(
        (any::<u32>(), any::<u32>(), proptest::collection::vec(any::<u32>(), 0..8)).prop_map(|(segment, offset, lens)| Extent {
            segment,
            offset,
            lens,
        }),
        0..8,
    );
    let counts = proptest::collection::btree_map(text(), any::<u64>(), 0..6);
    let source = proptest::collection::btree_map(text(), text(), 0..4);
    let roles = (proptest::collection::vec(text(), 0..3), proptest::collection::vec(text(), 0..3));
    let block = (any::<i64>(), any::<u64>(), any::<bool>()).prop_map(|(id, at, large_objects)| DataBlock { id, at, large_objects });
    let archive = proptest::option::of(
        (any::<u64>(), proptest::collection::vec(block, 0..4)).prop_map(|(toc_end, blocks)| ArchiveLayout { toc_end, blocks }),
    );
    (segments, extents, hash(), counts, source, roles, archive).prop_map(
        |(segments, extents, stream_hash, row_counts, source, (owners, grantees), archive)| Index {
            format: bascule_core::manifest::FORMAT,
            segments,
            extents,
            stream_hash,
            row_counts,
            source,
            owners,
            grantees,
            archive,
        },
    )
}

fn restore_test() -> impl Strategy<Value = RestoreTestResult> {
    let who = (name(), name(), text(), time(), time(), time(), text());
    let what = (any::<bool>(), proptest::option::of(text()), any::<u64>(), hash(), any::<usize>(), any::<u64>());
    let mismatches = proptest::collection::vec((text(), any::<u64>(), proptest::option::of(any::<u64>())), 0..4);
    (who, what, mismatches).prop_map(
        |(
            (tenant, job, snapshot, snapshot_started_at, started_at, finished_at, host),
            (passed, failure, bytes, stream_hash, tables, rows),
            mismatches,
        )| {
            RestoreTestResult {
                format: 1,
                tenant,
                job,
                snapshot,
                snapshot_started_at,
                started_at,
                finished_at,
                host,
                passed,
                failure,
                bytes,
                stream_hash,
                tables,
                rows,
                mismatches,
            }
        },
    )
}

fn measure() -> impl Strategy<Value = Measure> {
    (proptest::option::of(0.0f64..1e7), proptest::option::of(0.0f64..1e7), proptest::option::of(any::<bool>()))
        .prop_map(|(measured_seconds, target_seconds, met)| Measure { measured_seconds, target_seconds, met })
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![Just(Outcome::Passed), Just(Outcome::Failed), Just(Outcome::Tolerated), Just(Outcome::Skipped)]
}

fn report() -> impl Strategy<Value = Report> {
    let step = (name(), name(), name(), time(), time(), 0.0f64..1e6, any::<u32>(), outcome(), text(), proptest::option::of(hash()))
        .prop_map(|(id, stage, kind, started_at, finished_at, duration_seconds, attempts, outcome, output, output_blake3)| ReportStep {
            id,
            stage,
            kind,
            started_at,
            finished_at,
            duration_seconds,
            attempts,
            outcome,
            output,
            output_blake3,
        });
    let status = prop_oneof![
        Just(DrillStatus::Running),
        Just(DrillStatus::RollingBack),
        Just(DrillStatus::Passed),
        Just(DrillStatus::Failed),
        Just(DrillStatus::Aborted)
    ];
    let who = (any::<i64>(), name(), text(), hash(), prop_oneof![Just(Mode::Drill), Just(Mode::Failover)], text(), text());
    let when = (time(), proptest::option::of(time()), status, any::<bool>(), proptest::collection::vec(text(), 0..3));
    let measures =
        (measure(), measure(), proptest::option::of(time()), proptest::option::of(time()), proptest::collection::vec(step, 0..5));
    (who, when, measures).prop_map(
        |(
            (drill, runbook, runbook_file, runbook_sha, mode, started_by, host),
            (started_at, finished_at, status, pass, reasons),
            (rto, rpo, cut_at, recovery_point, steps),
        )| {
            use bascule_controller::drill::report::evidence::{Approval, AuditHead, Evidence};
            let evidence = pass.then(|| Evidence {
                production_stopped: mode == Mode::Failover,
                cut_step: reasons.first().cloned(),
                recovered: reasons.clone(),
                checked: Vec::new(),
                readiness: reasons.clone(),
                approvals: reasons
                    .iter()
                    .map(|r| Approval { step: r.clone(), approved: true, by: started_by.clone(), at: r.clone() })
                    .collect(),
                audit_head: Some(AuditHead { seq: drill, hash: runbook_sha.clone() }),
                projected_rto: Vec::new(),
            });
            Report {
                format: 1,
                drill,
                runbook,
                runbook_file,
                runbook_sha,
                mode,
                started_by,
                host,
                started_at,
                finished_at,
                status,
                verdict: if pass { Verdict::Pass } else { Verdict::Fail },
                reasons,
                rto,
                rpo,
                cut_at,
                recovery_point,
                steps,
                evidence,
            }
        },
    )
}

/// Signs, opens with the signer's key, the object's tenant and key; then
/// the same bytes under another key, and for another tenant, are refused.
fn signed_round_trip<T: Signed + PartialEq + std::fmt::Debug>(v: &T) -> Result<(), TestCaseError> {
    let bytes = v.sign(key());
    let trusted = [TrustedKey::from(key().verify_key())];
    let stored = v.stored_at().expect("a consistent object");
    let back = T::open(&bytes, &trusted, v.tenant(), &stored).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, v);
    prop_assert!(T::open(&bytes, &trusted, v.tenant(), &format!("{stored}x")).is_err(), "moved under another key");
    prop_assert!(T::open(&bytes, &trusted, &format!("{}x", v.tenant()), &stored).is_err(), "for another tenant");
    let stranger = [TrustedKey::from(AgentKey::generate().verify_key())];
    prop_assert!(T::open(&bytes, &stranger, v.tenant(), &stored).is_err(), "with a key that did not sign");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn manifests_round_trip(m in manifest()) {
        signed_round_trip(&m)?;
    }

    #[test]
    fn heads_round_trip(h in head()) {
        signed_round_trip(&h)?;
    }

    #[test]
    fn wal_records_round_trip(r in wal_record()) {
        signed_round_trip(&r)?;
    }

    #[test]
    fn restore_test_results_round_trip(r in restore_test()) {
        signed_round_trip(&r)?;
    }

    #[test]
    fn drill_reports_round_trip(r in report()) {
        signed_round_trip(&r)?;
    }

    #[test]
    fn indexes_round_trip_sealed(i in index()) {
        let (ids, recipient) = customer();
        let sealed = bascule_core::seal::seal(&serde_json::to_vec(&i).unwrap(), std::slice::from_ref(recipient)).unwrap();
        let plain = bascule_core::seal::open(&sealed, ids, 1 << 24, "index", &[]).unwrap();
        let back: Index = serde_json::from_slice(&plain).unwrap();
        prop_assert_eq!(back, i);
    }

    #[test]
    fn condemned_lists_round_trip(tenant in name(), at in time(), grace in any::<u32>(), packs in proptest::collection::vec(object(), 0..6)) {
        let name = bascule_core::condemned::new_name(at);
        let c = Condemned { format: bascule_core::condemned::FORMAT, tenant, name, condemned_at: at, grace_seconds: grace as u64, packs };
        signed_round_trip(&c)?;
    }
}

#[test]
fn every_kind_of_signature_is_bound_to_its_kind() {
    // a HEAD's signature does not make it a manifest, a WAL record or a report
    let h = Head {
        format: 1,
        tenant: "t".into(),
        sequence: 1,
        latest_snapshot: None,
        latest_wal: None,
        agent_time: Utc::now(),
        restore_test: None,
    };
    let bytes = h.sign(key());
    let trusted = [TrustedKey::from(key().verify_key())];
    assert!(Head::open(&bytes, &trusted, "t", "HEAD").is_ok());
    assert!(Manifest::open(&bytes, &trusted, "t", "HEAD").is_err());
    assert!(<RestoreTestResult as Signed>::open(&bytes, &trusted, "t", "HEAD").is_err());
    assert!(<Report as Signed>::open(&bytes, &trusted, "reports", "HEAD").is_err());
}
