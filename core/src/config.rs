//! Helpers shared by the agent's and the controller's configuration files:
//! YAML loading with precise errors, secret references, atomic local writes.
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::{Error, Result};

/// Parses a YAML file into `T`. Errors name the file, line, column and the
/// path of the field (`providers[1].endpoint`).
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_yaml(&text, path)
}

pub fn parse_yaml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        let mut message = inner.to_string();
        // serde_yaml appends " at line L column C"; we print it in front instead
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        if let Some(rest) = message.strip_prefix(&format!("{field}: ")) {
            message = rest.to_string();
        }
        Error::Config { file: path.into(), line, column, field: if field == "." { "(document)".into() } else { field }, message }
    })
}

/// A secret is never written in the YAML: it is read from the environment or
/// from a file when the config is resolved.
/// Written `{env: NAME}` or `{file: /path}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SecretRefRepr")]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRefRepr {
    env: Option<String>,
    file: Option<PathBuf>,
}

impl TryFrom<SecretRefRepr> for SecretRef {
    type Error = &'static str;
    fn try_from(r: SecretRefRepr) -> std::result::Result<Self, Self::Error> {
        match (r.env, r.file) {
            (Some(e), None) => Ok(SecretRef::Env(e)),
            (None, Some(f)) => Ok(SecretRef::File(f)),
            _ => Err("a secret is `{env: NAME}` or `{file: /path}` (exactly one); it is never written inline"),
        }
    }
}

impl SecretRef {
    /// `what` names the field in errors (the value itself never appears).
    pub fn resolve(&self, config_file: &Path, what: &str) -> Result<String> {
        match self {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| Error::ConfigValue {
                file: config_file.into(),
                message: format!("{what}: environment variable {name} is not set; export it or use `file:`"),
            }),
            SecretRef::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| Error::ConfigValue { file: config_file.into(), message: format!("{what}: {}: {e}", p.display()) }),
        }
    }
}

/// Writes a local state file so that a crash leaves the old or the new
/// content: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("state")));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
        secret: Option<SecretRef>,
    }

    #[test]
    fn errors_name_line_and_field() {
        let text = "items:\n  - name: a\n  - name: b\n    colour: red\n";
        let err = parse_yaml::<Outer>(text, Path::new("x.yaml")).unwrap_err().to_string();
        assert!(err.starts_with("x.yaml:4:"), "{err}");
        assert!(err.contains("items[1]"), "{err}");
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn secrets_by_reference() {
        let o: Outer = parse_yaml("items:\n  - name: a\n    secret: {env: BASCULE_TEST_UNSET_VAR}\n", Path::new("x")).unwrap();
        let err = o.items[0].secret.as_ref().unwrap().resolve(Path::new("x.yaml"), "items[0].secret").unwrap_err();
        assert!(err.to_string().contains("BASCULE_TEST_UNSET_VAR"));
        assert!(parse_yaml::<Outer>("items:\n  - name: a\n    secret: hunter2\n", Path::new("x")).is_err());
    }
}

/// Tenant, provider and job names end up in object keys and metric labels:
/// keep them to `[a-z0-9._-]`.
pub fn check_name(what: &str, name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {name:?}: use 1 to 64 characters among a-z, 0-9, '.', '_' and '-'"))
    }
}
