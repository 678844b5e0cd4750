//! The alert rules and dashboards of `dashboards/`: promtool's own tests of
//! every rule, the names they use against those the code exports, and a real
//! Prometheus scraping a real controller and agent, where stopping the
//! agent's WAL shipping fires the lag alert and restarting it resolves it.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bascule_tests::http::curl;
use bascule_tests::prometheus::Prometheus;
use bascule_tests::{bin, free_port, run, text, wait_until, KillOnDrop, Scenario};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn promtool() -> PathBuf {
    bascule_tests::which("promtool", &[]).unwrap_or_else(|| {
        panic!("promtool not found: install Debian's prometheus package (apt-get install prometheus); the README's test command does")
    })
}

/// `alerts.yml` as JSON.
fn rules() -> serde_json::Value {
    bascule_core::config::parse_yaml(&std::fs::read_to_string(root().join("dashboards/alerts.yml")).unwrap(), Path::new("alerts.yml"))
        .unwrap()
}

fn alert_rules(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    v["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect()
}

/// Every PromQL expression of the rules and the Grafana dashboards (Grafana's
/// `$tenant` variable replaced by a regex that matches all).
fn expressions() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = alert_rules(&rules())
        .iter()
        .map(|r| (format!("alert {}", r["alert"].as_str().unwrap()), r["expr"].as_str().unwrap().to_string()))
        .collect();
    for d in ["grafana-fleet.json", "grafana-drills.json"] {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root().join("dashboards").join(d)).unwrap()).unwrap();
        for p in v["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                out.push((format!("{d}: {}", p["title"].as_str().unwrap()), t["expr"].as_str().unwrap().replace("$tenant", ".*")));
            }
        }
    }
    out
}

#[test]
fn promtool_checks_and_tests_every_rule() {
    let dir = root().join("dashboards");
    let o = run(Command::new(promtool()).args(["check", "rules", "alerts.yml"]).current_dir(&dir));
    assert!(o.status.success(), "{}", text(&o));
    let o = run(Command::new(promtool()).args(["test", "rules", "alerts.test.yml", "alerts.drills.test.yml"]).current_dir(&dir));
    assert!(o.status.success(), "{}", text(&o));
    // every rule has a test case
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).unwrap()
        + &std::fs::read_to_string(dir.join("alerts.drills.test.yml")).unwrap();
    for r in alert_rules(&rules()) {
        let name = r["alert"].as_str().unwrap();
        assert!(tests.contains(&format!("alertname: {name}\n")), "no promtool test for {name}");
    }
}

#[test]
fn rules_and_dashboards_name_only_metrics_the_code_exports() {
    let names = |text: &str, quoted: bool| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("bascule_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(tail.len());
            let quoted_here = i > 0 && rest.as_bytes()[i - 1] == b'"' && tail.as_bytes().get(end) == Some(&b'"');
            if !quoted || quoted_here {
                out.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
        out
    };
    let mut exported = BTreeSet::new();
    for f in ["agent/src/metrics.rs", "controller/src/serve/metrics.rs"] {
        exported.extend(names(&std::fs::read_to_string(root().join(f)).unwrap(), true));
    }
    assert!(exported.len() >= 20, "{exported:?}");
    for (place, expr) in expressions() {
        for n in names(&expr, false) {
            assert!(exported.contains(&n), "{place}: {n} is not a metric the code exports ({exported:?})");
        }
    }
}

#[test]
fn the_lag_alert_fires_in_prometheus_when_wal_shipping_stops_and_resolves_when_it_returns() {
    // WAL flows all the time, as on a busy server: the agent's heartbeat
    // writes a row and ends the WAL segment every second
    let s = Scenario::start_archiving(500);
    let agent_port = free_port();
    let agent_yaml = std::fs::read_to_string(s.path("agent.yaml")).unwrap();
    assert!(agent_yaml.contains("heartbeat:\n  dsn:") && agent_yaml.ends_with("  interval: 1s\n"), "{agent_yaml}");
    std::fs::write(s.path("agent.yaml"), format!("{agent_yaml}  switch_wal_every: 1s\nmetrics:\n  listen: 127.0.0.1:{agent_port}\n"))
        .unwrap();
    let ctl_port = free_port();
    let ctl_yaml = std::fs::read_to_string(s.path("controller.yaml")).unwrap();
    std::fs::write(
        s.path("controller.yaml"),
        format!(
            "{ctl_yaml}serve:\n  listen: 127.0.0.1:{ctl_port}\n  interval: 1s\n  deep_interval: 5s\n  verify_sample: {{ cron: \"*/3 * * * * *\", slices: 1 }}\n"
        ),
    )
    .unwrap();
    let mut daemon = s.daemon();
    let log = std::fs::File::create(s.path("serve.log")).unwrap();
    let _serve = KillOnDrop(
        Command::new(bin("bascule-controller"))
            .args(["serve", "--config"])
            .arg(s.path("controller.yaml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // the shipped rules, with the lag warning brought from 5 min (for 2 min) to 6 s (for 2 s)
    let mut rules = rules();
    let lag = rules["groups"][0]["rules"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["alert"] == "BasculeReplicationLagWarning")
        .expect("the lag warning rule");
    assert_eq!(lag["expr"], "bascule_replication_lag_seconds > 300");
    assert_eq!(lag["for"], "2m");
    lag["expr"] = "bascule_replication_lag_seconds > 6".into();
    lag["for"] = "2s".into();
    let rules_file = s.path("rules.yml");
    std::fs::write(&rules_file, serde_json::to_string_pretty(&rules).unwrap()).unwrap();
    let prom = Prometheus::start(
        &[("bascule-controller", format!("127.0.0.1:{ctl_port}")), ("bascule-agent", format!("127.0.0.1:{agent_port}"))],
        &rules_file,
    );

    // every rule and dashboard query parses in this Prometheus
    for (place, expr) in expressions() {
        prom.query(&expr).unwrap_or_else(|e| panic!("{place}: {expr}: {e}"));
    }
    // the rule file loaded whole
    let (_, r) = curl("GET", &prom.url("/api/v1/rules"), None, None, &[]);
    assert_eq!(r.matches("\"type\":\"alerting\"").count(), alert_rules(&rules).len(), "{r}");

    let lag_of = |q: &str| -> Vec<f64> {
        prom.query(q).unwrap().as_array().unwrap().iter().map(|x| x["value"][1].as_str().unwrap().parse().unwrap()).collect()
    };
    let minute = Duration::from_secs(60);
    let t0 = Instant::now();
    loop {
        let v = lag_of("bascule_replication_lag_seconds");
        if v.len() == 2 && v.iter().all(|l| *l < 5.0) {
            break;
        }
        if t0.elapsed() > minute {
            let serve_log = std::fs::read_to_string(s.path("serve.log")).unwrap_or_default();
            let metrics = curl("GET", &format!("http://127.0.0.1:{ctl_port}/metrics"), None, None, &[]).1;
            panic!(
                "lag not scraped or not low: {v:?}\narchiver: {:?}, settings: {}\npg log: {}\nmetrics:\n{metrics}\nserve log (end):\n{}\ndaemon log (end):\n{}",
                s.archiver(),
                s.pg.psql("mairie", "SELECT pg_current_wal_lsn()::text || ' ' || (SELECT count(*) FROM pg_tables WHERE schemaname = 'bascule')::text"),
                tail(&s.pg.log(), 2000),
                tail(&serve_log, 3000),
                tail(&s.daemon_log(), 3000)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_until("the agent scraped", minute, || !lag_of("bascule_agent_spool_segments").is_empty());
    assert!(prom.alerts("BasculeReplicationLagWarning").is_empty(), "no lag alert while shipping");
    // the scheduled verify (every 3 s here, reading every object) runs and finds the
    // archive whole (a file still on its way to the second provider may show in one run)
    wait_until("a clean scheduled verify", minute, || {
        !lag_of("bascule_verify_last_run_timestamp_seconds").is_empty() && lag_of("bascule_verify_problems") == vec![0.0]
    });

    // the agent's daemon dies: WAL piles up in the spool, the providers' HEADs age
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    let cut = Instant::now();
    wait_until("the lag alert firing", 2 * minute, || {
        let a = prom.alerts("BasculeReplicationLagWarning");
        a.len() == 2 && a.iter().all(|(state, _)| state == "firing")
    });
    let fired_after = cut.elapsed();
    println!("lag alert firing on both providers {:.1} s after the daemon stopped", fired_after.as_secs_f64());
    let a = prom.alerts("BasculeReplicationLagWarning");
    assert!(a.iter().any(|(_, l)| l["tenant"] == s.tenant.as_str() && l["severity"] == "warning"), "{a:?}");
    assert!(prom.alerts("BasculeReplicationLagCritical").is_empty());

    // it comes back: the backlog drains, the alert resolves
    let _daemon = s.daemon();
    let back = Instant::now();
    wait_until("the lag alert resolved", 2 * minute, || prom.alerts("BasculeReplicationLagWarning").is_empty());
    println!("lag alert resolved {:.1} s after the daemon restarted", back.elapsed().as_secs_f64());
    assert!(lag_of("bascule_replication_lag_seconds").iter().all(|l| *l < 6.0));
    // the archive is whole: no gap from the outage
    let last = s.switch_wal();
    s.wait_on_both(&last, minute);
    let v = run(&mut s.controller(&["wal"]));
    assert!(v.status.success(), "{}\n{}", text(&v), prom.log());
}
