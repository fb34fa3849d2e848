#!/usr/bin/env bash
# Usage: apt-server.sh <package> <binary> <description>
#
# Prints the path of <binary>, a server Debian packages as <package>, installing the
# package first when missing: the servers the tests need that only Debian ships
# (prometheus, docker-registry). As root (CI, containers) it installs with apt;
# otherwise it fails and prints the one command to run. It never skips silently.
#
# The package's service is not wanted (each test starts its own server on a free port
# of 127.0.0.1): the install runs behind a policy-rc.d that forbids starting services
# (unless one is already in place), and a service the install started anyway is
# stopped and disabled. One install at a time (concurrent test binaries may all get
# here, for this package or another). Progress goes to stderr; stdout is only the path.
set -euo pipefail

package=${1:?usage: apt-server.sh <package> <binary> <description>}
binary=${2:?usage: apt-server.sh <package> <binary> <description>}
description=${3:-$package}

found() {
    if command -v "$binary" >/dev/null 2>&1; then
        command -v "$binary"
    elif [ -x "/usr/bin/$binary" ]; then
        echo "/usr/bin/$binary"
    else
        return 1
    fi
}

if found; then
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "$binary ($description) is not installed and this is not root; install it with:" >&2
    echo "    sudo apt-get install $package" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$binary is not installed and there is no apt-get here; install $description and put \`$binary\` on PATH" >&2
    exit 1
fi

# One lock for every package: apt takes one install at a time, and two of ours
# (prometheus and docker-registry, asked for by tests running side by side) would
# otherwise fail on dpkg's lock. For an apt we did not start (apt-daily), `install`
# waits for dpkg's lock; `update` does not wait for the lists' lock, so it is tried
# again a few times.
exec 9>"/var/lock/tenon-apt-install.lock"
flock 9
if found; then
    exit 0
fi

log="$(mktemp "/tmp/tenon-$package-install.XXXXXX.log")"
run() { "$@" >>"$log" 2>&1 || { echo "$package install failed; see $log:" >&2; tail -30 "$log" >&2; exit 1; }; }

# invoke-rc.d and deb-systemd-invoke ask policy-rc.d whether to start a service:
# 101 means no. Put one in place for the install unless there already is one.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Temporary, from scripts/lib/apt-server.sh.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if [ -n "$own_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

echo "$package install: apt-get install $package (Debian package; log in $log)" >&2
wait_lock=(-o DPkg::Lock::Timeout=600)
for attempt in 1 2 3 4 5 6; do
    if apt-get "${wait_lock[@]}" update >>"$log" 2>&1; then
        break
    elif [ "$attempt" = 6 ]; then
        echo "$package install failed: apt-get update; see $log:" >&2
        tail -30 "$log" >&2
        exit 1
    fi
    sleep 10
done
run env DEBIAN_FRONTEND=noninteractive apt-get "${wait_lock[@]}" install -y --no-install-recommends "$package"

# Should a service have started all the same, stop it: the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$package" 2>/dev/null; then
    echo "$package install: stopping the $package service the package started" >&2
    systemctl stop "$package" >>"$log" 2>&1 || true
    systemctl disable "$package" >>"$log" 2>&1 || true
elif command -v service >/dev/null 2>&1 && service "$package" status >/dev/null 2>&1; then
    echo "$package install: stopping the $package service the package started" >&2
    service "$package" stop >>"$log" 2>&1 || true
fi

if ! bin="$(found)" || ! "$bin" --version >>"$log" 2>&1; then
    echo "$package install failed: no working $binary after apt-get install; see $log" >&2
    exit 1
fi
echo "$bin"
