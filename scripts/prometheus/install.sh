#!/usr/bin/env bash
# Prints the path of a Prometheus server binary (`prometheus`, 2.42 on bookworm) for
# the tests, installing Debian's package first when missing (as root; otherwise it
# prints the one command to run). Each test starts its own server on a free port of
# 127.0.0.1 (testkit/src/prometheus.rs). See scripts/lib/apt-server.sh.
exec "$(dirname "$0")/../lib/apt-server.sh" prometheus prometheus "Prometheus, 2.42 or later"
