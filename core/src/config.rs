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
        let mut field = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        // serde_yaml appends " at line L column C"; we print it in front instead
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // ... and may start with its own idea of the path: `jobs[0]: `
        if let Some((head, rest)) = message.split_once(": ") {
            if !head.is_empty() && head.chars().all(|c| c.is_ascii_alphanumeric() || "_.[]".contains(c)) {
                message = rest.to_string();
            }
        }
        if let Some(unknown) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
            field = if field == "." { unknown.to_string() } else { format!("{field}.{unknown}") };
        }
        // serde_yaml places errors at the start of the enclosing mapping;
        // follow the field's path through the text to point at the field itself
        let (line, column) = locate(text, &field).or_else(|| inner.location().map(|l| (l.line(), l.column()))).unwrap_or((0, 0));
        Error::Config { file: path.into(), line, column, field: if field == "." { "(document)".into() } else { field }, message }
    })
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Option<Vec<Seg<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            out.push(Seg::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        }
    }
    Some(out)
}

/// Finds the line and column (1-based) of the node at `path` (`jobs[0].schedule`)
/// in block-style YAML, also inside one-line flow mappings (`{ a: 1, b: 2 }`).
/// Best effort: `None` when the text is laid out in a way it does not follow.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let is_blank = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
    // the block being searched: lines[start..end], deeper than `parent`
    let (mut start, mut end, mut parent) = (0usize, lines.len(), -1isize);
    let mut found = None;
    for seg in segments(path)? {
        match seg {
            Seg::Key(k) => {
                let pat = format!("{k}:");
                let mut hit = None;
                for (i, l) in lines.iter().enumerate().take(end).skip(start) {
                    if is_blank(l) || (indent(l) as isize) <= parent && i > start {
                        continue;
                    }
                    let body = l.trim_start().trim_start_matches("- ");
                    let col = l.len() - body.len();
                    if body.starts_with(&pat) {
                        hit = Some((i, col, false));
                        break;
                    }
                    // inside a flow mapping on this line
                    for sep in ["{ ", "{", ", ", ","] {
                        if let Some(p) = l.find(&format!("{sep}{pat}")) {
                            hit = Some((i, p + sep.len(), true));
                            break;
                        }
                    }
                    if hit.is_some() {
                        break;
                    }
                }
                let (i, col, inline) = hit?;
                found = Some((i + 1, col + 1));
                if inline {
                    start = i;
                    end = i + 1;
                    continue;
                }
                let ind = col as isize;
                // the key's block ends at a shallower line, or a sibling key
                let stop = (i + 1..end)
                    .find(|&j| {
                        let (l, d) = (lines[j], indent(lines[j]) as isize);
                        !is_blank(l) && (d < ind || (d == ind && !l.trim_start().starts_with("- ")))
                    })
                    .unwrap_or(end);
                start = i;
                end = stop;
                parent = ind;
            }
            Seg::Index(n) => {
                let items: Vec<usize> =
                    (start..end).filter(|&j| lines[j].trim_start().starts_with("- ") && indent(lines[j]) as isize > parent - 1).collect();
                let first_indent = indent(lines[*items.first()?]);
                let items: Vec<usize> = items.into_iter().filter(|&j| indent(lines[j]) == first_indent).collect();
                let i = *items.get(n)?;
                let stop = items.iter().copied().find(|&j| j > i).unwrap_or(end);
                found = Some((i + 1, first_indent + 3));
                start = i;
                end = stop;
                parent = first_indent as isize;
            }
        }
    }
    found
}

/// A secret is never written in the YAML: it is read from the environment or
/// from a file when the config is resolved.
/// Written `{env: NAME}` or `{file: /path}`. A plain string is refused,
/// and never repeated in the error (it may be the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

const SECRET_HELP: &str = "a secret is `{env: NAME}` or `{file: /path}` (exactly one); it is never written inline";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SecretRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(SECRET_HELP)
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> std::result::Result<SecretRef, E> {
                Err(E::custom(SECRET_HELP))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<SecretRef, A::Error> {
                let mut found = None;
                while let Some(k) = map.next_key::<String>()? {
                    let v: String = map.next_value()?;
                    let s = match k.as_str() {
                        "env" => SecretRef::Env(v),
                        "file" => SecretRef::File(v.into()),
                        _ => return Err(serde::de::Error::custom(SECRET_HELP)),
                    };
                    if found.replace(s).is_some() {
                        return Err(serde::de::Error::custom(SECRET_HELP));
                    }
                }
                found.ok_or_else(|| serde::de::Error::custom(SECRET_HELP))
            }
        }
        d.deserialize_any(V)
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
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`], the content written by `write` (through a buffer).
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("state")));
    // a stale file (or a link planted there) is unlinked, never followed
    let _ = std::fs::remove_file(&tmp);
    let f = create_exclusive(&tmp, 0o600).map_err(|e| Error::io(&tmp, e))?;
    let mut w = std::io::BufWriter::new(f);
    write(&mut w).and_then(|_| w.flush()).and_then(|_| w.get_ref().sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Creates a new file with `mode`, exclusively and without following a
/// symbolic link at `path`.
pub fn create_exclusive(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32).open(path)
}

/// Creates a secret file with mode 0600; never overwrites an existing file.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// A tenant, provider, job or token name that would not fit in an object
/// key or a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {name:?}: use 1 to 64 characters among a-z, 0-9, '.', '_' and '-'")]
pub struct BadName {
    pub what: &'static str,
    pub name: String,
}

/// Tenant, provider and job names end up in object keys and metric labels:
/// keep them to `[a-z0-9._-]`.
pub fn check_name(what: &'static str, name: &str) -> std::result::Result<(), BadName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(BadName { what, name: name.into() })
    }
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
    fn locate_follows_the_path() {
        let text =
            "a: 1\njobs:\n  - name: x\n    schedule: \"bad\"\n  - name: y\n    source: { type: t, colour: blue }\n    schedule: ok\n";
        assert_eq!(locate(text, "jobs[0].schedule"), Some((4, 5)));
        assert_eq!(locate(text, "jobs[1].schedule"), Some((7, 5)));
        assert_eq!(locate(text, "jobs[1].source.colour"), Some((6, 24)));
        assert_eq!(locate(text, "jobs[1]"), Some((5, 5)));
        assert_eq!(locate(text, "nothing.here"), None);
    }

    #[test]
    fn secrets_by_reference() {
        let o: Outer = parse_yaml("items:\n  - name: a\n    secret: {env: BASCULE_TEST_UNSET_VAR}\n", Path::new("x")).unwrap();
        let err = o.items[0].secret.as_ref().unwrap().resolve(Path::new("x.yaml"), "items[0].secret").unwrap_err();
        assert!(err.to_string().contains("BASCULE_TEST_UNSET_VAR"));
        assert!(parse_yaml::<Outer>("items:\n  - name: a\n    secret: hunter2\n", Path::new("x")).is_err());
    }
}
