//! PostgreSQL over TLS: every connection bascule opens itself (the export's
//! snapshot, row counts after a restore, SQL steps) honours `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey`, against a real server with
//! `ssl = on` that refuses TCP connections without TLS, and a CA made here.
use std::path::{Path, PathBuf};
use std::process::Command;

use bascule_tests::{bin, edit, ok, run, text, write, Scenario};

/// A CA: (its certificate, its key).
fn make_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    ok(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt));
    (crt, key)
}

/// A certificate signed by `ca` for `san` (`DNS:localhost,IP:127.0.0.1`), with `usage` (serverAuth or clientAuth).
fn issue(dir: &Path, ca: &(PathBuf, PathBuf), name: &str, cn: &str, san: &str, usage: &str) -> (PathBuf, PathBuf) {
    let (crt, key, csr, ext) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.ext")),
    );
    ok(Command::new("openssl")
        .args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    write(&ext, &format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"));
    ok(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca.0)
        .arg("-CAkey")
        .arg(&ca.1)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&crt));
    ok(Command::new("chmod").arg("600").arg(&key));
    (crt, key)
}

/// Runs a one-step runbook whose sql step connects with `dsn`: (passed, output).
fn sql_drill(s: &Scenario, name: &str, dsn: &str) -> (bool, String) {
    let rb = s.path(&format!("{name}.yaml"));
    write(
        &rb,
        &format!(
            "name: {name}\nstages:\n  - name: only\n    steps:\n      - id: probe\n        sql:\n          dsn: \"{dsn}\"\n          query: \"SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()\"\n          expect: \"true\"\n"
        ),
    );
    let o = run(Command::new(bin("bascule-controller")).args(["drill", "run", "--config"]).arg(s.path("controller.yaml")).arg(&rb));
    let out = text(&o);
    let id = out.split("drill ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_else(|| panic!("no drill id in {out}"));
    let report = run(Command::new(bin("bascule-controller")).args(["drill", "report", "--config"]).arg(s.path("controller.yaml")).arg(id));
    (o.status.success() && out.contains("PASS"), format!("{out}\n{}", text(&report)))
}

#[test]
fn every_connection_bascule_opens_honours_sslmode_and_its_certificates() {
    let s = Scenario::start_local(200);
    let tls = s.path("tls");
    std::fs::create_dir(&tls).unwrap();
    let ca = make_ca(&tls, "town-ca");
    let other_ca = make_ca(&tls, "other-ca");
    let server = issue(&tls, &ca, "server", "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth");
    s.pg.enable_tls(&server.0, &server.1, true);
    let base = s.pg.dsn("mairie");
    let ca_file = ca.0.display().to_string();
    let other_file = other_ca.0.display().to_string();

    // the export: the agent's own connection (its snapshot) and pg_dump's, both verify-full
    let agent_yaml = s.path("agent.yaml");
    edit(&agent_yaml, &format!("dsn: \"{base}\""), &format!("dsn: \"{base} sslmode=verify-full sslrootcert={ca_file}\""));
    let o = s.snapshot();
    assert!(o.status.success(), "an export over verify-full TLS:\n{}", text(&o));
    // with the other CA, the agent refuses the server before pg_dump runs
    edit(&agent_yaml, &ca_file, &other_file);
    let o = s.snapshot();
    assert!(!o.status.success(), "an export to a server the CA did not sign:\n{}", text(&o));
    assert!(text(&o).contains("source database") && text(&o).to_lowercase().contains("certificate"), "{}", text(&o));
    edit(&agent_yaml, &other_file, &ca_file);

    // a restore whose target is verify-full: pg_restore (libpq) and the row counts (bascule's own)
    s.pg.createdb("restored");
    let target = format!("{} sslmode=verify-full sslrootcert={ca_file}", s.pg.dsn("restored"));
    let o =
        run(s.controller(&["restore", "--snapshot", "latest"]).arg("--identity").arg(s.path("customer.key")).args(["--target", &target]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("identical to the export"), "the row counts were checked over TLS:\n{}", text(&o));
    assert_eq!(s.pg.data_fingerprint("mairie"), s.pg.data_fingerprint("restored"));

    // SQL steps, mode by mode (the server refuses TCP without TLS: every pass below is encrypted)
    let named = |host: &str| base.replace("host=127.0.0.1", &format!("host={host} hostaddr=127.0.0.1"));
    let cases = [
        ("verify-full, the right CA", format!("{base} sslmode=verify-full sslrootcert={ca_file}"), true, ""),
        ("verify-full, another CA", format!("{base} sslmode=verify-full sslrootcert={other_file}"), false, "UnknownIssuer"),
        ("verify-ca, another CA", format!("{base} sslmode=verify-ca sslrootcert={other_file}"), false, "UnknownIssuer"),
        (
            "verify-full, a name the certificate lacks",
            format!("{} sslmode=verify-full sslrootcert={ca_file}", named("db.example")),
            false,
            "not valid for name \"db.example\"",
        ),
        ("verify-ca, a name the certificate lacks", format!("{} sslmode=verify-ca sslrootcert={ca_file}", named("db.example")), true, ""),
        ("verify-full by name", format!("{} sslmode=verify-full sslrootcert={ca_file}", named("localhost")), true, ""),
        ("require, no root: encrypted, unchecked", format!("{base} sslmode=require"), true, ""),
        ("require with a root: checked (as libpq)", format!("{base} sslmode=require sslrootcert={other_file}"), false, "UnknownIssuer"),
        ("prefer (the default): the server offers TLS", base.clone(), true, ""),
        ("disable: the server wants TLS", format!("{base} sslmode=disable"), false, "no encryption"),
        ("a mode libpq does not know", format!("{base} sslmode=sometimes"), false, "sometimes"),
    ];
    for (i, (case, dsn, passes, says)) in cases.into_iter().enumerate() {
        let (passed, out) = sql_drill(&s, &format!("case-{i}"), &dsn);
        assert_eq!(passed, passes, "{case}:\n{out}");
        assert!(out.contains(says), "{case}: expected {says:?} in\n{out}");
    }

    // a client certificate: the server asks for one signed by the town's CA
    let client = issue(&tls, &ca, "client", "bascule", "DNS:bascule", "clientAuth");
    let data = s.pg.data_dir();
    std::fs::copy(&ca.0, data.join("root.crt")).unwrap();
    if bascule_tests::is_root() {
        ok(Command::new("chown").arg("postgres").arg(data.join("root.crt")));
    }
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    conf.push_str("ssl_ca_file = 'root.crt'\n");
    std::fs::write(data.join("postgresql.conf"), conf).unwrap();
    let hba =
        std::fs::read_to_string(data.join("pg_hba.conf")).unwrap().replace("127.0.0.1/32            trust", "127.0.0.1/32            cert");
    std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
    ok(&mut s.pg.cmd("pg_ctl", &["-D", data.to_str().unwrap(), "reload"]));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let with_cert =
        format!("{base} sslmode=verify-full sslrootcert={ca_file} sslcert={} sslkey={}", client.0.display(), client.1.display());
    let (passed, out) = sql_drill(&s, "client-cert", &with_cert);
    assert!(passed, "a client certificate:\n{out}");
    let (passed, out) = sql_drill(&s, "no-client-cert", &format!("{base} sslmode=verify-full sslrootcert={ca_file}"));
    assert!(!passed && out.contains("client certificate"), "without the client certificate:\n{out}");
}
