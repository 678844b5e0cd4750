#!/usr/bin/env bash
# Runs bascule's whole test suite, installing what it needs when missing:
# the PostgreSQL server, the age, zstd, jq, faketime and time command-line tools, Chromium
# (for the drill report's rendering test), promtool (Debian packages),
# Garage (the S3 server that stands for each provider), cargo-deb and cargo-nextest.
# Needs root (or sudo) only for what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

SUDO=()
if [ "$(id -u)" != 0 ]; then SUDO=(sudo); fi

have_pg_server() {
  local bindir
  bindir=$(pg_config --bindir 2>/dev/null || true)
  [ -n "$bindir" ] && [ -x "$bindir/initdb" ] && [ -x "$bindir/postgres" ] && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

missing=()
have_pg_server || missing+=(postgresql postgresql-client)
command -v age >/dev/null || missing+=(age)
command -v zstd >/dev/null || missing+=(zstd)
command -v jq >/dev/null || missing+=(jq)
command -v faketime >/dev/null || missing+=(faketime)
command -v chromium >/dev/null || missing+=(chromium)
command -v curl >/dev/null || missing+=(curl)
[ -x /usr/bin/time ] || missing+=(time)
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  "${SUDO[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian's postgresql package may start a cluster of its own; the tests start theirs.

if ! command -v garage >/dev/null; then
  echo "==> installing Garage (S3 server for the tests; builds from source, several minutes)"
  cargo install --locked garage --version 2.5.0
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "==> installing cargo-deb (builds the Debian packages the tests install)"
  cargo install --locked cargo-deb --version 3.8.0
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "==> building"
cargo build --workspace --bins --tests
echo "==> testing"
cargo nextest run --workspace --no-fail-fast "$@"
