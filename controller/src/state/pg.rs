//! The PostgreSQL backend of the store: one connection, driven by a thread
//! of its own (with its own small runtime), so that the store keeps the
//! synchronous interface SQLite gives it and can be called from anywhere,
//! inside the controller's runtime or not. A call blocks its caller for one
//! round trip, as an SQLite write does. The connection honours libpq's TLS
//! fields (`sslmode`, `sslrootcert`…) as every connection bascule opens.
//!
//! A lost connection is opened again at the next call, unless it was lost
//! inside a transaction: that call fails, and so does the transaction.
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use bascule_core::postgres::connect::Connect;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

use super::db::{Db, Dialect, Row, Value};

/// How long one statement may take before the call fails (the connection
/// is then dropped, its state unknown).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(v), &Type::INT8) => v.to_sql(ty, out),
            (Value::Int(v), &Type::INT4) => i32::try_from(*v)?.to_sql(ty, out),
            (Value::Int(v), &Type::INT2) => i16::try_from(*v)?.to_sql(ty, out),
            (Value::Int(v), &Type::BOOL) => (*v != 0).to_sql(ty, out),
            (Value::Bool(b), &Type::BOOL) => b.to_sql(ty, out),
            (Value::Bool(b), &Type::INT8) => (*b as i64).to_sql(ty, out),
            (Value::Text(s), ty) if <&str as ToSql>::accepts(ty) => s.as_str().to_sql(ty, out),
            (v, ty) => Err(format!("{v:?} cannot be a parameter of type {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Bool(bool::from_sql(ty, raw)?),
            _ => Value::Text(<&str>::from_sql(ty, raw)?.to_string()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL | Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR)
    }
}

/// `?1` → `$1` (the store's statements hold no `?` in literals).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// What the connection thread holds.
struct Conn {
    rt: tokio::runtime::Runtime,
    connect: Connect,
    client: Option<tokio_postgres::Client>,
    statements: HashMap<String, tokio_postgres::Statement>,
    in_tx: bool,
}

impl Conn {
    fn client(&mut self) -> anyhow::Result<&tokio_postgres::Client> {
        if self.client.as_ref().is_some_and(tokio_postgres::Client::is_closed) {
            self.client = None;
            self.statements.clear();
            if std::mem::take(&mut self.in_tx) {
                anyhow::bail!("the connection to the PostgreSQL state store was lost inside a transaction");
            }
        }
        if self.client.is_none() {
            let connect = self.connect.clone();
            let (client, _conn) = self
                .rt
                .block_on(async move { tokio::time::timeout(CALL_TIMEOUT, connect.connect()).await })
                .map_err(|_| anyhow::anyhow!("connecting took more than {CALL_TIMEOUT:?}"))??;
            self.client = Some(client);
        }
        self.client.as_ref().context("no connection")
    }

    /// Runs `f` with the client, within [`CALL_TIMEOUT`]. The connection is
    /// only polled during a call, so a server that restarted in between shows
    /// up as a failed call on a connection now closed: outside a transaction,
    /// that call is made once more on a new connection.
    fn run<R>(
        &mut self,
        f: impl for<'c> Fn(
            &'c tokio_postgres::Client,
            &'c mut HashMap<String, tokio_postgres::Statement>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<R>> + 'c>>,
    ) -> anyhow::Result<R> {
        for retry in [false, true] {
            self.client()?;
            let Conn { rt, client, statements, .. } = self;
            let c = client.as_ref().context("no connection")?;
            match rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, f(c, statements)).await }) {
                Ok(Err(e)) if !retry && !self.in_tx && self.client.as_ref().is_some_and(tokio_postgres::Client::is_closed) => {
                    tracing::warn!(error = format!("{e:#}"), "The connection to the PostgreSQL state store was lost; connecting again");
                }
                Ok(r) => return r,
                Err(_) => {
                    // the server ends the statement itself (statement_timeout), and an
                    // idle transaction (idle_in_transaction_session_timeout)
                    self.client = None;
                    self.statements.clear();
                    self.in_tx = false;
                    anyhow::bail!("the PostgreSQL state store did not answer within {CALL_TIMEOUT:?}")
                }
            }
        }
        anyhow::bail!("the PostgreSQL state store's connection was lost twice in a row")
    }
}

async fn prepared(
    client: &tokio_postgres::Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    sql: &str,
) -> anyhow::Result<tokio_postgres::Statement> {
    if let Some(st) = cache.get(sql) {
        return Ok(st.clone());
    }
    let st = client.prepare(&numbered(sql)).await.map_err(pg_error)?;
    cache.insert(sql.to_string(), st.clone());
    Ok(st)
}

/// The server's own message, where there is one.
fn pg_error(e: tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(d) => anyhow::anyhow!("PostgreSQL state store: {} ({})", d.message(), d.code().code()),
        None => anyhow::Error::new(e).context("PostgreSQL state store"),
    }
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// A connection to the PostgreSQL store.
pub struct Pg {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pg")
    }
}

impl Pg {
    /// Opens the connection (its thread lives as long as this value).
    pub fn open(mut connect: Connect) -> anyhow::Result<Pg> {
        if connect.pg().get_connect_timeout().is_none() {
            connect.pg_mut().connect_timeout(Duration::from_secs(10));
        }
        connect.pg_mut().application_name("bascule-controller");
        if connect.pg().get_options().is_none() {
            // IF NOT EXISTS and the like are not news for the controller's log; the
            // server ends what would outlast a call, so that no session holds a lock
            // for a caller that gave up. Statements are prepared once and run often
            // with lists of thousands of names: each run is planned for its own
            // parameters (a generic plan sized for a list of ten would loop over
            // 35,000 names once per row)
            connect.pg_mut().options(
                "-c client_min_messages=warning -c statement_timeout=50s -c lock_timeout=40s \
                 -c idle_in_transaction_session_timeout=55s -c default_transaction_isolation=read\\ committed \
                 -c plan_cache_mode=force_custom_plan",
            );
        }
        connect.pg_mut().keepalives(true).keepalives_idle(Duration::from_secs(20));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("a runtime for the state store")?;
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("state-store".into())
            .spawn(move || {
                let mut conn = Conn { rt, connect, client: None, statements: HashMap::new(), in_tx: false };
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .context("starting the state store's thread")?;
        let pg = Pg { jobs };
        pg.call(|c| c.client().map(drop)).context("cannot connect to the PostgreSQL state store (state.postgres)")?;
        Ok(pg)
    }

    fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut Conn) -> anyhow::Result<R> + Send + 'static) -> anyhow::Result<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |c| {
                let _ = tx.send(f(c));
            }))
            .map_err(|_| anyhow::anyhow!("the state store's thread has ended"))?;
        rx.recv().map_err(|_| anyhow::anyhow!("the state store's thread has ended"))?
    }
}

/// What a statement gave: the rows it changed, or the rows it returned.
enum Done {
    Count(u64),
    Rows(Vec<Row>),
}

impl Pg {
    /// One prepared statement (cached by its text), its rows wanted or not.
    fn statement(&self, sql: &str, params: Vec<Value>, rows: bool) -> anyhow::Result<Done> {
        let sql = sql.to_string();
        self.call(move |c| {
            c.run(|client, cache| {
                let (sql, params) = (sql.clone(), params.clone());
                Box::pin(async move {
                    let st = prepared(client, cache, &sql).await?;
                    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    if !rows {
                        return client.execute(&st, &refs).await.map(Done::Count).map_err(pg_error);
                    }
                    let got = client.query(&st, &refs).await.map_err(pg_error)?;
                    let out = got
                        .iter()
                        .map(|r| {
                            (0..r.len()).map(|i| r.try_get::<_, Value>(i).map_err(pg_error)).collect::<anyhow::Result<Vec<_>>>().map(Row)
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    Ok(Done::Rows(out))
                })
            })
        })
    }
}

impl Db for Pg {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&self, sql: &str, params: Vec<Value>) -> anyhow::Result<u64> {
        match self.statement(sql, params, false)? {
            Done::Count(n) => Ok(n),
            Done::Rows(r) => Ok(r.len() as u64),
        }
    }

    fn query(&self, sql: &str, params: Vec<Value>) -> anyhow::Result<Vec<Row>> {
        match self.statement(sql, params, true)? {
            Done::Rows(r) => Ok(r),
            Done::Count(_) => Ok(Vec::new()),
        }
    }

    fn batch(&self, sql: &str) -> anyhow::Result<()> {
        let sql = sql.to_string();
        self.call(move |c| {
            let word = sql.trim().to_ascii_uppercase();
            let r = c.run(|client, _| {
                let sql = sql.clone();
                Box::pin(async move { client.batch_execute(&sql).await.map_err(pg_error) })
            });
            if word.starts_with("BEGIN") {
                c.in_tx = r.is_ok();
            } else if word == "COMMIT" || word == "ROLLBACK" {
                c.in_tx = false;
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_numbered_for_postgresql() {
        assert_eq!(super::numbered("SELECT ?1, ?12 WHERE a = ?2"), "SELECT $1, $12 WHERE a = $2");
        assert_eq!(super::numbered("SELECT '?' "), "SELECT '?' ");
    }
}
