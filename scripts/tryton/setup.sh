#!/usr/bin/env bash
# Installs a real Tryton ERP for the tests, once per machine, and prints its home.
#
# A virtual environment with trytond 8.2, the sale modules and sale price lists (from
# PyPI), an SQLite database with the modules activated, and the master data the tests
# use (a company, parties, products, a customer's price list), made by setup_data.py
# through Tryton's own client (proteus). Kept outside the repository (default
# ~/.cache/tenon/tryton-8.2, or $TENON_TRYTON_HOME) so that reruns take no time; a
# lock makes concurrent callers wait for one install. Each test copies the database
# and starts its own trytond on 127.0.0.1 (see tests/all/tryton.rs).
#
# The printed home holds `venv/` and `db/tenon.sqlite`. Each version of this set-up
# has a home of its own (named by its inputs) and each package list a venv of its own,
# so that checkouts with different versions sharing the cache do not undo each
# other's install.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${TENON_TRYTON_HOME:-${HOME:-/tmp}/.cache/tenon/tryton-8.2}"
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9

# The set-up's own inputs: a change to them makes a new home.
# The year counts too: the database has fiscal years around the year it was made in.
stamp="$( (cat "$here/setup.sh" "$here/setup_data.py"; date +%Y) | sha256sum | cut -c1-16)"
home="$root/setup-$stamp"
if [ -f "$home/ready" ] && [ "$(cat "$home/ready")" = "$stamp" ]; then
    echo "$home"
    exit 0
fi
rm -rf "$home"
mkdir -p "$home"

log="$home/setup.log"
: >"$log"
step() { echo "tryton setup: $*" >&2; }
run() { "$@" >>"$log" 2>&1 || { echo "tryton setup failed; see $log:" >&2; tail -30 "$log" >&2; exit 1; }; }

packages="trytond==8.2.1 trytond-sale>=8.2,<8.3 trytond-sale-price-list>=8.2,<8.3 proteus>=8.2,<8.3"
venv="$root/venv-$(printf '%s' "$packages" | sha256sum | cut -c1-12)"
if [ ! -f "$venv/ready" ] || [ "$(cat "$venv/ready")" != "$packages" ]; then
    rm -rf "$venv"
    step "creating a virtual environment in $venv"
    run python3 -m venv "$venv"
    step "installing trytond 8.2 with the sale modules from PyPI (a few minutes, once)"
    # shellcheck disable=SC2086 # the package list is split on purpose
    run "$venv/bin/pip" install --disable-pip-version-check $packages
    echo "$packages" >"$venv/ready"
fi
ln -s "$venv" "$home/venv"

mkdir -p "$home/db"
: >"$home/db/tenon.sqlite"
printf 'tenon-tryton-admin\n' >"$home/admin-password"
cat >"$home/trytond.conf" <<CONF
[database]
uri = sqlite://
path = $home/db
CONF

step "creating the database"
run env TRYTONPASSFILE="$home/admin-password" "$home/venv/bin/trytond-admin" \
    -c "$home/trytond.conf" -d tenon --all --email admin@example.com
step "activating the sale modules"
run "$home/venv/bin/trytond-admin" -c "$home/trytond.conf" -d tenon \
    -u sale sale_price_list --activate-dependencies
step "creating the company, parties, products and price lists"
run "$home/venv/bin/python" "$here/setup_data.py" "$home/trytond.conf" tenon

echo "$stamp" >"$home/ready"
step "ready"
echo "$home"
