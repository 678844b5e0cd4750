//! Runbook variables and `${name}` / `${secret.name}` references.
//!
//! A variable is data, never code: a value reaches a shell command as an
//! environment variable of the same name, an SQL query as a bind parameter,
//! a DSN as one quoted field, a URL percent-encoded ([`super::template`]).
//! The runbook declares every variable (its name, its default, optionally a
//! `pattern` every value must match); `--var`, the API and `save_as` may set
//! only those, and a value is checked against its pattern before it is used.
use std::collections::BTreeMap;

use serde::Deserialize;

/// A declared variable.
#[derive(Debug, Clone)]
pub struct Variable {
    pub default: String,
    /// Every value must match it, whole.
    pub pattern: Option<Pattern>,
    pub description: String,
}

/// A regular expression a whole value must match.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub text: String,
    regex: regex::Regex,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern, String> {
        let regex = regex::Regex::new(&format!("^(?:{text})$")).map_err(|e| format!("pattern {text:?}: {e}"))?;
        Ok(Pattern { text: text.into(), regex })
    }

    pub fn matches(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl<'de> Deserialize<'de> for Variable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default)]
            default: String,
            pattern: Option<String>,
            #[serde(default)]
            description: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Plain(String),
            Full(Full),
        }
        match Form::deserialize(d)
            .map_err(|_| serde::de::Error::custom("a variable is a value, or { default: …, pattern: …, description: … }"))?
        {
            Form::Plain(default) => Ok(Variable { default, pattern: None, description: String::new() }),
            Form::Full(f) => {
                let pattern = f.pattern.as_deref().map(Pattern::new).transpose().map_err(serde::de::Error::custom)?;
                Ok(Variable { default: f.default, pattern, description: f.description })
            }
        }
    }
}

/// Whether `name` may name a variable: lower case, digits and `_`, from a
/// letter (never one of the environment's own, such as `PATH` or `IFS`).
pub fn good_name(name: &str) -> bool {
    let mut c = name.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase()) && c.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Variable {
    /// `Err` saying why when `value` cannot be this variable's.
    pub fn check(&self, name: &str, value: &str) -> Result<(), String> {
        if value.contains('\0') {
            return Err(format!("{name}: a value cannot hold a NUL byte"));
        }
        match &self.pattern {
            Some(p) if !p.matches(value) => Err(format!("{name}: {value:?} does not match the runbook's pattern {:?}", p.text)),
            _ => Ok(()),
        }
    }
}

/// Every string of a step, with its field path (`stages[0].steps[1].shell.env.X`).
fn leaves(v: &serde_yaml::Value, path: String, out: &mut Vec<(String, String)>) {
    match v {
        serde_yaml::Value::String(s) => out.push((path, s.clone())),
        serde_yaml::Value::Sequence(items) => {
            for (i, x) in items.iter().enumerate() {
                leaves(x, format!("{path}[{i}]"), out);
            }
        }
        serde_yaml::Value::Mapping(m) => {
            for (k, x) in m {
                let k = k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}"));
                leaves(x, format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// Every string of every step of a runbook's text, with its field path.
pub fn step_strings(text: &str) -> Vec<(String, String)> {
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(text) else { return Vec::new() };
    let mut all = Vec::new();
    if let Some(stages) = doc.get("stages").and_then(|s| s.as_sequence()) {
        for (i, st) in stages.iter().enumerate() {
            if let Some(steps) = st.get("steps") {
                leaves(steps, format!("stages[{i}].steps"), &mut all);
            }
        }
    }
    if let Some(v) = doc.get("on_failure") {
        leaves(v, "on_failure".to_string(), &mut all);
    }
    all
}

/// The variables a shell command reads from its environment (`$name`, `${name}`).
pub fn shell_reads(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = command.as_bytes();
    let mut i = 0;
    while let Some(off) = command.get(i..).and_then(|r| r.find('$')) {
        let mut j = i + off + 1;
        if b.get(j) == Some(&b'{') {
            j += 1;
        }
        let start = j;
        while b.get(j).is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_') {
            j += 1;
        }
        if let Some(name) = command.get(start..j).filter(|n| good_name(n)) {
            out.push(name.to_string());
        }
        i = j.max(i + off + 1);
    }
    out.sort();
    out.dedup();
    out
}

/// `${name}` and `${secret.name}` references in `s`.
pub fn references(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) => {
                out.push(&after[..j]);
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

/// Replaces `${name}` with `var(name)`, `${secret.name}` with `secret(name)`
/// (each may leave the reference as it is by returning `None`).
pub fn substitute(s: &str, var: &dyn Fn(&str) -> Option<String>, secret: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let name = &after[..j];
        let got = match name.strip_prefix("secret.") {
            Some(sname) => secret(sname),
            None => var(name),
        };
        match got {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[i..i + 2 + j + 1]),
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    out
}

/// [`substitute`] with the values of `vars` (and no secret).
pub fn with_vars(s: &str, vars: &BTreeMap<String, String>) -> String {
    substitute(s, &|n| vars.get(n).cloned(), &|_| None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_keeps_secrets_apart() {
        let vars = BTreeMap::from([("a".to_string(), "1".to_string())]);
        assert_eq!(substitute("x${a}y${secret.s}z", &|n| vars.get(n).cloned(), &|n| Some(format!("<{n}>"))), "x1y<s>z");
        assert_eq!(with_vars("x${a}y${secret.s}z${b}", &vars), "x1y${secret.s}z${b}", "secrets and unknowns stay as written");
        assert_eq!(references("${a} and ${secret.b}"), ["a", "secret.b"]);
    }

    #[test]
    fn what_a_shell_command_reads() {
        assert_eq!(shell_reads("echo \"$tenant\" ${dir}/x $HOME $1 $last_wal2-"), ["dir", "last_wal2", "tenant"]);
    }

    #[test]
    fn names_and_patterns() {
        assert!(good_name("tenant") && good_name("last_wal2"));
        for bad in ["", "PATH", "IFS", "2x", "a-b", "é"] {
            assert!(!good_name(bad), "{bad}");
        }
        let v = Variable { default: String::new(), pattern: Some(Pattern::new("[a-z0-9-]+").unwrap()), description: String::new() };
        assert!(v.check("host", "db-a").is_ok());
        assert!(v.check("host", "x; touch /tmp/pwned").unwrap_err().contains("does not match"));
        assert!(v.check("host", "db-a\nx").is_err(), "the pattern is anchored at both ends");
        assert!(Pattern::new("(").is_err());
    }
}
