#!/usr/bin/env bash
# The sqlrs VS Code extension in CI: installs its npm dependencies from the lock file, runs its
# unit tests, bundles it and packages it as a .vsix with vsce.
#
#   packaging/ci/vscode.sh
#
# Works from a clean checkout (editors/vscode/ relative to this script); needs Node 18+ and npm.
# Prints the path of the .vsix on stdout as its last line; progress goes to stderr.
# Exits non-zero on any failure.
set -euo pipefail

log() { echo "vscode.sh: $*" >&2; }
die() {
    echo "vscode.sh: $*" >&2
    exit 1
}

EXT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../editors/vscode" && pwd)"

for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "$tool is missing: install Node.js 18 or later with npm (Debian: apt-get install -y nodejs npm) and run again"
done
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 18 ] || die "Node.js $(node --version) is too old: the extension needs Node.js 18 or later"

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
log "files in $vsix:"
node_modules/.bin/vsce ls --tree --no-dependencies >&2 ||
    die "vsce ls could not list the files of the package"
listing="$(unzip -l "$vsix" 2>/dev/null || python3 -m zipfile -l "$vsix")"
echo "$listing" >&2
for file in extension/package.json extension/dist/extension.js extension/readme.md; do
    grep -q "$file" <<<"$listing" || die "$vsix lacks $file"
done
echo "$vsix"
