//! The target database and the new one restored into beside it: whether
//! this role may replace the target, the new database's privileges, the
//! swap, and dropping what a failed restore leaves.
// Reads what the target server answers: total, no panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use super::{quote_ident, sql, Dsn, ParallelError};

/// What the target database is and whether this role may replace it.
pub(super) struct Target {
    pub(super) name: String,
    pub(super) owner: String,
    pub(super) connlimit: i32,
    /// Rows written in it when the restore began.
    pub(super) writes: i64,
}

/// The target database, if this role may replace it (else why not).
pub(super) async fn fit(dsn: &Dsn) -> Result<Result<Target, String>, ParallelError> {
    let (client, conn) = dsn.config()?.connect().await?;
    let row = client
        .query_one(
            "SELECT current_database(), pg_get_userbyid(d.datdba), \
                    (SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user), \
                    pg_has_role(d.datdba, 'MEMBER'), \
                    (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                       AND backend_type = 'client backend'), \
                    d.datconnlimit, \
                    EXISTS (SELECT 1 FROM pg_db_role_setting s WHERE s.setdatabase = d.oid), \
                    shobj_description(d.oid, 'pg_database') IS NOT NULL, \
                    (SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datid = d.oid) \
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(sql("reading the target database's owner and this role's rights"))?;
    drop(client);
    let _ = conn.await;
    let (name, owner): (String, String) = (row.get(0), row.get(1));
    let (createdb, member, others): (Option<bool>, bool, i64) = (row.get(2), row.get(3), row.get(4));
    let (connlimit, settings, comment, writes): (i32, bool, bool, Option<i64>) = (row.get(5), row.get(6), row.get(7), row.get(8));
    Ok(if createdb != Some(true) {
        Err("the role may not create databases (CREATEDB), which a parallel restore needs to leave the target as it was on failure".into())
    } else if !member {
        Err(format!("the role is not a member of {owner}, the target database's owner"))
    } else if others > 0 {
        Err(format!("{others} other session(s) are connected to {name}"))
    } else if settings || comment {
        Err(format!("{name} has its own settings (ALTER DATABASE/ROLE … SET) or a comment, which a new database would not carry"))
    } else if matches!(name.as_str(), "postgres" | "template0" | "template1") {
        Err(format!("the target is {name}, a database the server keeps"))
    } else {
        Ok(Target { name, owner, connlimit, writes: writes.unwrap_or(0) })
    })
}

/// Rows written in database `name` so far (all tables, catalogs included).
pub(super) async fn writes(c: &tokio_postgres::Client, name: &str) -> Result<i64, ParallelError> {
    let row = c
        .query_one("SELECT coalesce(tup_inserted + tup_updated + tup_deleted, 0) FROM pg_stat_database WHERE datname = $1", &[&name])
        .await
        .map_err(sql("reading the target's activity"))?;
    Ok(row.get(0))
}

/// A connection to the server's maintenance database (`postgres`, else
/// `template1`), statements without a time limit.
pub(super) async fn maintenance(target: &Dsn) -> Result<tokio_postgres::Client, ParallelError> {
    let mut last = None;
    for db in ["postgres", "template1"] {
        match target.with_dbname(db).config()?.connect().await {
            Ok((client, _conn)) => {
                client.batch_execute("SET statement_timeout = 0; SET lock_timeout = 0").await.map_err(sql("setting up"))?;
                return Ok(client);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map(ParallelError::Connect).unwrap_or_else(|| ParallelError::Io("no maintenance database".into())))
}

/// The names of the databases restored into beside `target`: the target's
/// name (cut to fit), `_restore_`, 8 lowercase hex digits.
fn staging_prefix(target: &str) -> String {
    let name = derived(target, "restore", "00000000");
    name.get(..name.len() - 8).unwrap_or_default().to_string()
}

pub(super) fn staging_name(target: &str, suffix: &str) -> String {
    derived(target, "restore", suffix)
}

/// Whether `name` is one of [`staging_name`]'s for `target`.
pub(super) fn is_staging(target: &str, name: &str) -> bool {
    name.strip_prefix(&staging_prefix(target))
        .is_some_and(|s| s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Claims `staging` for this restore: a session lock on its name, held by
/// `server`'s connection for as long as the restore runs (the server drops
/// it with the session, whatever kills the process). Then drops the
/// databases a killed restore into the same target left (a name of
/// [`staging_name`]'s whose lock no session holds); returns their names.
pub(super) async fn claim(server: &tokio_postgres::Client, target: &str, staging: &str) -> Result<Vec<String>, ParallelError> {
    let lock = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";
    server.query_one(lock, &[&staging]).await.map_err(sql("locking the name of the database to restore into"))?;
    let names = server.query("SELECT datname FROM pg_database", &[]).await.map_err(sql("listing the databases"))?;
    let mut dropped = Vec::new();
    for name in names.iter().map(|r| r.get::<_, String>(0)).filter(|n| n != staging && is_staging(target, n)) {
        let free: bool = server.query_one(lock, &[&name]).await.map_err(sql("checking a restore's lock"))?.get(0);
        if !free {
            continue; // a restore running now
        }
        let gone = server.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&name))).await;
        let _ = server.query_one("SELECT pg_advisory_unlock(hashtextextended($1, 0))", &[&name]).await;
        gone.map_err(sql(format!("dropping {name}, left by a restore that was killed")))?;
        dropped.push(name);
    }
    Ok(dropped)
}

/// The database restored into, dropped unless it took the target's place
/// (on an error, awaited; when the restore is dropped midway — a drill step
/// timed out, aborted — by a task of its own).
pub(super) struct Staging {
    pub(super) server: Dsn,
    pub(super) name: String,
    pub(super) armed: bool,
}

impl Staging {
    pub(super) async fn drop_now(mut self) {
        self.armed = false;
        drop_database(&self.server, &self.name).await;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let (server, name) = (self.server.clone(), std::mem::take(&mut self.name));
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { drop_database(&server, &name).await });
            }
        }
    }
}

pub(super) async fn drop_database(server: &Dsn, name: &str) {
    let dropped = async {
        let c = maintenance(server).await?;
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))).await.map_err(sql("dropping"))
    };
    if let Err(e) = dropped.await {
        tracing::warn!("the restore failed and its database {name} could not be dropped ({e}): drop it by hand");
    }
}

/// `name_what_suffix`, within PostgreSQL's 63 bytes.
pub(super) fn derived(name: &str, what: &str, suffix: &str) -> String {
    let room = 63 - what.len() - suffix.len() - 2;
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{what}_{suffix}", name.get(..cut).unwrap_or_default())
}

pub(super) fn random_bytes() -> [u8; 4] {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    b
}

/// The target's privileges (who may connect, create, use temporary tables) on the new database.
pub(super) async fn copy_privileges(c: &tokio_postgres::Client, from: &str, to: &str) -> Result<(), ParallelError> {
    let rows = c
        .query(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable \
             FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1",
            &[&from],
        )
        .await
        .map_err(sql("reading the target database's privileges"))?;
    if rows.is_empty() {
        return Ok(()); // the defaults, as the new database has them
    }
    let mut stmts = format!("REVOKE ALL ON DATABASE {} FROM PUBLIC;", quote_ident(to));
    for r in rows {
        let (grantee, privilege, grantable): (Option<String>, String, bool) = (r.get(0), r.get(1), r.get(2));
        let privilege = match privilege.as_str() {
            p @ ("CONNECT" | "CREATE" | "TEMPORARY") => p,
            _ => continue,
        };
        let grantee = grantee.map(|g| quote_ident(&g)).unwrap_or_else(|| "PUBLIC".into());
        stmts.push_str(&format!(
            "GRANT {privilege} ON DATABASE {} TO {grantee}{};",
            quote_ident(to),
            if grantable { " WITH GRANT OPTION" } else { "" }
        ));
    }
    c.batch_execute(&stmts).await.map_err(sql("giving the new database the target's privileges"))
}

/// Gives the restored database the target's name, in one transaction, then
/// drops the replaced (empty) target, unless rows were written in it during
/// the restore (then it is kept, under its new name, and said so).
pub(super) async fn swap(server: &Dsn, target: &Target, staging: &str, suffix: &str) -> Result<(), ParallelError> {
    let old = derived(&target.name, "replaced", suffix);
    let c = maintenance(server).await?;
    let written = writes(&c, &target.name).await? - target.writes;
    let renamed = async {
        c.batch_execute("BEGIN").await?;
        c.batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", quote_ident(&target.name), quote_ident(&old))).await?;
        c.batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", quote_ident(staging), quote_ident(&target.name))).await?;
        c.batch_execute("COMMIT").await
    }
    .await;
    if let Err(e) = renamed {
        let _ = c.batch_execute("ROLLBACK").await;
        // the commit may have reached the server before the connection broke
        let swapped = async {
            let c = maintenance(server).await.ok()?;
            let row = c.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&staging]).await.ok()?;
            Some(row.get::<_, i64>(0) == 0)
        };
        if swapped.await != Some(true) {
            return Err(sql(format!(
                "giving the restored database {staging} the name {} (is a session connected to either?)",
                target.name
            ))(e));
        }
    }
    if written > 0 {
        tracing::warn!(
            "{written} row(s) were written in {} while it was being restored: the restored database took its name, \
             and what it held is kept as {old} (drop it once looked at)",
            target.name
        );
        return Ok(());
    }
    if let Err(e) = c.batch_execute(&format!("DROP DATABASE {}", quote_ident(&old))).await {
        tracing::warn!("the target database it replaced, now {old}, could not be dropped ({e}): drop it by hand");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_derived_name_fits_postgresql_and_cuts_no_character() {
        for (target, name, is) in [
            ("mairie", "mairie_restore_0a1b2c3d", true),
            ("mairie", "mairie_restore_0A1B2C3D", false),
            ("mairie", "mairie_restore_0a1b2c3", false),
            ("mairie", "mairie2_restore_0a1b2c3d", false),
            ("mairie", "mairie_replaced_0a1b2c3d", false),
        ] {
            assert_eq!(super::is_staging(target, name), is, "{name}");
        }
        let long = "é".repeat(40);
        assert!(super::is_staging(&long, &super::staging_name(&long, "0a1b2c3d")), "a name cut to fit is still recognised");
        assert_eq!(super::derived("mairie", "restore", "0a1b2c3d"), "mairie_restore_0a1b2c3d");
        let long = "état_civil_".repeat(8) + "\"; DROP DATABASE x; --";
        let d = super::derived(&long, "replaced", "0a1b2c3d");
        assert!(d.len() <= 63 && d.starts_with("état_civil_") && d.ends_with("_replaced_0a1b2c3d"), "{d}");
        // quoted wherever it is used: the name stays one identifier
        assert_eq!(crate::postgres::quote_ident("a\"; DROP"), "\"a\"\"; DROP\"");
    }
}
