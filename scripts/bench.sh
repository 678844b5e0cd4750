#!/usr/bin/env bash
# Benchmarks (not tests): bascule against what a user would use instead, on
# the same database in the same run, as ratios (the machine may be noisy).
#   ./scripts/bench.sh [PGBENCH_SCALE]        nightly exports: throughput, restore, memory, bytes sent
#   ./scripts/bench.sh wal [PGBENCH_SCALE]    continuous archiving: TPS, archive lag, base backup, PITR
#   ./scripts/bench.sh standby [PGBENCH_SCALE]  failover: site B rebuilt vs its warm standby promoted (default 100)
#   ./scripts/bench.sh mixed [MEGABYTES]      a realistic database (default 2000: about 1 GiB of dump): export vs its
#                                             floor, restore vs the hand pipeline and pg_restore -j 2
#   ./scripts/bench.sh memory [GIB…]          the agent's peak RSS on synthetic streams of these sizes (default 2 and
#                                             20 GiB), first night (all new) and second (all known)
#   ./scripts/bench.sh fleet [TENANTS]        the controller on a PostgreSQL state, one replica then three (default
#                                             35000 tenants): cycles, CPU, memory, takeover, the nightly prune
# BASCULE_BENCH_KEEP=DIR keeps the three nights' dumps in DIR.
# Default scale 50. Installs what it compares against when missing (rclone,
# restic, GNU time, pgbackrest, age, zstd from Debian's packages), plus what
# the tests need (see test.sh). Run as root for `wal` (PostgreSQL and
# pgBackRest run as `postgres`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bench=bench
if [ "${1:-}" = wal ]; then bench=bench_wal; shift; fi
if [ "${1:-}" = standby ]; then bench=bench_standby; shift; set -- "${1:-100}"; fi
if [ "${1:-}" = mixed ]; then bench=bench_mixed; shift; set -- "${1:-2000}"; fi
if [ "${1:-}" = memory ]; then bench=bench_memory; shift; [ $# -gt 0 ] || set -- 2 20; fi
if [ "${1:-}" = fleet ]; then bench=bench_fleet; shift; set -- "${1:-35000}"; fi
SUDO=()
if [ "$(id -u)" != 0 ]; then SUDO=(sudo); fi
missing=()
for t in rclone restic age zstd pgbackrest; do command -v $t >/dev/null || missing+=($t); done
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  "${SUDO[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v garage >/dev/null || cargo install --locked garage --version 2.5.0
cargo build --release --workspace --bins
[ $# -gt 0 ] || set -- 50
exec ./target/release/$bench "$@"
