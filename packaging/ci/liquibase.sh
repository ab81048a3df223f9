#!/usr/bin/env bash
# Liquibase for the sqlrs Liquibase tests and CI (prepare:lb / plan:lb).
#
#   packaging/ci/liquibase.sh DIR
#
# Installs the npm package liquibase@4.28.1 into DIR (idempotent: nothing is
# done when DIR already holds it). That release bundles the Liquibase jars and
# the PostgreSQL JDBC driver, so no other download is needed; later npm releases
# no longer bundle the jars. Liquibase needs Java 11+: when `java` is missing
# and this runs as root, Debian's default-jre-headless (or openjdk-17-jre-headless)
# is installed with apt-get.
#
# Prints the path of the launcher on stdout, e.g.
#
#   DIR/node_modules/liquibase/dist/liquibase/liquibase
#
# so CI can do `export SQLRS_LIQUIBASE="$(packaging/ci/liquibase.sh DIR)"`.
# Progress goes to stderr.
set -euo pipefail

VERSION="4.28.1"

usage() {
    echo "usage: $0 DIR" >&2
    exit 2
}

log() { echo "liquibase.sh: $*" >&2; }
die() {
    echo "liquibase.sh: $*" >&2
    exit 1
}

case "${1:-}" in
"" | -h | --help) usage ;;
esac
[ $# -eq 1 ] || usage
DIR="$(realpath -m "$1")"
LAUNCHER="$DIR/node_modules/liquibase/dist/liquibase/liquibase"

ensure_java() {
    if command -v java >/dev/null 2>&1; then
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "java is missing: install a Java 11+ runtime (Debian: sudo apt-get install -y default-jre-headless) and run again"
    log "installing a Java runtime with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq default-jre-headless >&2 ||
        apt-get install -y -qq openjdk-17-jre-headless >&2 ||
        die "apt-get could not install a Java runtime (default-jre-headless or openjdk-17-jre-headless)"
}

installed_version() {
    local pkg="$DIR/node_modules/liquibase/package.json"
    [ -f "$pkg" ] || return 0
    sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$pkg" | head -n 1
}

ensure_java

if [ -x "$LAUNCHER" ] && [ "$(installed_version)" = "$VERSION" ]; then
    log "liquibase $VERSION already installed in $DIR"
else
    command -v npm >/dev/null 2>&1 || die "npm is missing: install Node.js and npm (Debian: apt-get install -y npm) and run again"
    log "installing liquibase@$VERSION into $DIR"
    mkdir -p "$DIR"
    # A private package.json keeps npm from walking up into an enclosing project.
    [ -f "$DIR/package.json" ] || echo '{ "private": true }' >"$DIR/package.json"
    npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error \
        "liquibase@$VERSION" >&2
    [ -f "$LAUNCHER" ] || die "npm installed liquibase@$VERSION but $LAUNCHER is missing"
    chmod +x "$LAUNCHER"
fi

# The launcher must run: a broken Java or a partial install fails here, not in the tests.
if ! LIQUIBASE_SHOW_BANNER=false LIQUIBASE_ANALYTICS_ENABLED=false \
    "$LAUNCHER" --version >/dev/null 2>&1; then
    die "$LAUNCHER --version failed; remove $DIR and run again"
fi

echo "$LAUNCHER"
