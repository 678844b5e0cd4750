//! How a value reaches what a step builds, never as code: a DSN is parsed
//! into its fields before any variable fills one (each value then quoted,
//! so that a value cannot add a field); a URL keeps its literal scheme and
//! each variable is percent-encoded (it cannot add a `/`, `?`, `@` or `#`).
// Parses runbook text an operator's variables fill: total, no panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use bascule_core::postgres::dsn::{fields, is_uri, BadDsn};
use bascule_core::postgres::Dsn;
use serde::Deserialize;

use super::vars::references;

/// A DSN of a runbook: `key=value` fields (libpq's form; a value may be
/// quoted with `'…'`), variables only inside values and secrets only in
/// `password`; or a `postgresql://` URI with no variable at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnTemplate {
    pub text: String,
    fields: Vec<(String, String)>,
    /// A literal URI, kept whole.
    uri: Option<String>,
}

impl DsnTemplate {
    pub fn parse(text: &str) -> Result<DsnTemplate, String> {
        let t = text.trim();
        if is_uri(t) {
            if !references(t).is_empty() {
                return Err("a variable cannot fill a postgresql:// URI; write the DSN as key=value fields".into());
            }
            Dsn::parse(t).map_err(|e| e.to_string())?;
            return Ok(DsnTemplate { text: text.into(), fields: Vec::new(), uri: Some(t.to_string()) });
        }
        let fields = fields(t).map_err(|e| match e {
            BadDsn::NoValue(k) if k.starts_with("${") => {
                format!("{k:?}: a variable fills one field's value (host=${{host}} …), not a whole DSN")
            }
            e => e.to_string(),
        })?;
        for (key, value) in &fields {
            if references(value).iter().any(|r| r.starts_with("secret.")) && key != "password" {
                return Err(format!("{key}: a secret may fill only the password of a DSN"));
            }
        }
        Ok(DsnTemplate { text: text.into(), fields, uri: None })
    }

    /// The fields a variable fills: (variable, field).
    pub fn filled(&self) -> Vec<(&str, &str)> {
        self.fields.iter().flat_map(|(k, v)| references(v).into_iter().map(move |r| (r, k.as_str()))).collect()
    }

    /// Each value filled by `fill` (variables, and secrets in the password).
    pub fn resolve(&self, fill: &dyn Fn(&str) -> String) -> Dsn {
        match &self.uri {
            Some(uri) => Dsn { conninfo: uri.clone(), password: None },
            None => Dsn::from_fields(self.fields.iter().map(|(k, v)| (k.clone(), fill(v)))),
        }
    }
}

impl<'de> Deserialize<'de> for DsnTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DsnTemplate::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A URL of a runbook: a literal `http://` or `https://` start, and each
/// variable percent-encoded where it stands (a host name, a path segment or
/// a query value: letters, digits, `-`, `.`, `_` and `~` stay as they are).
pub fn check_url(text: &str) -> Result<(), String> {
    if !(text.starts_with("http://") || text.starts_with("https://")) {
        return Err(
            "a URL starts with a literal http:// or https:// (a variable may fill the host, a path segment or a query value)".into()
        );
    }
    if references(text).iter().any(|r| r.starts_with("secret.")) {
        return Err("a secret cannot be in a URL (it would be logged); put it in a header".into());
    }
    Ok(())
}

/// Percent-encodes every byte but the unreserved ones (RFC 3986).
pub fn encode_component(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> String + 'a {
        move |t: &str| {
            super::super::vars::substitute(t, &|n| vars.iter().find(|v| v.0 == n).map(|v| v.1.to_string()), &|n| Some(format!("S:{n}")))
        }
    }

    #[test]
    fn a_value_fills_one_field_and_cannot_add_another() {
        let t = DsnTemplate::parse("host=${host} port=5432 dbname='my db' user=bascule password=${secret.pw}").unwrap();
        assert_eq!(t.filled(), [("host", "host"), ("secret.pw", "password")]);
        let d = t.resolve(&fill(&[("host", "x sslmode=disable password=stolen' dbname='postgres")]));
        assert_eq!(d.password.as_deref(), Some("S:pw"));
        assert!(!d.conninfo.contains("S:pw"), "no password in the conninfo: {}", d.conninfo);
        let c = d.config().unwrap();
        assert_eq!(c.pg().get_hosts().len(), 1, "one host, the whole value: {c:?}");
        assert_eq!(c.pg().get_dbname(), Some("my db"));
        assert_eq!(c.mode(), bascule_core::postgres::SslMode::Prefer, "the value did not set sslmode");
    }

    #[test]
    fn bad_dsn_templates() {
        for (t, why) in [
            ("host=${secret.x}", "only the password"),
            ("postgresql://u@${host}/db", "cannot fill a postgresql:// URI"),
            ("${scratch}", "not a whole DSN"),
            ("host", "expected key=value"),
            ("host='unclosed", "not closed"),
            ("", "empty"),
        ] {
            let e = DsnTemplate::parse(t).unwrap_err();
            assert!(e.contains(why), "{t}: {e}");
        }
        assert!(DsnTemplate::parse("postgresql://u@db/app").is_ok());
    }

    #[test]
    fn urls_keep_their_shape() {
        assert!(check_url("https://${host}/health").is_ok(), "a host name is unreserved characters");
        assert!(check_url("https://app.example/${path}?q=${q}").is_ok());
        assert!(check_url("${app}").is_err());
        assert!(check_url("https://a/${secret.t}").is_err());
        assert_eq!(encode_component("a b/../?x=1#@"), "a%20b%2F..%2F%3Fx%3D1%23%40");
        assert_eq!(encode_component("mairie-1.example"), "mairie-1.example");
    }
}
