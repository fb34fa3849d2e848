#!/usr/bin/env bash
# The README's partner tutorial ("A partner's path: from nothing to a signed plugin,
# live"), step by step, in a directory outside this repository, as a partner would run
# it: new -> cargo test -> build -> test in the sandbox -> keygen -> sign -> pack ->
# verify -> publish to a real OCI registry -> an operator's Tenon that requires
# signatures installs it -> live -> version 0.2.0 published, installed, hot-swapped.
# CI runs it (scripts/test.sh), so the guide cannot rot. TENON_TUTORIAL_KEEP=1 keeps
# the work directory.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

step() { printf '\n== %s\n' "$*"; }

step "the tenon binary (cargo install --path cli, here: built in place)"
# TENON_BIN names a binary already built (scripts/test.sh passes the one its test
# build made, rather than building the CLI a second time with other features).
if [ -n "${TENON_BIN:-}" ]; then
    TENON=$(cd "$(dirname "$TENON_BIN")" && pwd)/$(basename "$TENON_BIN")
else
    cargo build --quiet -p tenon-cli --manifest-path "$REPO/Cargo.toml"
    TARGET_DIR=$(cargo metadata --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    TENON="$TARGET_DIR/debug/tenon"
fi
[ -x "$TENON" ] || { echo "no tenon binary at $TENON" >&2; exit 1; }
"$TENON" --version

W=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${TENON_TUTORIAL_KEEP:-}" = 1 ]; then
        echo "work directory kept: $W"
    else
        rm -rf "$W"
    fi
}
trap cleanup EXIT
fail() {
    echo "TUTORIAL FAILED: $*" >&2
    for log in "$W"/*.log; do [ -f "$log" ] && { echo "--- $log" >&2; tail -n 40 "$log" >&2; }; done
    exit 1
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

step "1. a new API plugin (the SDK from this checkout: it is not on crates.io yet)"
cd "$W"
"$TENON" plugin new acme-greeter --kind api --sdk-path "$REPO/plugin-sdk"
cd acme-greeter

step "2. its tests, natively, against a fake host (tenon_sdk::testing)"
cargo test --quiet

step "3. the component, laid out as a plugin directory"
"$TENON" plugin build

step "4. the component in Tenon's sandbox, on the recorded cases"
"$TENON" plugin test --cases cases

step "5. a signing key"
"$TENON" plugin keygen --out "$W/keys/acme"
PUBLIC=$(grep -o 'ed25519:[A-Za-z0-9+/=_-]*' "$W/keys/acme.pub" | head -n 1)
[ -n "$PUBLIC" ] || fail "no ed25519: public key in $W/keys/acme.pub"

step "6. sign, pack, verify"
"$TENON" plugin sign dist/acme-greeter --key "$W/keys/acme" --publisher acme
"$TENON" plugin pack dist/acme-greeter --out "$W/acme-greeter-0.1.0.tar"
"$TENON" plugin verify "$W/acme-greeter-0.1.0.tar" --key "$PUBLIC"

step "7. publish to an OCI registry (a real one, on loopback)"
REGISTRY_BIN=$("$REPO/scripts/registry/install.sh")
REGISTRY_PORT=$(free_port)
cat >"$W/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $W/registry-data
http:
  addr: 127.0.0.1:$REGISTRY_PORT
EOF
"$REGISTRY_BIN" serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null || fail "the registry did not start"
REGISTRY="oci://127.0.0.1:$REGISTRY_PORT/acme/acme-greeter"
"$TENON" plugin publish "$W/acme-greeter-0.1.0.tar" "$REGISTRY:0.1.0"

step "8. an operator's Tenon: signatures required, acme trusted for acme-* plugins"
mkdir -p "$W/ops/plugins"
cat >"$W/ops/tenon.toml" <<EOF
[trust]
require_signatures = true

[[trust.publishers]]
name = "acme"
key = "$PUBLIC"
prefixes = ["acme-"]

[plugins.acme-greeter]
path = "plugins/acme-greeter"

[apis.greet]
plugin = "acme-greeter"
path = "/{name}"
methods = ["GET"]
EOF
"$TENON" plugin install "$REGISTRY:0.1" --dir "$W/ops/plugins/acme-greeter" --config "$W/ops/tenon.toml"
"$TENON" run --config "$W/ops/tenon.toml" --data-dir "$W/ops/data" \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$W/tenon.out" 2>"$W/tenon.log" &
PIDS+=($!)
BASE=""
for _ in $(seq 1 600); do
    BASE=$(sed -n 's/^tenon listening on //p' "$W/tenon.out" | head -n 1)
    [ -n "$BASE" ] && break
    sleep 0.1
done
[ -n "$BASE" ] || fail "tenon did not start"
TOKEN=$(cat "$W/ops/data/admin.key")
answer() { curl -fsS -H "authorization: Bearer $TOKEN" "$BASE/v1/apis/greet/Ada"; }
answer | grep -q '"hello, Ada"' || fail "version 0.1.0 did not answer: $(answer || true)"
echo "GET /v1/apis/greet/Ada -> $(answer)"

step "9. version 0.2.0: built, signed, published, installed, hot-swapped"
cd "$W/acme-greeter"
sed -i 's/^greeting = "hello"/greeting = "welcome"/; s/^version = "0.1.0"/version = "0.2.0"/' plugin.toml
"$TENON" plugin build
"$TENON" plugin sign dist/acme-greeter --key "$W/keys/acme" --publisher acme
"$TENON" plugin publish dist/acme-greeter "$REGISTRY:0.2.0"
"$TENON" plugin install "$REGISTRY:0.2" --dir "$W/ops/plugins/acme-greeter" --config "$W/ops/tenon.toml"
for _ in $(seq 1 300); do
    answer 2>/dev/null | grep -q '"welcome, Ada"' && break
    sleep 0.1
done
answer | grep -q '"welcome, Ada"' || fail "version 0.2.0 did not go live: $(answer || true)"
echo "GET /v1/apis/greet/Ada -> $(answer)"

echo
echo "The partner tutorial ran: new, cargo test, build, sandbox test, keygen, sign, pack, verify, publish, install, live, hot swap."
