#!/usr/bin/env bash
# The continuous-archiving benchmark (not a test): TPS with bascule archiving
# vs /bin/true and pgBackRest, archive lag, base backup throughput, PITR time.
#   ./scripts/bench-wal.sh [PGBENCH_SCALE]     (default 50)
# Installs what it compares against when missing (pgbackrest, rclone, age,
# zstd), plus what the tests need (see test.sh). Run as root (it runs
# PostgreSQL and pgBackRest as `postgres`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SUDO=()
if [ "$(id -u)" != 0 ]; then SUDO=(sudo); fi
missing=()
for t in pgbackrest rclone age zstd; do command -v $t >/dev/null || missing+=($t); done
if [ ${#missing[@]} -gt 0 ]; then
  "${SUDO[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v garage >/dev/null || cargo install --locked garage --version 2.5.0
cargo build --release --workspace --bins
exec ./target/release/bench_wal "${1:-50}"
