//! Everything checked before a runbook runs, each error with its file, line
//! and field: ids, kinds (each kind's own checks), modes, timeouts, RTO
//! markers, variables (names, patterns, defaults), that every `${…}` names
//! a variable or a secret, and that secrets appear only where they belong.
use std::collections::BTreeSet;
use std::time::Duration;

use super::vars::{good_name, step_strings};
use super::{references, Loaded, RtoMarker};

pub(super) fn validate(l: &Loaded) -> bascule_core::Result<()> {
    let err = |field: String, message: String| {
        let (line, column) = bascule_core::config::locate(&l.text, &field).unwrap_or((0, 0));
        bascule_core::Error::Config { file: l.file.clone(), line, column, field, message }
    };
    let r = &l.runbook;
    if r.stages.is_empty() {
        return Err(err("stages".into(), "a runbook needs at least one stage".into()));
    }
    if r.parallel == 0 {
        return Err(err("parallel".into(), "must be at least 1".into()));
    }
    for (i, st) in r.stages.iter().enumerate() {
        if st.steps.is_empty() {
            return Err(err(format!("stages[{i}].steps"), format!("stage {:?} has no step", st.name)));
        }
        if st.parallel == Some(0) {
            return Err(err(format!("stages[{i}].parallel"), "must be at least 1".into()));
        }
    }
    let mut ids = BTreeSet::new();
    let (mut starts, mut ends) = (Vec::new(), Vec::new());
    for (path, s) in l.steps() {
        if s.id.is_empty() || !s.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(err(format!("{path}.id"), format!("step id {:?}: use letters, digits, - and _", s.id)));
        }
        if !ids.insert(s.id.as_str()) {
            return Err(err(format!("{path}.id"), format!("two steps have the id {:?}", s.id)));
        }
        if s.modes.is_empty() {
            return Err(err(format!("{path}.modes"), "a step must apply to drill, failover or both".into()));
        }
        if s.timeout == Some(Duration::ZERO) {
            return Err(err(format!("{path}.timeout"), "must be above zero".into()));
        }
        match s.rto {
            Some(RtoMarker::Start) => starts.push(path.clone()),
            Some(RtoMarker::End) => ends.push(path.clone()),
            None => {}
        }
        s.kind.validate(r).map_err(|e| err(format!("{path}.{}", e.field), e.message))?;
    }
    markers(l, &starts, &ends).map_err(|(field, message)| err(field, message))?;
    for (k, v) in &r.variables {
        if !good_name(k) {
            return Err(err(
                format!("variables.{k}"),
                "a variable's name is lower case letters, digits and _, from a letter (it names an environment variable of shell steps)"
                    .into(),
            ));
        }
        if let Some(name) = references(&v.default).first() {
            return Err(err(format!("variables.{k}"), format!("a variable cannot use another (${{{name}}})")));
        }
        if !v.default.is_empty() {
            v.check(k, &v.default).map_err(|e| err(format!("variables.{k}"), format!("the default: {e}")))?;
        }
    }
    references_are_defined(l)?;
    secrets_where_they_belong(l).map_err(|(field, message)| err(field, message))?;
    Ok(())
}

/// `${secret.…}` only in a shell step's `env`, an HTTP header, or a DSN
/// (whose own parsing allows it in the password alone): anywhere else it
/// would reach an argv, a URL, a log or a report.
fn secrets_where_they_belong(l: &Loaded) -> Result<(), (String, String)> {
    for (path, text) in step_strings(&l.text) {
        if !references(&text).iter().any(|r| r.starts_with("secret.")) {
            continue;
        }
        let allowed =
            path.contains(".shell.env.") || path.contains(".http.headers.") || path.ends_with(".dsn") || path.ends_with(".target");
        if !allowed {
            return Err((
                path,
                "a secret may be only in a shell step's `env`, an HTTP header or a DSN's password (anywhere else it would reach a \
                 command line, a URL, a log or a report)"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// At most one `rto: start` and one `rto: end`, in the stages, in that order.
fn markers(l: &Loaded, starts: &[String], ends: &[String]) -> Result<(), (String, String)> {
    if let Some(p) = starts.iter().chain(ends).find(|p| p.starts_with("on_failure")) {
        return Err((p.clone(), "rto markers belong to the stages, not to on_failure".into()));
    }
    if starts.len() > 1 {
        return Err((format!("{}.rto", starts[1]), "a second `rto: start`".into()));
    }
    if ends.len() > 1 {
        return Err((format!("{}.rto", ends[1]), "a second `rto: end`".into()));
    }
    if let (Some(s), Some(e)) = (starts.first(), ends.first()) {
        let pos = |p: &str| l.steps().iter().position(|(q, _)| q == p);
        if pos(s) > pos(e) {
            return Err((format!("{e}.rto"), "`rto: end` comes before `rto: start`".into()));
        }
    }
    Ok(())
}

/// Every `${…}` of the text names a variable or a secret.
fn references_are_defined(l: &Loaded) -> bascule_core::Result<()> {
    let r = &l.runbook;
    let lines = l.text.lines().enumerate().filter(|(_, t)| !t.trim_start().starts_with('#'));
    for (n, t) in lines {
        for name in references(t) {
            let known = match name.strip_prefix("secret.") {
                Some(s) => r.secrets.contains_key(s),
                None => r.variables.contains_key(name),
            };
            if !known {
                let column = t.find(&format!("${{{name}}}")).map(|c| c + 1).unwrap_or(0);
                return Err(bascule_core::Error::Config {
                    file: l.file.clone(),
                    line: n + 1,
                    column,
                    field: format!("${{{name}}}"),
                    message: if name.starts_with("secret.") {
                        format!("undefined secret; define it under `secrets:` ({}: {{env: NAME}})", name.trim_start_matches("secret."))
                    } else {
                        "undefined variable; define it under `variables:`".into()
                    },
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::{load, parse, plan, Loaded, Mode};

    fn check(text: &str) -> Result<Loaded, String> {
        parse(text, Path::new("rb.yaml")).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"name: t
targets: { rto: 2h, rpo: 5m }
variables:
  db_host: { default: 127.0.0.1, pattern: "[a-z0-9.-]+" }
secrets:
  token: { env: TOKEN }
stages:
  - name: cut
    steps:
      - id: stop
        shell: { command: "echo stop" }
        rto: start
      - id: probe
        http: { url: "http://127.0.0.1/health", headers: { Authorization: "Bearer ${secret.token}" } }
        retries: 2
  - name: check
    steps:
      - id: rows
        sql: { dsn: "host=${db_host} dbname=app", query: "SELECT 1", expect: "1" }
        rto: end
on_failure:
  - id: back
    shell: { command: "echo back" }
"#;

    #[test]
    fn a_good_runbook_loads() {
        let l = check(GOOD).unwrap();
        assert_eq!(l.runbook.targets.rto, Duration::from_secs(7200));
        assert_eq!(l.steps().len(), 4);
        assert_eq!(l.runbook.stages[0].steps[1].kind(), "http");
        assert_eq!(l.runbook.stages[0].steps[1].retries, 2);
        assert!(l.runbook.stages[0].steps[0].critical);
    }

    /// Each broken runbook: (what to change in GOOD, expected line, text in the error).
    #[test]
    fn broken_runbooks_give_one_clear_error_each() {
        let cases: &[(&str, &str, usize, &str)] = &[
            ("shell: { command: \"echo stop\" }", "shel: { command: \"echo stop\" }", 11, "unknown field `shel`"),
            ("      - id: rows\n", "      - ids: rows\n", 18, "unknown field `ids`"),
            ("targets: { rto: 2h, rpo: 5m }", "targets: { rto: 2 hours and a bit, rpo: 5m }", 2, "rto"),
            ("${db_host} dbname", "${db_hots} dbname", 19, "undefined variable"),
            ("${secret.token}", "${secret.tok}", 14, "undefined secret"),
            ("      - id: probe", "      - id: stop", 13, "two steps have the id \"stop\""),
            ("        retries: 2\n", "        retries: 2\n        sleep: { duration: 1s }\n", 16, "has two kinds"),
            ("        rto: end\n", "        rto: start\n", 20, "a second `rto: start`"),
            ("command: \"echo stop\"", "command: \"echo ${secret.token}\"", 11, "a secret cannot be in a command"),
            ("query: \"SELECT 1\"", "query: \"SELECT '${db_host}'\"", 19, "write $1 where the value goes"),
            ("\"host=${db_host} dbname=app\"", "\"${db_host}\"", 19, "not a whole DSN"),
            ("\"http://127.0.0.1/health\"", "\"http://127.0.0.1/${secret.token}\"", 14, "a secret cannot be in a URL"),
            ("  db_host: { default: 127.0.0.1", "  DB_HOST: { default: 127.0.0.1", 4, "lower case"),
            ("default: 127.0.0.1,", "default: \"127.0.0.1; rm\",", 4, "does not match the runbook's pattern"),
            ("pattern: \"[a-z0-9.-]+\"", "pattern: \"[a-z\"", 4, "pattern"),
            (
                "        shell: { command: \"echo stop\" }",
                "        shell: { command: \"echo stop\", env: { t: \"${secret.token}\" } }",
                11,
                "upper case",
            ),
        ];
        for (from, to, line, text) in cases {
            assert!(GOOD.contains(from), "case {from:?} does not apply");
            let e = check(&GOOD.replacen(from, to, 1)).map(|_| ()).unwrap_err();
            assert!(e.starts_with(&format!("rb.yaml:{line}:")), "expected line {line} for {to:?}: {e}");
            assert!(e.contains(text), "expected {text:?} for {to:?}: {e}");
        }
        // a step with no kind at all
        let no_kind = GOOD.replacen("    shell: { command: \"echo back\" }\n", "    description: nothing\n", 1);
        assert_ne!(no_kind, GOOD);
        let e = check(&no_kind).map(|_| ()).unwrap_err();
        assert!(e.contains("has no kind"), "{e}");
        // a missing field
        let e = check(&GOOD.replacen("query: \"SELECT 1\", ", "", 1)).map(|_| ()).unwrap_err();
        assert!(e.contains("missing field `query`") && e.starts_with("rb.yaml:19:"), "{e}");
    }

    #[test]
    fn every_shipped_runbook_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let l = load(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(!plan::render(&l, Mode::Drill).is_empty());
                n += 1;
            }
        }
        assert!(n >= 3, "runbooks/ holds {n} runbooks");
    }
}
