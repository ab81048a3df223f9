#!/usr/bin/env bash
# The sqlrs VS Code extension in CI: installs its npm dependencies from the lock file, runs its
# unit tests, bundles it and packages it as a .vsix with vsce.
#
#   packaging/ci/vscode.sh [--e2e]
#
# --e2e also runs the end-to-end tests: the packaged extension in code-server 4.100.3 (installed
# from npm into $SQLRS_CI_DIR/code-server, default /tmp/sqlrs-ci), driven by Debian's headless
# Chromium through playwright-core,
#   - e2e/fake.mjs against a stand-in server (editors/vscode/e2e/fake-server.js) that logs what the
#     extension sends: settings propagation, run ids, paging, cancellation, discovery errors;
#   - e2e/real.mjs against the real sqlrs-lsp ($SQLRS_LSP_BIN, default target/debug/sqlrs-lsp, with
#     sqlrsd and sqlrs beside it: run `cargo build --workspace` first), an isolated daemon in a
#     temporary directory and PostgreSQL 15 (/usr/lib/postgresql/15/bin): status lens, status bar,
#     Run results, SQLSTATE, build-error diagnostics after edits in the editor and on disk.
# As root it installs what the browser side needs with apt-get (chromium, libkrb5-dev, ripgrep).
#
# Works from a clean checkout (editors/vscode/ relative to this script); needs Node 18+ and npm.
# Prints the path of the .vsix on stdout as its last line; progress goes to stderr.
# Exits non-zero on any failure.
set -euo pipefail

CODE_SERVER_VERSION="4.100.3"
RIPGREP_CACHE="vscode-ripgrep-cache-1.15.11/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz"

log() { echo "vscode.sh: $*" >&2; }
die() {
    echo "vscode.sh: $*" >&2
    exit 1
}

E2E=0
case "${1:-}" in
"") ;;
--e2e) E2E=1 ;;
*)
    echo "usage: $0 [--e2e]" >&2
    exit 2
    ;;
esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
EXT="$REPO/editors/vscode"
LSP_BIN="${SQLRS_LSP_BIN:-$REPO/target/debug/sqlrs-lsp}"
case "$LSP_BIN" in
/*) ;;
*) LSP_BIN="$PWD/$LSP_BIN" ;;
esac
PG_BIN="/usr/lib/postgresql/15/bin"

for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "$tool is missing: install Node.js 18 or later with npm (Debian: apt-get install -y nodejs npm) and run again"
done
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 18 ] || die "Node.js $(node --version) is too old: the extension needs Node.js 18 or later"

# Fails early, before anything is installed, when the real-server test cannot run.
check_real_server_inputs() {
    local dir bin
    dir="$(dirname "$LSP_BIN")"
    for bin in "$LSP_BIN" "$dir/sqlrsd" "$dir/sqlrs"; do
        [ -x "$bin" ] || die "$bin does not exist: run \`cargo build --workspace\` in $REPO first (or set SQLRS_LSP_BIN to a sqlrs-lsp with sqlrsd and sqlrs beside it)"
    done
    for bin in postgres initdb psql; do
        [ -x "$PG_BIN/$bin" ] || die "$PG_BIN/$bin does not exist: install PostgreSQL 15 (Debian: apt-get install -y postgresql-15)"
    done
}

# Installs Debian packages for the end-to-end test when their command is missing.
ensure_packages() {
    local missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v rg >/dev/null 2>&1 || missing+=(ripgrep)
    dpkg -s libkrb5-dev >/dev/null 2>&1 || missing+=(libkrb5-dev)
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" -eq 0 ] || die "the end-to-end test needs ${missing[*]}: install them (Debian: sudo apt-get install -y ${missing[*]}) and run again"
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2 || die "apt-get could not install ${missing[*]}"
}

# Installs code-server into $1 (idempotent) and prints the path of its launcher.
ensure_code_server() {
    local dir="$1" launcher="$1/node_modules/.bin/code-server"
    if [ -x "$launcher" ] && "$launcher" --config "$dir/config.yaml" --version 2>/dev/null | grep -q "^$CODE_SERVER_VERSION "; then
        echo "$launcher"
        return
    fi
    mkdir -p "$dir"
    # code-server's postinstall fetches ripgrep unless its cache already holds it: seed it from Debian's rg.
    local tmp="${TMPDIR:-/tmp}" stage
    mkdir -p "$tmp/$(dirname "$RIPGREP_CACHE")"
    stage="$(mktemp -d)"
    cp "$(command -v rg)" "$stage/rg"
    tar -C "$stage" -czf "$tmp/$RIPGREP_CACHE" rg
    rm -rf "$stage"
    log "installing code-server $CODE_SERVER_VERSION into $dir"
    [ -f "$dir/package.json" ] || echo '{"private": true}' >"$dir/package.json"
    (cd "$dir" && npm_config_unsafe_perm=true npm_config_yes=true \
        npm install --no-audit --no-fund "code-server@$CODE_SERVER_VERSION" >&2) ||
        die "npm could not install code-server@$CODE_SERVER_VERSION into $dir"
    [ -x "$launcher" ] || die "code-server was installed, but $launcher is missing"
    echo "$launcher"
}

[ "$E2E" -eq 0 ] || check_real_server_inputs

cd "$EXT"
log "npm ci in $EXT"
npm ci --no-audit --no-fund >&2
log "npm test"
npm test >&2
log "npm run package"
rm -f ./*.vsix
npm run package >&2

version="$(node -p 'require("./package.json").version')"
vsix="$EXT/sqlrs-$version.vsix"
[ -s "$vsix" ] || die "npm run package did not produce $vsix"
listing="$(unzip -l "$vsix" 2>/dev/null || python3 -m zipfile -l "$vsix")" ||
    die "could not list $vsix (install unzip or python3)"
log "files in $vsix:"
echo "$listing" >&2
for file in extension/package.json extension/dist/extension.js extension/readme.md; do
    grep -q "$file" <<<"$listing" || die "$vsix lacks $file"
done

if [ "$E2E" -eq 1 ]; then
    ensure_packages
    CODE_SERVER="$(ensure_code_server "${SQLRS_CI_DIR:-/tmp/sqlrs-ci}/code-server")"
    log "end-to-end tests in code-server ($CODE_SERVER), real server $LSP_BIN"
    CODE_SERVER="$CODE_SERVER" CHROMIUM="$(command -v chromium)" SQLRS_LSP_BIN="$LSP_BIN" npm run e2e >&2
fi
echo "$vsix"
