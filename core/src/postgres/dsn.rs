//! PostgreSQL connection strings, taken apart: libpq's `key=value` fields
//! (a value may be quoted, `'…'`), rebuilt with every value quoted, and the
//! password kept apart, for a child's environment (`PGPASSWORD`) rather than
//! its argv, which every local user can read.
// Parses what an operator passes: total, no panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

/// A connection string, its password apart.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn {
    /// Every field but the password (libpq's form, each value quoted, or a
    /// `postgresql://` URI without a password): fit for a child's argv.
    pub conninfo: String,
    pub password: Option<String>,
}

impl std::fmt::Debug for Dsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dsn({}{})", self.conninfo, if self.password.is_some() { ", password given" } else { "" })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadDsn {
    #[error("{0:?}: expected key=value")]
    NoValue(String),
    #[error("{0:?} is not a connection field")]
    Key(String),
    #[error("{0}: a quote is not closed")]
    Quote(String),
    #[error("an empty connection string")]
    Empty,
    #[error(
        "a password in a postgresql:// URI would be in the argv of pg_restore; write the DSN as key=value fields \
         (password=…), or give the password in PGPASSWORD or ~/.pgpass"
    )]
    UriPassword,
    #[error("not a valid PostgreSQL connection string: {0}")]
    Invalid(String),
    #[error("{0}")]
    Tls(String),
}

/// libpq quoting of one value.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Whether `text` is a `postgresql://` URI.
pub fn is_uri(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with("postgres://") || t.starts_with("postgresql://")
}

/// The `key=value` fields of a connection string, values unquoted.
pub fn fields(text: &str) -> Result<Vec<(String, String)>, BadDsn> {
    let mut out = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(BadDsn::NoValue(key));
        }
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(BadDsn::Key(key));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(BadDsn::Quote(key)),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
    if out.is_empty() {
        return Err(BadDsn::Empty);
    }
    Ok(out)
}

impl Dsn {
    /// From fields (values as they are: each is quoted here).
    pub fn from_fields(fields: impl IntoIterator<Item = (String, String)>) -> Dsn {
        let mut parts = Vec::new();
        let mut password = None;
        for (k, v) in fields {
            if k == "password" {
                password = Some(v);
            } else {
                parts.push(format!("{k}={}", quote(&v)));
            }
        }
        Dsn { conninfo: parts.join(" "), password }
    }

    /// A connection string as an operator writes it (fields or a URI).
    pub fn parse(text: &str) -> Result<Dsn, BadDsn> {
        if is_uri(text) {
            let c = super::Connect::parse(text)?;
            if c.pg().get_password().is_some() {
                return Err(BadDsn::UriPassword);
            }
            return Ok(Dsn { conninfo: text.trim().to_string(), password: None });
        }
        let d = Dsn::from_fields(fields(text)?);
        d.config()?;
        Ok(d)
    }

    /// The same connection to another database of the server.
    pub fn with_dbname(&self, db: &str) -> Dsn {
        let conninfo = if is_uri(&self.conninfo) {
            // a query parameter overrides the URI's path, in libpq as in tokio-postgres
            let enc: String = db
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            let sep = if self.conninfo.contains('?') { '&' } else { '?' };
            format!("{}{sep}dbname={enc}", self.conninfo)
        } else {
            // a later field overrides an earlier one
            format!("{} dbname={}", self.conninfo, quote(db))
        };
        Dsn { conninfo, password: self.password.clone() }
    }

    /// The connection to open (the password included, TLS as the fields say).
    pub fn config(&self) -> Result<super::Connect, BadDsn> {
        let mut c = super::Connect::parse(&self.conninfo)?;
        if let Some(p) = &self.password {
            c.password(p);
        }
        Ok(c)
    }
}

impl std::str::FromStr for Dsn {
    type Err = BadDsn;
    fn from_str(s: &str) -> Result<Dsn, BadDsn> {
        Dsn::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_database_of_the_same_server() {
        for text in ["host=db port=5432 dbname=mairie user=u", "postgresql://u@db:5432/mairie", "postgresql://u@db/mairie?sslmode=disable"]
        {
            let d = Dsn::parse(text).unwrap().with_dbname("mairie_restore_1 'é'");
            let c = d.config().unwrap();
            assert_eq!(c.pg().get_dbname(), Some("mairie_restore_1 'é'"), "{text}");
            assert_eq!(c.pg().get_user(), Some("u"));
        }
    }

    #[test]
    fn the_password_is_apart_and_values_stay_values() {
        let d = Dsn::parse("host=db port=5432 dbname='my db' user=bascule password='p w\\'d'").unwrap();
        assert_eq!(d.password.as_deref(), Some("p w'd"));
        assert!(!d.conninfo.contains("p w"), "{}", d.conninfo);
        let c = d.config().unwrap();
        assert_eq!(c.pg().get_dbname(), Some("my db"));
        assert_eq!(c.pg().get_password(), Some(&b"p w'd"[..]));
        // a value holding what looks like more fields is one value
        let d = Dsn::from_fields([("host".into(), "x sslmode=disable dbname='postgres".into()), ("dbname".into(), "app".into())]);
        let c = d.config().unwrap();
        assert_eq!(c.pg().get_dbname(), Some("app"));
        assert_eq!(c.mode(), super::super::connect::SslMode::Prefer);
        assert_eq!(format!("{:?}", Dsn::parse("host=h password=s3cret").unwrap()), "Dsn(host='h', password given)");
    }

    #[test]
    fn bad_connection_strings() {
        assert_eq!(Dsn::parse("postgresql://u:pw@h/db").unwrap_err(), BadDsn::UriPassword);
        assert!(Dsn::parse("postgresql://u@h/db").is_ok());
        assert_eq!(fields("host").unwrap_err(), BadDsn::NoValue("host".into()));
        assert_eq!(fields("host='x").unwrap_err(), BadDsn::Quote("host".into()));
        assert_eq!(fields("  ").unwrap_err(), BadDsn::Empty);
        assert!(matches!(fields("Host=x").unwrap_err(), BadDsn::Key(_)));
        assert!(matches!(Dsn::parse("nosuchfield=1").unwrap_err(), BadDsn::Invalid(_)));
    }
}
