//! What a step needs of the world, for the readiness check (`drill check`,
//! the `readiness` step): each kind says it in its own file.
use std::path::PathBuf;

/// Where a step connects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Tcp(String, u16),
    /// A unix socket's directory (PostgreSQL's `host=/path`).
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(h, p) => write!(f, "{h}:{p}"),
            Endpoint::Unix(d) => write!(f, "{}", d.display()),
        }
    }
}

/// A data directory a step restores into or promotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    pub tenant: String,
    pub pgdata: PathBuf,
    /// A warm standby there is promoted rather than rebuilt.
    pub standby: bool,
}

#[derive(Debug, Default)]
pub struct Needs {
    pub tenants: Vec<String>,
    pub identities: Vec<PathBuf>,
    pub endpoints: Vec<Endpoint>,
    pub data_dirs: Vec<DataDir>,
    /// PostgreSQL programs of `restore.pg_bindir` (`pg_ctl`, `postgres`) or `pg_restore`.
    pub programs: Vec<&'static str>,
}

impl Needs {
    /// The hosts of a connection string (a bad one is left to the step).
    pub fn dsn(&mut self, conninfo: &str) {
        let Ok(c) = bascule_core::postgres::Connect::parse(conninfo) else { return };
        let ports = c.pg().get_ports();
        for (i, h) in c.pg().get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            self.endpoints.push(match h {
                tokio_postgres::config::Host::Tcp(h) => Endpoint::Tcp(h.clone(), port),
                tokio_postgres::config::Host::Unix(p) => Endpoint::Unix(p.clone()),
            });
        }
    }

    /// The host of an http(s) URL.
    pub fn url(&mut self, url: &str) {
        if let Ok(u) = reqwest::Url::parse(url) {
            if let (Some(h), Some(p)) = (u.host_str(), u.port_or_known_default()) {
                self.endpoints.push(Endpoint::Tcp(h.trim_matches(['[', ']']).to_string(), p));
            }
        }
    }

    pub fn merge(&mut self, other: Needs) {
        self.tenants.extend(other.tenants);
        self.identities.extend(other.identities);
        self.endpoints.extend(other.endpoints);
        self.data_dirs.extend(other.data_dirs);
        self.programs.extend(other.programs);
        self.tenants.sort();
        self.tenants.dedup();
        self.identities.sort();
        self.identities.dedup();
        self.endpoints.sort();
        self.endpoints.dedup();
        self.programs.sort_unstable();
        self.programs.dedup();
    }
}
