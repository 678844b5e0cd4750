//! Retention: which snapshots a tenant keeps, and the condemned-pack lists
//! that make deleting their packs safe against an export running meanwhile.
//!
//! **Which snapshots.** Per job, newest first, like `restic forget`: `daily: N`
//! keeps the newest snapshot of each of the N most recent days that have one
//! (UTC), `weekly` of ISO weeks, `monthly` of months; the newest snapshot of
//! a job is always kept. The policy a tenant's agent signs into its
//! manifests and the controller's are merged field by field, keeping the
//! larger: neither side alone can shorten what the other keeps.
//!
//! **Deleting packs in two steps** (the lists are [`crate::condemned`]). A
//! pack no kept manifest references, and
//! older than the grace period, is first *condemned*: listed, with the time,
//! in `prune/<time>.condemned` on both providers. An export reads these lists
//! when it starts and never reuses a condemned pack (its chunks are sealed
//! again into a new one). A later prune deletes a condemned pack only once
//! the grace period has passed since its condemnation, and only if no
//! manifest references it then. An export that started before the list
//! appeared and reused the pack commits only while less than half the grace
//! period has passed since the condemnation, so its manifest is on the
//! providers before any prune may delete the pack, and that prune sees it.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

/// How many snapshots of each job to keep, and the WAL to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// The newest snapshot of each of this many most recent days.
    #[serde(default)]
    pub daily: u32,
    /// … of ISO weeks.
    #[serde(default)]
    pub weekly: u32,
    /// … of months.
    #[serde(default)]
    pub monthly: u32,
    /// Keep the WAL (and the base backup it starts from) to restore any
    /// point of this recent past, e.g. `7d`.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub pitr_window: Option<Duration>,
}

impl Retention {
    /// Field by field, the larger of the two (a missing window is the shorter).
    pub fn merge(a: Option<Retention>, b: Option<Retention>) -> Option<Retention> {
        match (a, b) {
            (None, x) | (x, None) => x,
            (Some(a), Some(b)) => Some(Retention {
                daily: a.daily.max(b.daily),
                weekly: a.weekly.max(b.weekly),
                monthly: a.monthly.max(b.monthly),
                pitr_window: a.pitr_window.max(b.pitr_window),
            }),
        }
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} daily, {} weekly, {} monthly", self.daily, self.weekly, self.monthly)?;
        if let Some(w) = self.pitr_window {
            write!(f, ", PITR window {}", humantime_serde::re::humantime::format_duration(w))?;
        }
        Ok(())
    }
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Keep {
    Newest,
    Daily,
    Weekly,
    Monthly,
    /// The base backup the PITR window starts from.
    PitrBase,
    /// The job has no retention: everything stays.
    NoPolicy,
    /// Expired, but S3 Object Lock keeps its manifest for now.
    Locked,
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Keep::Newest => "newest",
            Keep::Daily => "daily",
            Keep::Weekly => "weekly",
            Keep::Monthly => "monthly",
            Keep::PitrBase => "pitr-base",
            Keep::NoPolicy => "no policy",
            Keep::Locked => "object lock",
        })
    }
}

/// The day, week or month a time falls in.
type Bucket = fn(&DateTime<Utc>) -> (i32, u32);

/// The snapshots of one job to keep, with why: `snaps` are (name, time), in
/// any order. Every name not in the result may go.
pub fn select(policy: &Retention, snaps: &[(String, DateTime<Utc>)]) -> BTreeMap<String, BTreeSet<Keep>> {
    let mut order: Vec<&(String, DateTime<Utc>)> = snaps.iter().collect();
    order.sort_by(|a, b| (b.1, &b.0).cmp(&(a.1, &a.0)));
    let mut kept: BTreeMap<String, BTreeSet<Keep>> = BTreeMap::new();
    if let Some((name, _)) = order.first() {
        kept.entry(name.clone()).or_default().insert(Keep::Newest);
    }
    let rules: [(Keep, u32, Bucket); 3] = [
        (Keep::Daily, policy.daily, |t| (t.year(), t.ordinal())),
        (Keep::Weekly, policy.weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week())
        }),
        (Keep::Monthly, policy.monthly, |t| (t.year(), t.month())),
    ];
    for (why, count, bucket) in rules {
        let mut left = count;
        let mut last = None;
        for (name, at) in &order {
            if left == 0 {
                break;
            }
            let b = bucket(at);
            if last != Some(b) {
                last = Some(b);
                left -= 1;
                kept.entry(name.clone()).or_default().insert(why);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn nights(n: i64) -> Vec<(String, DateTime<Utc>)> {
        let first = Utc.with_ymd_and_hms(2026, 1, 1, 1, 30, 0).unwrap();
        (0..n).map(|d| (format!("s{d:02}"), first + chrono::Duration::days(d))).collect()
    }

    #[test]
    fn daily_and_weekly_keep_the_newest_of_each_bucket() {
        // 40 nights from Thursday 2026-01-01 to Monday 2026-02-09
        let snaps = nights(40);
        let kept = select(&Retention { daily: 7, weekly: 4, ..Default::default() }, &snaps);
        let names: Vec<&str> = kept.keys().map(String::as_str).collect();
        // 7 newest days: s33..s39; weeks: Mon 02-09 (s39), week of 02-02 → Sun 02-08 (s38),
        // week of 01-26 → Sun 02-01 (s31), week of 01-19 → Sun 01-25 (s24)
        assert_eq!(names, ["s24", "s31", "s33", "s34", "s35", "s36", "s37", "s38", "s39"]);
        assert!(kept["s39"].contains(&Keep::Newest) && kept["s39"].contains(&Keep::Daily) && kept["s39"].contains(&Keep::Weekly));
        assert_eq!(kept["s24"], BTreeSet::from([Keep::Weekly]));
    }

    #[test]
    fn two_snapshots_a_day_keep_the_later_one() {
        let mut snaps = nights(3);
        snaps.push(("s02-early".into(), snaps[2].1 - chrono::Duration::hours(1)));
        let kept = select(&Retention { daily: 3, ..Default::default() }, &snaps);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["s00", "s01", "s02"]);
    }

    #[test]
    fn no_policy_keeps_the_newest_only_and_nothing_keeps_nothing() {
        let kept = select(&Retention::default(), &nights(5));
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["s04"]);
        assert!(select(&Retention::default(), &[]).is_empty());
        let monthly = select(&Retention { monthly: 2, ..Default::default() }, &nights(40));
        assert_eq!(monthly.keys().collect::<Vec<_>>(), ["s30", "s39"], "newest of January and of February");
    }

    #[test]
    fn merge_keeps_the_larger_of_each_field() {
        let a = Retention { daily: 14, weekly: 2, monthly: 0, pitr_window: Some(Duration::from_secs(86400)) };
        let b = Retention { daily: 7, weekly: 8, monthly: 12, pitr_window: None };
        let m = Retention::merge(Some(a), Some(b)).unwrap();
        assert_eq!((m.daily, m.weekly, m.monthly, m.pitr_window), (14, 8, 12, Some(Duration::from_secs(86400))));
        assert_eq!(Retention::merge(None, Some(b)), Some(b));
        assert_eq!(Retention::merge(None, None), None);
    }
}
