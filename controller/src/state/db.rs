//! The one SQL surface the store is written against, with two backends:
//! an SQLite file (the embedded default) and a PostgreSQL server
//! ([`super::pg`]). Statements use `?1`, `?2`… placeholders; the PostgreSQL
//! backend numbers them `$1`, `$2`…. Values are integers, booleans, text or
//! NULL: timestamps are RFC 3339 text in both backends, so that what the
//! audit chain hashes is the very string stored.
use anyhow::Context as _;

/// A parameter or a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.into())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Parameters: `p![a, b, c]`.
macro_rules! p {
    ($($v:expr),* $(,)?) => { vec![$($crate::state::db::Value::from($v)),*] };
}
pub(crate) use p;

/// One row of a result.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> anyhow::Result<&Value> {
        self.0.get(i).with_context(|| format!("column {i} is missing from the row"))
    }

    pub fn opt_int(&self, i: usize) -> anyhow::Result<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            Value::Bool(b) => Ok(Some(*b as i64)),
            v => anyhow::bail!("column {i}: {v:?} is not an integer"),
        }
    }

    pub fn int(&self, i: usize) -> anyhow::Result<i64> {
        self.opt_int(i)?.with_context(|| format!("column {i} is NULL"))
    }

    pub fn bool(&self, i: usize) -> anyhow::Result<bool> {
        Ok(self.int(i)? != 0)
    }

    pub fn opt_text(&self, i: usize) -> anyhow::Result<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            v => anyhow::bail!("column {i}: {v:?} is not text"),
        }
    }

    pub fn text(&self, i: usize) -> anyhow::Result<String> {
        self.opt_text(i)?.with_context(|| format!("column {i} is NULL"))
    }

    /// A column holding one of the words of [`crate::model`].
    pub fn word<T: std::str::FromStr>(&self, i: usize) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let s = self.text(i)?;
        s.parse().map_err(|e| anyhow::anyhow!("column {i}: {s:?}: {e}"))
    }
}

/// Which SQL a backend speaks, where the two differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A connection to the store.
pub trait Db: Send {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; returns the rows it changed.
    fn execute(&self, sql: &str, params: Vec<Value>) -> anyhow::Result<u64>;
    fn query(&self, sql: &str, params: Vec<Value>) -> anyhow::Result<Vec<Row>>;
    /// Statements without parameters, one after the other.
    fn batch(&self, sql: &str) -> anyhow::Result<()>;

    fn query_opt(&self, sql: &str, params: Vec<Value>) -> anyhow::Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs `f` in a transaction that writers take one at a time (SQLite's
    /// `BEGIN IMMEDIATE`; PostgreSQL's transaction with the `lock` advisory
    /// lock, when one is given); commits if `f` succeeds, rolls back if not.
    fn write_tx<R>(&self, lock: Option<i64>, f: impl FnOnce(&Self) -> anyhow::Result<R>) -> anyhow::Result<R>
    where
        Self: Sized,
    {
        match self.dialect() {
            Dialect::Sqlite => self.batch("BEGIN IMMEDIATE")?,
            Dialect::Postgres => {
                self.batch("BEGIN ISOLATION LEVEL READ COMMITTED")?;
                if let Some(key) = lock {
                    if let Err(e) = self.execute("SELECT pg_advisory_xact_lock(?1)", p![key]) {
                        let _ = self.batch("ROLLBACK");
                        return Err(e);
                    }
                }
            }
        }
        match f(self) {
            Ok(r) => {
                self.batch("COMMIT")?;
                Ok(r)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// The embedded backend: one SQLite file.
pub struct Sqlite(pub rusqlite::Connection);

fn to_sqlite(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Bool(b) => rusqlite::types::Value::Integer(*b as i64),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }
}

impl Db for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, params: Vec<Value>) -> anyhow::Result<u64> {
        let vals: Vec<_> = params.iter().map(to_sqlite).collect();
        Ok(self.0.execute(sql, rusqlite::params_from_iter(vals))? as u64)
    }

    fn query(&self, sql: &str, params: Vec<Value>) -> anyhow::Result<Vec<Row>> {
        let vals: Vec<_> = params.iter().map(to_sqlite).collect();
        let mut st = self.0.prepare_cached(sql)?;
        let n = st.column_count();
        let rows = st.query_map(rusqlite::params_from_iter(vals), |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => Value::Null,
                        rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                        rusqlite::types::ValueRef::Real(v) => Value::Int(v as i64),
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            Value::Text(String::from_utf8_lossy(t).into_owned())
                        }
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(Row)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn batch(&self, sql: &str) -> anyhow::Result<()> {
        Ok(self.0.execute_batch(sql)?)
    }
}
