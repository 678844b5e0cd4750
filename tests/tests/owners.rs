//! Owners and privileges survive a restore: the restored database's
//! `pg_dump --schema-only` (owners, grants, default privileges, comments)
//! is the source's; a target that lacks a role is told which to create
//! before anything is restored; `--no-owner --no-privileges` restores
//! there all the same.
use bascule_tests::{ok, run, text, PgCluster, Scenario};

const ROLES_AND_GRANTS: &str = "
    CREATE ROLE greffier NOLOGIN;
    CREATE ROLE \"Lecteur Élu\" NOLOGIN;
    CREATE ROLE accueil NOLOGIN;
    CREATE SCHEMA etat_civil AUTHORIZATION greffier;
    CREATE TABLE etat_civil.registre (id int PRIMARY KEY, acte text);
    INSERT INTO etat_civil.registre SELECT g, 'acte ' || g FROM generate_series(1, 40) g;
    ALTER TABLE etat_civil.registre OWNER TO greffier;
    ALTER TABLE citoyens OWNER TO greffier;
    GRANT USAGE ON SCHEMA etat_civil TO \"Lecteur Élu\";
    GRANT SELECT ON etat_civil.registre TO \"Lecteur Élu\";
    GRANT SELECT (nom), UPDATE (nom) ON citoyens TO accueil;
    REVOKE ALL ON actes FROM PUBLIC;
    ALTER DEFAULT PRIVILEGES FOR ROLE greffier IN SCHEMA etat_civil GRANT SELECT ON TABLES TO \"Lecteur Élu\";
    CREATE FUNCTION etat_civil.age(d date) RETURNS int LANGUAGE sql AS 'SELECT extract(year FROM age(d))::int';
    ALTER FUNCTION etat_civil.age(date) OWNER TO greffier;
    REVOKE EXECUTE ON FUNCTION etat_civil.age(date) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION etat_civil.age(date) TO accueil;
    COMMENT ON TABLE etat_civil.registre IS 'Registre des actes — tenu par le greffe';
";

#[test]
fn owners_and_privileges_survive_and_a_missing_role_is_named_before_anything_is_restored() {
    let s = Scenario::start_local(30);
    s.pg.psql("mairie", ROLES_AND_GRANTS);
    let snap = s.snapshot();
    assert!(snap.status.success(), "{}", text(&snap));

    // same server: every role is there, owners and privileges come back
    s.assert_restores_identically("copie");
    assert_eq!(s.pg.schema_with_owners("copie"), s.pg.schema_with_owners("mairie"));
    assert_eq!(s.pg.psql("copie", "SELECT tableowner FROM pg_tables WHERE tablename = 'registre'"), "greffier");

    // another server without those roles: refused before anything is
    // restored, naming the roles to create
    let other = PgCluster::start();
    other.createdb("ailleurs");
    let key = s.path("customer.key");
    let restore = |extra: &[&str]| {
        let mut c = s.controller(&["restore", "--snapshot", "latest"]);
        c.arg("--identity").arg(&key).args(["--target", &other.dsn("ailleurs")]).args(extra);
        run(&mut c)
    };
    let o = restore(&[]);
    assert!(!o.status.success(), "{}", text(&o));
    for want in [
        "lacks 3 role(s)",
        "Lecteur Élu, accueil, greffier",
        "Nothing was restored",
        "CREATE ROLE \"Lecteur Élu\"; CREATE ROLE \"accueil\"; CREATE ROLE \"greffier\";",
        "--no-owner",
    ] {
        assert!(text(&o).contains(want), "no {want:?} in\n{}", text(&o));
    }
    assert_eq!(other.psql("ailleurs", "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"), "0");

    // privileges left out: the owner is still missing
    let o = restore(&["--no-privileges"]);
    assert!(
        !o.status.success() && text(&o).contains("lacks 1 role(s) this export's objects are owned by or granted to: greffier."),
        "{}",
        text(&o)
    );
    // neither: restored, owned by the target's role, data identical
    let o = restore(&["--no-owner", "--no-privileges"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("identical to the export"), "{}", text(&o));
    assert_eq!(other.psql("ailleurs", "SELECT tableowner FROM pg_tables WHERE tablename = 'registre'"), "bascule");
    assert_eq!(other.data_fingerprint("ailleurs"), s.pg.data_fingerprint("mairie"));
    // roles named otherwise there: mapped, owners and privileges follow
    other.psql("postgres", "CREATE ROLE gestion; CREATE ROLE lecture");
    other.createdb("renomme");
    let mut c = s.controller(&["restore", "--snapshot", "latest"]);
    c.arg("--identity").arg(&key).args(["--target", &other.dsn("renomme")]);
    c.args(["--map-role", "greffier=gestion", "--map-role", "Lecteur Élu=lecture", "--map-role", "accueil=lecture"]);
    let o = run(&mut c);
    assert!(o.status.success(), "{}", text(&o));
    let renamed =
        s.pg.schema_with_owners("mairie")
            .replace("\"Lecteur Élu\"", "lecture")
            .replace("greffier", "gestion")
            .replace("accueil", "lecture");
    assert_eq!(other.schema_with_owners("renomme"), renamed);
    let o = run(s
        .controller(&["restore", "--snapshot", "latest", "--map-role", "greffier"])
        .arg("--identity")
        .arg(&key)
        .args(["--target", &other.dsn("renomme")]));
    assert!(!o.status.success() && text(&o).contains("expected OLD=NEW"), "{}", text(&o));

    // the roles created, a plain restore keeps everything there too
    other.psql("postgres", "CREATE ROLE greffier; CREATE ROLE \"Lecteur Élu\"; CREATE ROLE accueil");
    other.createdb("fidele");
    let mut c = s.controller(&["restore", "--snapshot", "latest"]);
    c.arg("--identity").arg(&key).args(["--target", &other.dsn("fidele")]);
    ok(&mut c);
    assert_eq!(other.schema_with_owners("fidele"), s.pg.schema_with_owners("mairie"));
}
