#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), or the TARGETs named:
#   ./scripts/fuzz.sh 600            # ten minutes each
#   ./scripts/fuzz.sh 60 index sealed
# A failure is shrunk, kept under tests/data/fuzz-regressions/<target>/ (the
# test suite replays it from then on) and makes the exit status 1.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -q -p bascule-tests --bin fuzz
exec target/release/fuzz "$@"
