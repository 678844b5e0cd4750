#!/usr/bin/env bash
# The spine's benchmark (not a test): bascule against the pipeline a user
# would script instead, on the same database in the same run, as ratios.
#   ./scripts/bench.sh [PGBENCH_SCALE]     (default 50)
# Installs what it compares against when missing: rclone, restic, GNU time,
# age, zstd (Debian packages), plus what the tests need (see test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SUDO=()
if [ "$(id -u)" != 0 ]; then SUDO=(sudo); fi
missing=()
for t in rclone restic age zstd; do command -v $t >/dev/null || missing+=($t); done
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  "${SUDO[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v garage >/dev/null || cargo install --locked garage --version 2.5.0
cargo build --release --workspace --bins
exec ./target/release/bench "${1:-50}"
