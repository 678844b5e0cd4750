#!/usr/bin/env bash
# The whole job on embedded defaults, end to end:
#   a throwaway PostgreSQL (from this machine's binaries) with a sample town-hall
#   database, two local-directory providers, an agent key and a customer key;
#   then the quickstart drill (runbooks/quickstart.yaml): nightly export ->
#   keyless verify -> restore with the customer's key -> row counts against the
#   export's manifest, with RTO and RPO against the 4-hour target and a report;
#   finally a data-only comparison of source and restored databases.
# Everything lives in one temporary directory, removed at the end
# (set BASCULE_KEEP=1 to keep it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

find_pgbin() {
  local b
  b=$(pg_config --bindir 2>/dev/null || true)
  if [ -n "$b" ] && [ -x "$b/initdb" ]; then echo "$b"; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}
PGBIN=${PGBIN:-$(find_pgbin)}
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing the PostgreSQL server (apt-get install postgresql)"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql postgresql-client
    PGBIN=$(find_pgbin)
  else
    echo "error: PostgreSQL server binaries not found (initdb). Install them: sudo apt-get install postgresql" >&2
    exit 1
  fi
fi

# BASCULE_BIN_DIR: binaries already built (the test suite runs this script
# with its own); otherwise a release build
if [ -n "${BASCULE_BIN_DIR:-}" ]; then
  BIN=$BASCULE_BIN_DIR
else
  echo "==> building bascule (release)"
  cargo build --release --quiet --bin bascule-agent --bin bascule-controller
  BIN=$ROOT/target/release
fi
AGENT=$BIN/bascule-agent
CONTROLLER=$BIN/bascule-controller

WORK=$(mktemp -d /tmp/bascule-quickstart.XXXXXX)
chmod 755 "$WORK"
PGDATA=$WORK/pgdata
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi   # initdb refuses to run as root

cleanup() {
  "${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
  if [ -z "${BASCULE_KEEP:-}" ]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT

echo "==> starting a throwaway PostgreSQL on 127.0.0.1:$PORT"
mkdir -p "$PGDATA" && [ ${#AS[@]} -eq 0 ] || chown postgres "$PGDATA" "$WORK"
"${AS[@]}" "$PGBIN/initdb" -D "$PGDATA" -U bascule -A trust --no-sync >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off" -l "$WORK/pg.log" -w start >/dev/null
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U bascule)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE mairie" -c "CREATE DATABASE restored"
"${PSQL[@]}" -d mairie <<'SQL'
CREATE TYPE statut AS ENUM ('brouillon', 'validé', 'archivé');
CREATE TABLE citoyens (id serial PRIMARY KEY, nom text NOT NULL, prenom text, commune text, naissance date, infos jsonb);
CREATE TABLE actes (id bigserial PRIMARY KEY, citoyen int REFERENCES citoyens, nature text, statut statut, signe_le timestamptz, piece bytea);
INSERT INTO citoyens (nom, prenom, commune, naissance, infos)
  SELECT 'Lefèvre-' || g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'Zoé ' || g END, 'Saint-Étienne-de-Crossey',
         date '1950-01-01' + (g % 20000), jsonb_build_object('n', g, 'vœux', 'année ' || g)
  FROM generate_series(1, 50000) g;
INSERT INTO actes (citoyen, nature, statut, signe_le, piece)
  SELECT 1 + g % 50000, 'naissance', (ARRAY['brouillon','validé','archivé']::statut[])[1 + g % 3],
         now() - (g || ' minutes')::interval, decode(md5(g::text), 'hex')
  FROM generate_series(1, 100000) g;
CREATE VIEW actes_valides AS SELECT * FROM actes WHERE statut = 'validé';
SELECT lo_from_bytea(0, convert_to('registre scanné', 'UTF8'));
SQL

echo "==> keys: the agent's signing key, the customer's age identity"
"$AGENT" keygen --out "$WORK/agent.key" > "$WORK/verify.pub" 2>/dev/null
# the customer's key (age-keygen does the same); it stays with the customer
RECIPIENT=$("$AGENT" new-identity --out "$WORK/customer.key" 2>/dev/null)

cat > "$WORK/agent.yaml" <<YAML
tenant: mairie-exemple
key_file: $WORK/agent.key
state_dir: $WORK/agent-state
recipients: [$RECIPIENT]
providers:
  - { name: provider-a, url: "file://$WORK/provider-a" }
  - { name: provider-b, url: "file://$WORK/provider-b" }
jobs:
  - name: nightly
    schedule: "30 1 * * *"
    source: { type: pg_dump, dsn: "host=127.0.0.1 port=$PORT user=bascule dbname=mairie", pg_dump: $PGBIN/pg_dump }
YAML
cat > "$WORK/controller.yaml" <<YAML
state_dir: $WORK/controller-state
providers:
  - { name: provider-a, url: "file://$WORK/provider-a" }
  - { name: provider-b, url: "file://$WORK/provider-b" }
restore: { pg_restore: $PGBIN/pg_restore }
tenants:
  - { name: mairie-exemple, verify_keys: [$(cat "$WORK/verify.pub")] }
YAML

echo "==> first night's export (agent)"
"$AGENT" snapshot --config "$WORK/agent.yaml" --job nightly
echo "==> a day of activity at the town hall"
"${PSQL[@]}" -d mairie -c "INSERT INTO actes (citoyen, nature, statut, signe_le) SELECT 1 + g % 50000, 'mariage', 'validé', now() FROM generate_series(1, 1000) g" \
  -c "UPDATE citoyens SET commune = 'Voiron' WHERE id > 49500"

echo "==> the drill (runbooks/quickstart.yaml): next night's export, keyless verify, restore, checks"
export PATH="$BIN:$PATH"
set +e
"$CONTROLLER" drill run --config "$WORK/controller.yaml" runbooks/quickstart.yaml \
  --var agent_config="$WORK/agent.yaml" --var controller_config="$WORK/controller.yaml" \
  --var tenant=mairie-exemple --var identity="$WORK/customer.key" \
  --var scratch_port="$PORT"
DRILL=$?
set -e
mkdir -p "$ROOT/target/quickstart"
ID=$("$CONTROLLER" drill list --config "$WORK/controller.yaml" | awk 'NR == 2 { print $1 }')
for f in html md json; do
  "$CONTROLLER" drill report --config "$WORK/controller.yaml" "$ID" --format $f --output "$ROOT/target/quickstart/drill-report.$f"
done
echo "==> drill report: $ROOT/target/quickstart/drill-report.html (and .md, .json)"
[ "$DRILL" = 0 ] || { echo "error: the drill did not pass" >&2; exit 1; }

echo "==> what the town hall sees: is my backup working? (bascule-agent status)"
"$AGENT" status --config "$WORK/agent.yaml"
echo "==> what the vendor sees, without any key"
"$CONTROLLER" snapshots --config "$WORK/controller.yaml" --tenant mairie-exemple
dump() { "$PGBIN/pg_dump" -h 127.0.0.1 -p "$PORT" -U bascule --data-only --no-owner -d "$1" | grep -v -e "^--" -e "^\\\\restrict" -e "^\\\\unrestrict" | sort > "$WORK/$1.sql"; sha256sum < "$WORK/$1.sql"; }
if [ "$(dump mairie)" = "$(dump restored)" ]; then
  echo "==> data-only dumps of source and restored databases are identical"
else
  echo "error: source and restored databases differ:" >&2; diff "$WORK/mairie.sql" "$WORK/restored.sql" | head -20 >&2
  exit 1
fi
echo "==> escape hatch: any object opens with the stock tools"
# the first chunk of the first snapshot: the sealed index says where it lies
if command -v age >/dev/null && command -v zstd >/dev/null; then
  T="$WORK/provider-a/mairie-exemple"
  MANS=("$T"/snapshots/*.manifest)
  age -d -i "$WORK/customer.key" < "${MANS[0]%.manifest}.index" | zstd -d -q > "$WORK/index.json"
  read -r PACK AT SEG < <(python3 -c '
import json, sys
tenant, manifest, index, out = sys.argv[1:]
m = json.loads(open(manifest, "rb").read().split(b"\n\n", 1)[1])   # the body after the signed header
ix = json.load(open(index)); s = ix["segments"][ix["extents"][0]["segment"]]
pack = m["objects"][s["pack"]]["key"]
with open(f"{tenant}/{pack}", "rb") as f:
    f.seek(s["at"]); open(out, "wb").write(f.read(s["len"]))
print(pack, s["at"], s["len"])' "$T" "${MANS[0]}" "$WORK/index.json" "$WORK/segment.age")
  age -d -i "$WORK/customer.key" < "$WORK/segment.age" | zstd -d -q > "$WORK/segment.bin"
  echo "    age -d -i customer.key < snapshots/….index | zstd -d   -> the index: segments, extents (index.json)"
  echo "    tail -c +$((AT + 1)) $PACK | head -c $SEG | age -d -i customer.key | zstd -d"
  echo "    -> $(stat -c %s "$WORK/segment.bin") bytes of pg_dump stream, starting with: $(head -c 5 "$WORK/segment.bin")"
else
  echo "    (install the age and zstd command-line tools to try it: apt-get install age zstd)"
fi
echo "quickstart: OK"
