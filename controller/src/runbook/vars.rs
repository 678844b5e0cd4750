//! `${name}` and `${secret.name}` in runbook strings.
use std::collections::BTreeMap;

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

/// Replaces `${name}` with variables; `${secret.name}` with `secret(name)`.
pub fn substitute(s: &str, vars: &BTreeMap<String, String>, secret: &dyn Fn(&str) -> String) -> String {
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
        match name.strip_prefix("secret.") {
            Some(sname) => out.push_str(&secret(sname)),
            None => out.push_str(vars.get(name).map(String::as_str).unwrap_or_default()),
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_keeps_secrets_apart() {
        let vars = BTreeMap::from([("a".to_string(), "1".to_string())]);
        assert_eq!(substitute("x${a}y${secret.s}z", &vars, &|n| format!("<{n}>")), "x1y<s>z");
        assert_eq!(references("${a} and ${secret.b}"), ["a", "secret.b"]);
    }
}
