//! A realistic town-hall database for the benchmarks, built deterministically
//! (the same bytes on every run): text with accents, jsonb, bytea, numeric,
//! timestamps, an enum, foreign keys and several indexes per table, GIN
//! included, so that a restore's index builds count as they do for real.
//! pgbench's tables, by contrast, compress unrealistically well and carry one
//! index each.
use crate::PgCluster;

/// Creates `db` holding about `megabytes` MB of `pg_dump -Fc -Z0` output.
pub fn load_mixed(pg: &PgCluster, db: &str, megabytes: u32) {
    pg.createdb(db);
    let (habitants, actes, factures) = (1_000 * megabytes as u64, 1_100 * megabytes as u64, 280 * megabytes as u64);
    eprintln!("bench: loading the mixed dataset ({habitants} habitants, {actes} actes, {factures} factures)");
    pg.psql(db, &format!(
        "CREATE TYPE statut_acte AS ENUM ('brouillon', 'validé', 'signé', 'archivé');
         CREATE TABLE mots (i int PRIMARY KEY, nom text NOT NULL, prenom text NOT NULL, lieu text NOT NULL);
         INSERT INTO mots SELECT i - 1,
             (ARRAY['Lefèvre','Dupré','Bérard','Noël','Gaël','Mercier','Lemaître','Héraud','Chênevière','Aubépin','Fénelon','Dœuvre','Lécuyer','Pâris','Garçon','Forêt','Évrard','Moïse'])[i],
             (ARRAY['Zoé','Chloé','Françoise','Hélène','Jérôme','Loïc','Maëlle','Anaïs','Cécile','Édouard','Ève','Ophélie','Gaëtan','Noémie','Raphaël','Inès','Léa','Benoît'])[i],
             (ARRAY['Crossey','Écully','Vénissieux','Sèvres','Orléans','Besançon','Nîmes','Angoulême','Périgueux','Pontoise','Sète','Compiègne','Béziers','Montélimar','Châlons','Épinal','Mâcon','Carhaix'])[i]
           FROM generate_series(1, 18) i;
         CREATE TABLE communes (id int PRIMARY KEY, insee char(5) UNIQUE NOT NULL, nom text NOT NULL, departement text NOT NULL,
                                population int NOT NULL, geo jsonb NOT NULL);
         INSERT INTO communes SELECT g, lpad(g::text, 5, '0'), 'Saint-' || a.lieu || '-lès-' || b.lieu, lpad((1 + g % 95)::text, 2, '0'),
                g * 37 % 90000 + 80, jsonb_build_object('lat', 42 + (g % 900) / 100.0, 'lon', -4 + (g % 1200) / 100.0, 'canton', 'Canton de ' || b.lieu)
           FROM generate_series(1, 35000) g JOIN mots a ON a.i = g % 18 JOIN mots b ON b.i = (g / 18) % 18;
         CREATE TABLE habitants (id bigint PRIMARY KEY, commune_id int NOT NULL, nom text NOT NULL, prenom text, naissance date NOT NULL,
                                 adresse text NOT NULL, email text, infos jsonb NOT NULL, cree_le timestamptz NOT NULL);
         INSERT INTO habitants SELECT g, 1 + g::bigint * 7919 % 35000, n.nom || '-' || p.nom, CASE WHEN g % 11 = 0 THEN NULL ELSE p.prenom END,
                date '1930-01-01' + (g * 31 % 33000), g % 300 || ', rue de l''Église, ' || l.lieu,
                CASE WHEN g % 4 = 0 THEN NULL ELSE lower(p.prenom) || '.' || g || '@mairie-' || lower(l.lieu) || '.fr' END,
                jsonb_build_object('foyer', g % 7, 'vœux', 'année ' || (2000 + g % 26), 'quartier', l.lieu, 'électeur', g % 3 > 0),
                timestamptz '2015-01-01 08:00+01' + (g * 97 % 300000000) * interval '1 second'
           FROM generate_series(1, {habitants}) g JOIN mots n ON n.i = g % 18 JOIN mots p ON p.i = (g / 18) % 18 JOIN mots l ON l.i = (g / 324) % 18;
         CREATE TABLE actes (id bigint PRIMARY KEY, habitant_id bigint NOT NULL, nature text NOT NULL, statut statut_acte NOT NULL,
                             montant numeric(12, 2), signe_le timestamptz NOT NULL, piece bytea NOT NULL, texte text);
         INSERT INTO actes SELECT g, 1 + g::bigint * 104729 % {habitants}, (ARRAY['naissance','mariage','décès','reconnaissance','PACS'])[1 + g % 5],
                (ARRAY['brouillon','validé','signé','archivé']::statut_acte[])[1 + g % 4], CASE WHEN g % 3 = 0 THEN NULL ELSE (g % 100000) / 100.0 END,
                timestamptz '2010-01-01 09:00+01' + (g * 61 % 500000000) * interval '1 second', decode(md5(g::text), 'hex') || decode(md5((g + 1)::text), 'hex'),
                'Délibération n°' || g || ' du conseil municipal de ' || l.lieu || ' : ' || repeat('considérant l''intérêt général, ', 1 + g % 3)
           FROM generate_series(1, {actes}) g JOIN mots l ON l.i = g % 18;
         CREATE TABLE factures (id bigint PRIMARY KEY, commune_id int NOT NULL, montant numeric(14, 2) NOT NULL, lignes jsonb NOT NULL,
                                emise_le date NOT NULL, payee boolean NOT NULL);
         INSERT INTO factures SELECT g, 1 + g * 31 % 35000, (g * 7 % 10000000) / 100.0,
                jsonb_build_array(jsonb_build_object('libellé', 'Cantine — ' || l.lieu, 'qté', 1 + g % 20, 'pu', 3.25),
                                  jsonb_build_object('libellé', 'Périscolaire', 'qté', g % 5, 'pu', 1.5)),
                date '2018-01-01' + g % 3000, g % 6 > 0
           FROM generate_series(1, {factures}) g JOIN mots l ON l.i = g % 18;
         ALTER TABLE habitants ADD FOREIGN KEY (commune_id) REFERENCES communes;
         ALTER TABLE actes ADD FOREIGN KEY (habitant_id) REFERENCES habitants;
         ALTER TABLE factures ADD FOREIGN KEY (commune_id) REFERENCES communes;
         CREATE INDEX ON habitants (commune_id);
         CREATE INDEX ON habitants (nom, prenom);
         CREATE INDEX ON habitants USING gin (infos jsonb_path_ops);
         CREATE INDEX ON actes (habitant_id);
         CREATE INDEX ON actes (signe_le);
         CREATE INDEX ON actes (nature, statut);
         CREATE INDEX ON factures (commune_id, emise_le);
         CREATE INDEX ON factures (emise_le) WHERE NOT payee;"
    ));
    pg.psql(db, "VACUUM ANALYZE");
}
