#!/usr/bin/env bash
# sqlrs quick start on a fresh Debian or Ubuntu machine, from a clone of the repo:
# installs the PostgreSQL server binaries, builds sqlrs, makes a tiny project
# and prepares a database from it on the native runtime.
#
#   bash packaging/quickstart.sh
#
# The daemon it starts keeps running (that is what makes the next prepare
# fast); stop it with `target/release/sqlrs daemon stop`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

section() { printf '\n==== %s ====\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "installing packages needs root: run as root or install sudo"
    SUDO=(sudo)
fi

# ---------------------------------------------------------------------------
section "PostgreSQL server binaries"
have_server() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
if have_server && command -v psql >/dev/null 2>&1; then
    echo "found: $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
else
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install the PostgreSQL server and client (initdb, postgres, psql) with your package manager"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-client
fi

# ---------------------------------------------------------------------------
section "Rust toolchain"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: installing the stable toolchain with rustup (https://rustup.rs)"
    if ! command -v curl >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl ca-certificates gcc libc6-dev
    fi
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo --version

# ---------------------------------------------------------------------------
section "build (release)"
cargo build --release -p sqlrs-cli -p sqlrsd
SQLRS="$ROOT/target/release/sqlrs"
export SQLRSD_BIN="$ROOT/target/release/sqlrsd"

# ---------------------------------------------------------------------------
section "example project"
PROJECT="$(mktemp -d /tmp/sqlrs-quickstart.XXXXXX)"
chmod 755 "$PROJECT"
cat >"$PROJECT/schema.sql" <<'SQL'
create table author (
    id serial primary key,
    name text not null
);
create table book (
    id serial primary key,
    author_id int not null references author(id),
    title text not null,
    published date
);
SQL
cat >"$PROJECT/seed.sql" <<'SQL'
insert into author (name) values ('Ursula K. Le Guin'), ('Stanisław Lem');
insert into book (author_id, title, published) values
    (1, 'A Wizard of Earthsea', '1968-11-01'),
    (1, 'The Left Hand of Darkness', '1969-03-01'),
    (2, 'Solaris', '1961-01-01');
SQL
echo "$PROJECT:"
ls -l "$PROJECT"
cd "$PROJECT"

# ---------------------------------------------------------------------------
section "sqlrs prepare:psql -- -f schema.sql -f seed.sql   (first time: builds)"
out="$("$SQLRS" prepare:psql -- -f schema.sql -f seed.sql)"
echo "$out"
DSN="$(sed -n 's/^DSN=//p' <<<"$out" | head -n1)"
[ -n "$DSN" ] || die "prepare printed no DSN=..."

section "again (every step is a cache hit, a new instance comes back)"
time "$SQLRS" prepare:psql -- -f schema.sql -f seed.sql

section "sqlrs ls --states / --instances"
"$SQLRS" ls --states
"$SQLRS" ls --instances

# The id of the instance behind $DSN, from the JSON listing.
INSTANCE="$("$SQLRS" --output json ls --instances | tr -d '\n' | tr '{' '\n' | grep -F "\"$DSN\"" \
    | grep -o '"id"[[:space:]]*:[[:space:]]*"[^"]*"' | head -n1 | sed 's/.*"\([^"]*\)"$/\1/' || true)"
[ -n "$INSTANCE" ] || die "cannot find the instance of $DSN in \`sqlrs ls --instances\`"

section "sqlrs run:psql --instance ${INSTANCE:0:12} -- -c 'select count(*) from book'"
"$SQLRS" run:psql --instance "${INSTANCE:0:12}" -- -c 'select count(*) from book'

section "done"
cat <<EOF
Connect with any client:
  psql '$DSN'
Try next (in $PROJECT):
  $SQLRS plan:psql -- -f schema.sql -f seed.sql
  $SQLRS prepare:psql -- -f schema.sql -f seed.sql run:psql -- -c 'select * from book'
  $SQLRS status
  $SQLRS daemon stop
EOF
