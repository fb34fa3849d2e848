#!/usr/bin/env bash
# Prints the path of an OCI distribution registry binary (`docker-registry`, the CNCF
# distribution registry, 2.8 on bookworm) for the tests, installing Debian's package
# first when missing (as root; otherwise it prints the one command to run). Each test
# starts its own registry on a free port of 127.0.0.1 with its storage in a temporary
# directory (testkit/src/registry.rs). See scripts/lib/apt-server.sh.
exec "$(dirname "$0")/../lib/apt-server.sh" docker-registry docker-registry \
    "the CNCF distribution registry, 2.8 or later"
