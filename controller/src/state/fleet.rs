//! Several `serve` processes on one PostgreSQL state: who is alive, who
//! holds which tenant and which drill, and the shared rollback marks.
//!
//! A lease (table `leases`) names its holder, an epoch and an expiry. Each
//! monitor cycle a replica says it is alive, renews what it holds, gives
//! back what it holds above its fair share (the tenants divided by the
//! replicas alive), and claims free or expired leases up to that share with
//! `FOR UPDATE SKIP LOCKED`, so that two replicas claiming at once never
//! wait for each other nor take the same row. Each change of holder raises
//! the epoch; a write made under a lease names the epoch it holds, and is
//! refused once another replica has taken the lease over. A holder that can
//! no longer renew (its database unreachable) stops on its own when its
//! lease runs out by its own clock, measured from before it asked.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bascule_core::head::Marks;

use super::db::{p, Db};
use super::Pg;

/// What a replica holds: name → (epoch, valid until, by this process's clock).
pub type Held = BTreeMap<String, (i64, Instant)>;

/// Lease kinds.
pub const TENANT: &str = "tenant";
pub const DRILL: &str = "drill";

pub struct Fleet {
    pg: Pg,
    me: String,
    lease: Duration,
    /// The statistics refreshed after the first views were kept.
    analyzed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fleet({})", self.me)
    }
}

/// PostgreSQL's interval for a duration.
fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

impl Fleet {
    /// A connection of its own for the leases (the store is migrated first,
    /// by [`super::Store::open_postgres`]).
    pub fn new(pg: Pg, me: String, lease: Duration) -> Fleet {
        Fleet { pg, me, lease, analyzed: Default::default() }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Gives back every lease and leaves (a clean stop: the others take
    /// over at their next cycle, not after the lease time).
    pub fn leave(&self) -> anyhow::Result<u64> {
        let n = self.pg.execute(
            "UPDATE leases SET holder = NULL, expires_at = '-infinity' WHERE holder = ?1 AND kind = ?2",
            p![self.me.as_str(), TENANT],
        )?;
        self.pg.execute("DELETE FROM replicas WHERE id = ?1", p![self.me.as_str()])?;
        Ok(n)
    }

    /// Makes sure a lease row exists for each of `names` (joined by line
    /// breaks). Rows are never deleted here: replicas whose configurations
    /// differ (a rolling update) each claim only the names they configure.
    pub fn add_names(&self, kind: &str, names: &str) -> anyhow::Result<()> {
        // names are checked words (no line break): one parameter holds them all
        let added = self.pg.execute(
            "INSERT INTO leases (kind, name) SELECT ?1, unnest(string_to_array(?2, chr(10))) ON CONFLICT DO NOTHING",
            p![kind, names],
        )?;
        if added > 0 {
            self.analyze();
        }
        Ok(())
    }

    /// Refreshes the planner's statistics of the tables the monitor writes
    /// in bulk. Tables just filled from empty are otherwise planned as empty
    /// until autovacuum comes by: a statement joining a thousand views to
    /// the leases then took 1.5 s instead of 20 ms. Best effort: a role
    /// that may not analyze them only loses the speed.
    pub fn analyze(&self) {
        if let Err(e) = self.pg.batch("ANALYZE leases, head_marks, monitor_state") {
            tracing::warn!(error = format!("{e:#}"), "Cannot refresh the state store's statistics (ANALYZE); going on");
        }
    }

    /// Says this replica starts: refused while a process of the same name
    /// is alive (two processes under one name would both pass the fences).
    pub fn join(&self) -> anyhow::Result<()> {
        let r = self.pg.query_opt(
            "INSERT INTO replicas (id, host) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET seen_at = now(), started_at = now(), host = excluded.host
                 WHERE replicas.seen_at < now() - (?3::text)::interval
             RETURNING id",
            p![self.me.as_str(), crate::os_user::hostname(), interval(self.lease)],
        )?;
        if r.is_none() {
            anyhow::bail!(
                "another controller process runs as replica {:?} (seen within the lease time, {:?}): give each replica its own \
                 state.replica, or wait that long after a crash",
                self.me,
                self.lease
            );
        }
        Ok(())
    }

    /// The replicas alive (seen within the lease time).
    pub fn alive(&self) -> anyhow::Result<i64> {
        let r =
            self.pg.query_opt("SELECT count(*) FROM replicas WHERE seen_at > now() - (?1::text)::interval", p![interval(self.lease)])?;
        Ok(r.context("count")?.int(0)?.max(1))
    }

    /// One round: alive (which renews every tenant lease this replica
    /// holds, in one write), give back above the fair share of the `names`
    /// (joined by line breaks; `total` of them) this replica configures,
    /// claim up to it. Returns what this replica holds now.
    ///
    /// A tenant lease is valid while its holder's `replicas` row was seen
    /// within the lease time: renewing 35,000 leases is one row, not 35,000.
    pub fn balance(&self, kind: &str, names: &str, total: usize) -> anyhow::Result<Held> {
        let asked = Instant::now();
        let alive = self.pg.execute("UPDATE replicas SET seen_at = now() WHERE id = ?1", p![self.me.as_str()])?;
        if alive == 0 {
            // left (a clean stop that did not finish), or never joined: what it held is free again
            self.join()?;
        }
        let rows = self.pg.query(
            "SELECT name, epoch FROM leases WHERE kind = ?1 AND holder = ?2 AND name = ANY(string_to_array(?3, chr(10)))",
            p![kind, self.me.as_str(), names],
        )?;
        let until = asked + self.lease;
        let mut held: Held = rows.iter().map(|r| Ok((r.text(0)?, (r.int(1)?, until)))).collect::<anyhow::Result<_>>()?;
        // what is held is renewed whatever comes of sharing: a give-back or a
        // claim that fails leaves the replica watching what it held
        if let Err(e) = self.share(kind, names, total, &mut held, until) {
            tracing::warn!(error = format!("{e:#}"), "Cannot give back or claim tenant leases this round; keeping what is held");
        }
        Ok(held)
    }

    /// Gives back what `held` has above the fair share, or claims free
    /// tenants up to it (valid `until`).
    fn share(&self, kind: &str, names: &str, total: usize, held: &mut Held, until: Instant) -> anyhow::Result<()> {
        let lease = interval(self.lease);
        let alive = self.alive()?;
        let share = usize::try_from((total as i64 + alive - 1) / alive).unwrap_or(total);
        if held.len() > share {
            let give: Vec<String> = held.keys().rev().take(held.len() - share).cloned().collect();
            self.pg.execute(
                "UPDATE leases SET holder = NULL, expires_at = '-infinity'
                 WHERE kind = ?1 AND holder = ?2 AND name = ANY(string_to_array(?3, chr(10)))",
                p![kind, self.me.as_str(), give.join("\n")],
            )?;
            for name in &give {
                held.remove(name);
            }
        } else if held.len() < share {
            // free: no holder, or a holder not seen within the lease time (dead).
            // The names are a condition on the row, not a join: a row another
            // replica claimed meanwhile is checked again alone, and a join with
            // the list would read the whole list again for each such row
            let rows = self.pg.query(
                "WITH free AS (
                     SELECT l.kind, l.name FROM leases l
                     WHERE l.kind = ?1 AND l.name = ANY(string_to_array(?5, chr(10)))
                       AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = l.holder AND r.seen_at > now() - (?4::text)::interval)
                     ORDER BY l.name LIMIT ?3 FOR UPDATE OF l SKIP LOCKED)
                 UPDATE leases l SET holder = ?2, epoch = l.epoch + 1, expires_at = now() + (?4::text)::interval
                 FROM free WHERE l.kind = free.kind AND l.name = free.name
                 RETURNING l.name, l.epoch",
                p![kind, self.me.as_str(), (share - held.len()) as i64, lease.as_str(), names],
            )?;
            for r in &rows {
                held.insert(r.text(0)?, (r.int(1)?, until));
            }
        }
        Ok(())
    }

    /// Takes lease `name` if it is free, expired or new; returns its epoch.
    pub fn claim(&self, kind: &str, name: &str) -> anyhow::Result<Option<i64>> {
        let r = self.pg.query_opt(
            "INSERT INTO leases (kind, name, holder, epoch, expires_at) VALUES (?1, ?2, ?3, 1, now() + (?4::text)::interval)
             ON CONFLICT (kind, name) DO UPDATE SET holder = excluded.holder, epoch = leases.epoch + 1, expires_at = excluded.expires_at
                 WHERE leases.holder IS NULL OR leases.expires_at < now()
             RETURNING epoch",
            p![kind, name, self.me.as_str(), interval(self.lease)],
        )?;
        r.map(|r| r.int(0)).transpose()
    }

    /// Renews a lease held at `epoch`; false when it was taken over.
    pub fn renew(&self, kind: &str, name: &str, epoch: i64) -> anyhow::Result<bool> {
        let n = self.pg.execute(
            "UPDATE leases SET expires_at = now() + (?5::text)::interval WHERE kind = ?1 AND name = ?2 AND holder = ?3 AND epoch = ?4",
            p![kind, name, self.me.as_str(), epoch, interval(self.lease)],
        )?;
        Ok(n == 1)
    }

    /// Gives back a lease held at `epoch`.
    pub fn release(&self, kind: &str, name: &str, epoch: i64) -> anyhow::Result<()> {
        self.pg.execute(
            "UPDATE leases SET holder = NULL, expires_at = '-infinity' WHERE kind = ?1 AND name = ?2 AND holder = ?3 AND epoch = ?4",
            p![kind, name, self.me.as_str(), epoch],
        )?;
        Ok(())
    }

    /// Who holds lease `name` now (unexpired), if anyone.
    pub fn holder(&self, kind: &str, name: &str) -> anyhow::Result<Option<String>> {
        let r = self.pg.query_opt(
            "SELECT holder FROM leases WHERE kind = ?1 AND name = ?2 AND holder IS NOT NULL AND expires_at > now()",
            p![kind, name],
        )?;
        r.map(|r| r.text(0)).transpose()
    }

    /// Unfinished drills whose holder, a `serve` replica, stopped renewing
    /// their lease (killed) at least `grace` ago: long enough for a holder
    /// that lost touch to have stopped the drill by its own clock. A drill
    /// whose lease was given back (a clean stop, a drill that stopped on an
    /// error), never leased (a start that failed), or held by a command-line
    /// `drill run` is left to an operator (`drill resume`).
    pub fn orphaned_drills(&self) -> anyhow::Result<Vec<i64>> {
        let rows = self.pg.query(
            "SELECT d.id FROM drills d JOIN leases l ON l.kind = ?1 AND l.name = d.id::text
             WHERE d.finished_at IS NULL AND l.holder IN (SELECT id FROM replicas)
               AND l.expires_at < now() - (?2::text)::interval ORDER BY d.id",
            p![DRILL, interval(self.grace())],
        )?;
        rows.iter().map(|r| r.int(0)).collect()
    }

    /// How long after a drill lease ran out another replica takes it over.
    pub fn grace(&self) -> Duration {
        (self.lease / 2).max(Duration::from_secs(5))
    }

    /// Keeps the monitor's readings of tenants (tenant, view as JSON on one
    /// line, epoch), each only if this replica still holds the tenant at that
    /// epoch; returns the tenants whose write was refused (taken over).
    pub fn keep_views(&self, views: &[(&str, String, i64)]) -> anyhow::Result<Vec<String>> {
        let mut refused = Vec::new();
        for chunk in views.chunks(1000) {
            let join = |f: &dyn Fn(&(&str, String, i64)) -> String| chunk.iter().map(f).collect::<Vec<_>>().join("\n");
            let (tenants, json, epochs) = (join(&|v| v.0.to_string()), join(&|v| v.1.clone()), join(&|v| v.2.to_string()));
            // the lease of each view looked up by its key: a subquery, never a
            // join planned on statistics older than the last rebalance (such a
            // plan walked every lease once per view: 3 s for a thousand)
            let kept = self.pg.query(
                "INSERT INTO monitor_state (tenant, view, holder, epoch)
                 SELECT v.tenant, v.view, ?4, v.epoch
                 FROM unnest(string_to_array(?1, chr(10)), string_to_array(?2, chr(10)), string_to_array(?3, chr(10))::bigint[])
                     AS v(tenant, view, epoch)
                 WHERE (SELECT l.holder = ?4 AND l.epoch = v.epoch FROM leases l WHERE l.kind = 'tenant' AND l.name = v.tenant)
                 ON CONFLICT (tenant) DO UPDATE
                     SET view = excluded.view, holder = excluded.holder, epoch = excluded.epoch, updated_at = now()
                     WHERE monitor_state.epoch <= excluded.epoch
                 RETURNING tenant",
                p![tenants, json, epochs, self.me.as_str()],
            )?;
            let kept: std::collections::BTreeSet<String> = kept.iter().map(|r| r.text(0)).collect::<anyhow::Result<_>>()?;
            refused.extend(chunk.iter().filter(|v| !kept.contains(v.0)).map(|v| v.0.to_string()));
        }
        // the first views (after the first round's marks) filled these tables from few rows
        if !self.analyzed.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.analyze();
        }
        Ok(refused)
    }

    /// Every tenant's last reading, whichever replica made it:
    /// (tenant, view as JSON, holder).
    pub fn views(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let rows = self.pg.query("SELECT tenant, view, holder FROM monitor_state ORDER BY tenant", p![])?;
        rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?))).collect()
    }

    /// Claims scheduled work `key` (a drill due at a given minute): true
    /// for the one replica that gets it.
    pub fn claim_work(&self, key: &str) -> anyhow::Result<bool> {
        let n =
            self.pg.execute("INSERT INTO work (key, holder) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING", p![key, self.me.as_str()])?;
        Ok(n == 1)
    }
}

/// Rollback marks in PostgreSQL, shared by every replica.
#[derive(Debug)]
pub struct PgMarks(pub Pg);

impl PgMarks {
    /// The marks of `tenant`'s revoked `keys`: those recorded (by any
    /// replica, or in this replica's file `from_file`) stay; a key met revoked
    /// for the first time gets `seen`, unless another replica recorded it first.
    pub fn revoked(
        &self,
        tenant: &str,
        keys: &[String],
        from_file: &BTreeMap<String, u64>,
        seen: impl Fn() -> bascule_core::Result<u64>,
    ) -> anyhow::Result<BTreeMap<String, u64>> {
        let insert = "INSERT INTO revoked_marks (tenant, key, mark) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING";
        for (k, m) in from_file {
            self.0.execute(insert, p![tenant, k.as_str(), i64::try_from(*m).unwrap_or(i64::MAX)])?;
        }
        let recorded = |pg: &Pg| -> anyhow::Result<BTreeMap<String, u64>> {
            let rows = pg.query("SELECT key, mark FROM revoked_marks WHERE tenant = ?1", p![tenant])?;
            rows.iter().map(|r| Ok((r.text(0)?, u64::try_from(r.int(1)?).unwrap_or(0)))).collect()
        };
        let mut marks = recorded(&self.0)?;
        let new: Vec<&String> = keys.iter().filter(|k| !marks.contains_key(*k)).collect();
        if !new.is_empty() {
            let now = i64::try_from(seen()?).unwrap_or(i64::MAX);
            for k in new {
                self.0.execute(insert, p![tenant, k.as_str(), now])?;
            }
            marks = recorded(&self.0)?;
        }
        Ok(marks.into_iter().filter(|(k, _)| keys.contains(k)).collect())
    }
}

impl Marks for PgMarks {
    fn read(&self, name: &str) -> bascule_core::Result<u64> {
        let mark = |reason: String| bascule_core::Error::Mark { name: name.to_string(), reason };
        let r = self.0.query_opt("SELECT sequence FROM head_marks WHERE name = ?1", p![name]).map_err(|e| mark(format!("{e:#}")))?;
        match r {
            None => Ok(0),
            Some(r) => Ok(u64::try_from(r.int(0).map_err(|e| mark(format!("{e:#}")))?).unwrap_or(0)),
        }
    }

    fn raise(&self, name: &str, sequence: u64) -> bascule_core::Result<()> {
        let seq = i64::try_from(sequence)
            .map_err(|_| bascule_core::Error::Mark { name: name.to_string(), reason: format!("{sequence} is too large") })?;
        // the conditional upsert keeps the greater, whoever writes at once
        self.0
            .execute(
                "INSERT INTO head_marks (name, sequence) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET sequence = excluded.sequence, raised_at = now()
                     WHERE head_marks.sequence < excluded.sequence",
                p![name, seq],
            )
            .map_err(|e| bascule_core::Error::Mark { name: name.to_string(), reason: format!("{e:#}") })?;
        Ok(())
    }

    /// One statement per thousand: each mark raised unless higher, the marks
    /// after returned (the same name twice counts once, the higher).
    fn raise_many(&self, items: &[(&str, u64)]) -> bascule_core::Result<Vec<u64>> {
        let fail = |e: anyhow::Error| bascule_core::Error::Mark { name: "(many)".into(), reason: format!("{e:#}") };
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(1000) {
            let mut want: BTreeMap<&str, u64> = BTreeMap::new();
            for (n, s) in chunk {
                let e = want.entry(n).or_default();
                *e = (*e).max(*s);
            }
            let names: Vec<&str> = want.keys().copied().collect();
            let seqs: Vec<String> = want.values().map(|s| i64::try_from(*s).unwrap_or(i64::MAX).to_string()).collect();
            self.0
                .execute(
                    "INSERT INTO head_marks (name, sequence)
                     SELECT * FROM unnest(string_to_array(?1, chr(10)), string_to_array(?2, chr(10))::bigint[])
                     ON CONFLICT (name) DO UPDATE SET sequence = excluded.sequence, raised_at = now()
                         WHERE head_marks.sequence < excluded.sequence",
                    p![names.join("\n"), seqs.join("\n")],
                )
                .map_err(fail)?;
            let rows = self
                .0
                .query("SELECT name, sequence FROM head_marks WHERE name = ANY(string_to_array(?1, chr(10)))", p![names.join("\n")])
                .map_err(fail)?;
            let now: BTreeMap<String, u64> = rows
                .iter()
                .map(|r| Ok((r.text(0)?, u64::try_from(r.int(1)?).unwrap_or(0))))
                .collect::<anyhow::Result<_>>()
                .map_err(fail)?;
            out.extend(chunk.iter().map(|(n, _)| now.get(*n).copied().unwrap_or(0)));
        }
        Ok(out)
    }
}
