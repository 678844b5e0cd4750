//! Everything checked before a runbook runs, each error with its file, line
//! and field: ids, kinds (each kind's own checks), modes, timeouts, RTO
//! markers, and that every `${…}` names a variable or a secret.
use std::collections::BTreeSet;
use std::time::Duration;

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
    references_are_defined(l)?;
    for (k, v) in &r.variables {
        if let Some(name) = references(v).first() {
            return Err(err(format!("variables.{k}"), format!("a variable cannot use another (${{{name}}})")));
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
  dsn: "host=127.0.0.1 dbname=app"
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
        sql: { dsn: "${dsn}", query: "SELECT 1", expect: "1" }
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
            ("\"${dsn}\"", "\"${dns}\"", 19, "undefined variable"),
            ("${secret.token}", "${secret.tok}", 14, "undefined secret"),
            ("      - id: probe", "      - id: stop", 13, "two steps have the id \"stop\""),
            ("        retries: 2\n", "        retries: 2\n        sleep: { duration: 1s }\n", 16, "has two kinds"),
            ("        rto: end\n", "        rto: start\n", 20, "a second `rto: start`"),
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
