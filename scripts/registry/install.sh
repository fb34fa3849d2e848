#!/usr/bin/env bash
# Prints the path of an OCI distribution registry binary (`docker-registry`, the CNCF
# distribution registry) for the tests, installing it first when missing.
#
# The registry is packaged by Debian (`docker-registry`, distribution 2.8 on bookworm),
# so it comes from apt: as root (CI, containers) this installs it; otherwise it fails
# and prints the one command to run. It never skips silently. The package's service is
# not wanted: the install runs behind a policy-rc.d that forbids starting services
# (unless one is already in place), and a server the install started anyway is
# stopped, so nothing is left listening on 5000. Each test starts its own registry on a
# free port of 127.0.0.1 with its storage in a temporary directory
# (testkit/src/registry.rs). Progress goes to stderr; stdout is only the path.
set -euo pipefail

found() {
    if command -v docker-registry >/dev/null 2>&1; then
        command -v docker-registry
    elif [ -x /usr/bin/docker-registry ]; then
        echo /usr/bin/docker-registry
    else
        return 1
    fi
}

if found; then
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "docker-registry (the OCI distribution registry) is not installed and this is not root; install it with:" >&2
    echo "    sudo apt-get install docker-registry" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "docker-registry is not installed and there is no apt-get here; install the CNCF distribution registry (2.8 or later) and put \`docker-registry\` on PATH" >&2
    exit 1
fi

# One install at a time (concurrent test binaries may all get here).
exec 9>/var/lock/tenon-registry-install.lock
flock 9
if found; then
    exit 0
fi

log="$(mktemp /tmp/tenon-registry-install.XXXXXX.log)"
run() { "$@" >>"$log" 2>&1 || { echo "docker-registry install failed; see $log:" >&2; tail -30 "$log" >&2; exit 1; }; }

# invoke-rc.d and deb-systemd-invoke ask policy-rc.d whether to start a service:
# 101 means no. Put one in place for the install unless there already is one.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Temporary, from scripts/registry/install.sh.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if [ -n "$own_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

echo "docker-registry install: apt-get install docker-registry (Debian package; log in $log)" >&2
run apt-get update
run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-registry

# Should a service have started all the same, stop it: the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
    echo "docker-registry install: stopping the docker-registry service the package started" >&2
    systemctl stop docker-registry >>"$log" 2>&1 || true
    systemctl disable docker-registry >>"$log" 2>&1 || true
elif command -v service >/dev/null 2>&1 && service docker-registry status >/dev/null 2>&1; then
    echo "docker-registry install: stopping the docker-registry service the package started" >&2
    service docker-registry stop >>"$log" 2>&1 || true
fi

if ! bin="$(found)" || ! "$bin" --version >>"$log" 2>&1; then
    echo "docker-registry install failed: no working docker-registry after apt-get install; see $log" >&2
    exit 1
fi
echo "$bin"
