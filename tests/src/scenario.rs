//! A whole installation: a customer database, two Garage providers, an agent
//! key, a customer identity, and the agent's and controller's configs.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{bin, ok, run, write, Garage, PgCluster};

pub struct Scenario {
    pub pg: PgCluster,
    pub a: Garage,
    pub b: Garage,
    pub dir: tempfile::TempDir,
    pub tenant: String,
    pub recipient: String,
    pub verify_key: String,
    /// PostgreSQL archives its WAL through `bascule-agent wal-push`.
    pub archiving: bool,
}

/// A schema with what a town hall's application really has: French text with
/// accents, NULLs, jsonb, bytea, an enum, a view, a function, a large object.
pub const TOWN_HALL_SCHEMA: &str = r#"
CREATE TYPE statut AS ENUM ('brouillon', 'validé', 'archivé');
CREATE TABLE citoyens (id serial PRIMARY KEY, nom text NOT NULL, prenom text, commune text, naissance date, infos jsonb);
CREATE TABLE actes (id bigserial PRIMARY KEY, citoyen int REFERENCES citoyens, nature text, statut statut,
                    signe_le timestamptz, piece bytea, note text);
CREATE VIEW actes_valides AS SELECT * FROM actes WHERE statut = 'validé';
CREATE FUNCTION nom_complet(c citoyens) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT coalesce(c.prenom || ' ', '') || c.nom $$;
"#;

impl Scenario {
    /// Starts everything; `rows` citizens and 2×`rows` acts in database `mairie`.
    pub fn start(rows: u32) -> Scenario {
        Self::build(rows, false, "", false)
    }

    /// [`Scenario::start`], with PostgreSQL archiving its WAL through
    /// `bascule-agent wal-push`, and a base backup job `base`.
    pub fn start_archiving(rows: u32) -> Scenario {
        Self::build(rows, true, "", false)
    }

    /// [`Scenario::start`] on two local directories.
    pub fn start_local(rows: u32) -> Scenario {
        Self::build(rows, false, "", true)
    }

    /// [`Scenario::start_archiving`] on two local directories instead of
    /// two Garage servers (objects are files a test can change at will).
    pub fn start_archiving_local(rows: u32) -> Scenario {
        Self::build(rows, true, "", true)
    }

    fn build(rows: u32, archiving: bool, extra_conf: &str, local: bool) -> Scenario {
        let dir = crate::shared_tempdir();
        let conf = if archiving {
            format!(
                "wal_level = replica\narchive_mode = on\narchive_command = '{} wal-push --config {} %p'\n{extra_conf}",
                bin("bascule-agent").display(),
                dir.path().join("agent.yaml").display()
            )
        } else {
            String::new()
        };
        let pg = PgCluster::start_with(&conf);
        let (a, b) = if local {
            (Garage::local("provider-a"), Garage::local("provider-b"))
        } else {
            (Garage::start("provider-a"), Garage::start("provider-b"))
        };
        pg.createdb("mairie");
        pg.psql("mairie", TOWN_HALL_SCHEMA);
        pg.psql(
            "mairie",
            &format!(
                "INSERT INTO citoyens (nom, prenom, commune, naissance, infos)
                   SELECT 'Lefèvre-' || g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'Zoé ' || g END, 'Saint-Étienne-de-Crossey',
                          date '1950-01-01' + (g % 20000), jsonb_build_object('n', g, 'vœux', 'année ' || g, 'ø', NULL)
                   FROM generate_series(1, {rows}) g;
                 INSERT INTO actes (citoyen, nature, statut, signe_le, piece, note)
                   SELECT 1 + g % {rows}, 'naissance', (ARRAY['brouillon','validé','archivé']::statut[])[1 + g % 3],
                          timestamptz '2020-01-01' + (g || ' minutes')::interval, decode(md5(g::text), 'hex'),
                          CASE WHEN g % 5 = 0 THEN NULL ELSE repeat('Délibération n°' || g || ' du conseil municipal. ', 1 + g % 4) END
                   FROM generate_series(1, {rows} * 2) g;
                 SELECT lo_from_bytea(0, convert_to('registre d''état civil scanné — 1892', 'UTF8'));"
            ),
        );
        pg.psql("mairie", "VACUUM ANALYZE");
        let agent_key = dir.path().join("agent.key");
        let verify_key = ok(Command::new(bin("bascule-agent")).arg("keygen").arg("--out").arg(&agent_key)).trim().to_string();
        let recipient =
            ok(Command::new(bin("bascule-agent")).arg("new-identity").arg("--out").arg(dir.path().join("customer.key"))).trim().to_string();
        let s = Scenario { pg, a, b, dir, tenant: "mairie-exemple".into(), recipient, verify_key, archiving };
        s.write_configs("");
        if crate::is_root() {
            // the agent runs as the database's account, as on a real server
            ok(Command::new("chown").args(["-R", "postgres"]).arg(s.dir.path()));
            if local {
                for p in [&s.a, &s.b] {
                    std::fs::create_dir_all(p.local_root("fleet")).unwrap();
                    ok(Command::new("chown").args(["-R", "postgres"]).arg(p.local_root("fleet").parent().unwrap().parent().unwrap()));
                }
            }
        }
        s
    }

    /// The WAL spool of the agent.
    pub fn spool(&self) -> PathBuf {
        self.path("wal-spool")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// (Re)writes agent.yaml and controller.yaml; `upload` is extra YAML for
    /// the agent's `upload:` section (e.g. a bandwidth cap).
    pub fn write_configs(&self, upload: &str) {
        let d = self.dir.path();
        let providers = format!("{}{}", self.a.provider_yaml(d, "fleet"), self.b.provider_yaml(d, "fleet"));
        write(
            &self.path("agent.yaml"),
            &format!(
                "tenant: {t}\nkey_file: {k}\nstate_dir: {s}\nrecipients: [{r}]\nproviders:\n{providers}upload:\n  concurrency: 8\n{upload}jobs:\n  - name: nightly\n    schedule: \"30 1 * * *\"\n    source:\n      type: pg_dump\n      dsn: \"{dsn}\"\n      pg_dump: {pg_dump}\n{wal}",
                t = self.tenant,
                k = d.join("agent.key").display(),
                s = d.join("agent-state").display(),
                r = self.recipient,
                dsn = self.pg.dsn("mairie"),
                pg_dump = self.pg.tool("pg_dump").display(),
                wal = if self.archiving {
                    format!(
                        "  - name: base\n    schedule: \"0 3 * * *\"\n    source:\n      type: pg_basebackup\n      dsn: \"{}\"\n      pg_basebackup: {}\nwal:\n  spool_dir: {}\n  rescan_interval: 2s\nheartbeat:\n  dsn: \"{}\"\n  interval: 1s\n",
                        self.pg.dsn("postgres"),
                        self.pg.tool("pg_basebackup").display(),
                        d.join("wal-spool").display(),
                        self.pg.dsn("mairie"),
                    )
                } else {
                    String::new()
                },
            ),
        );
        write(
            &self.path("controller.yaml"),
            &format!(
                "state_dir: {s}\nproviders:\n{providers}restore:\n  concurrency: 8\n  pg_restore: {pr}\n  pg_bindir: {bindir}\ntenants:\n  - name: {t}\n    verify_keys: [\"{v}\"]\n",
                s = d.join("controller-state").display(),
                pr = self.pg.tool("pg_restore").display(),
                bindir = self.pg.bindir.display(),
                t = self.tenant,
                v = self.verify_key,
            ),
        );
    }

    /// A `bascule-agent` command, run as the database's account when the
    /// tests run as root (through `setpriv`, which execs: a kill reaches the agent).
    pub fn agent(&self, args: &[&str]) -> Command {
        self.agent_with(&self.path("agent.yaml"), args)
    }

    /// `bascule-agent snapshot --job nightly`.
    pub fn snapshot(&self) -> Output {
        run(self.agent(&["snapshot", "--job", "nightly"]).env("RUST_LOG", "info"))
    }

    pub fn controller(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("bascule-controller"));
        c.args(args).arg("--config").arg(self.path("controller.yaml")).args(["--tenant", &self.tenant]);
        c
    }

    /// Restores `snapshot` into a new database `db`.
    pub fn restore(&self, snapshot: &str, db: &str, identity: &Path) -> Output {
        self.pg.createdb(db);
        run(self.controller(&["restore", "--snapshot", snapshot]).arg("--identity").arg(identity).args(["--target", &self.pg.dsn(db)]))
    }

    /// The value of `name=…` in a command's log (the agent's "Export finished" line).
    pub fn log_field(out: &Output, name: &str) -> String {
        let t = crate::text(out);
        let prefix = format!("{name}=");
        t.split_whitespace().find_map(|w| w.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {name} in:\n{t}")).to_string()
    }

    /// `new_bytes=N`: what an export sent.
    pub fn new_bytes(out: &Output) -> u64 {
        Self::log_field(out, "new_bytes").parse().unwrap()
    }

    pub fn snapshot_name(out: &Output) -> String {
        Self::log_field(out, "snapshot")
    }

    /// Restores the latest snapshot into a new database `db` with the
    /// customer's identity; asserts it succeeds and holds exactly the source's data.
    pub fn assert_restores_identically(&self, db: &str) -> Output {
        let r = self.restore("latest", db, &self.path("customer.key"));
        assert!(r.status.success(), "restore failed:\n{}", crate::text(&r));
        assert_eq!(self.pg.data_fingerprint("mairie"), self.pg.data_fingerprint(db), "restored data differs");
        r
    }

    /// A provider of this scenario, for tests that tamper with stored objects.
    pub fn provider(&self, which: &Garage) -> bascule_core::provider::Replica {
        let cfg: bascule_core::provider::ProviderConfig = serde_yaml_provider(&which.provider_yaml(self.dir.path(), "fleet"));
        bascule_core::provider::Provider::build(&cfg, Path::new("test")).unwrap().tenant(&self.tenant)
    }
}

fn serde_yaml_provider(entry: &str) -> bascule_core::provider::ProviderConfig {
    // the entry is a YAML list item; parse it as a one-element list
    let list: Vec<bascule_core::provider::ProviderConfig> =
        bascule_core::config::parse_yaml(entry, Path::new("test")).expect("provider entry parses");
    list.into_iter().next().unwrap()
}
