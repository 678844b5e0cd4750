//! A real Prometheus server (Debian's `prometheus` package) for tests of
//! the metrics and alert rules.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::http::{curl, get};
use crate::{free_port, wait_until, KillOnDrop};

pub struct Prometheus {
    pub port: u16,
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
}

fn binary() -> std::path::PathBuf {
    crate::which("prometheus", &[]).unwrap_or_else(|| {
        panic!("prometheus not found: install Debian's package (apt-get install prometheus); the README's test command does")
    })
}

impl Prometheus {
    /// Scrapes `targets` (job, host:port) every second and evaluates `rules` every second.
    pub fn start(targets: &[(&str, String)], rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg =
            format!("global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{}\"]\nscrape_configs:\n", rules.display());
        for (job, target) in targets {
            cfg.push_str(&format!("  - job_name: {job}\n    static_configs: [{{ targets: [\"{target}\"] }}]\n"));
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, cfg).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary())
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { port, _child: KillOnDrop(child), _dir: dir };
        wait_until("Prometheus ready", Duration::from_secs(60), || curl("GET", &p.url("/-/ready"), None, None, &[]).0 == 200);
        p
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: `Ok(result)` or `Err(error)` as Prometheus says.
    pub fn query(&self, q: &str) -> Result<serde_json::Value, String> {
        let (code, body) = curl("GET", &self.url("/api/v1/query"), None, None, &["-G", "--data-urlencode", &format!("query={q}")]);
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {code}: {e}: {body}"))?;
        if v["status"] == "success" {
            Ok(v["data"]["result"].clone())
        } else {
            Err(format!("{}: {}", v["errorType"], v["error"]))
        }
    }

    /// The states (`pending`, `firing`) of the alerts named `name`, with their labels.
    pub fn alerts(&self, name: &str) -> Vec<(String, serde_json::Value)> {
        let v: serde_json::Value = serde_json::from_str(&get(&self.url("/api/v1/alerts"))).unwrap();
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| (a["state"].as_str().unwrap_or_default().to_string(), a["labels"].clone()))
            .collect()
    }
}
