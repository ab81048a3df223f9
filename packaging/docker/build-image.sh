#!/usr/bin/env bash
# Builds a PostgreSQL image for the sqlrs Docker runtime offline, from the
# host's own Debian packages: no registry is needed.
#
#   packaging/docker/build-image.sh [NAME:TAG]     (default sqlrs/postgres:MAJOR)
#
# Collects the server and client (/usr/lib/postgresql/MAJOR,
# /usr/share/postgresql/MAJOR), a shell and a few core tools, every shared
# library those binaries load (ldd), time zone data, and the host's /etc/passwd
# and /etc/group (so the image's `postgres` account has the host's uid and files
# written by containers and by the host agree) into a root folder, then
# `docker import`s it with PGDATA, PATH, USER postgres, the entrypoint
# (packaging/docker/docker-entrypoint.sh) and the labels
#
#   org.sqlrs.postgres.version = the server version, e.g. 15.18
#   org.sqlrs.source           = a fingerprint of the inputs
#
# Idempotent: when NAME:TAG already carries the same fingerprint it is kept
# (a re-import would change the image id, and with it sqlrs's engine identity).
# MAJOR is the newest /usr/lib/postgresql/* unless PG_MAJOR is set. Talks to the
# daemon at DOCKER_HOST (see packaging/ci/docker.sh); needs the `docker` client.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
log() { echo "build-image: $*" >&2; }
die() {
    echo "build-image: $*" >&2
    exit 1
}

[ $# -le 1 ] || die "usage: $0 [NAME:TAG]"
command -v docker >/dev/null || die "no docker client: apt-get install docker.io (or docker-ce-cli)"

PG_MAJOR="${PG_MAJOR:-$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)}"
PGLIB="/usr/lib/postgresql/$PG_MAJOR"
PGSHARE="/usr/share/postgresql/$PG_MAJOR"
for need in "$PGLIB/bin/postgres" "$PGLIB/bin/initdb" "$PGLIB/bin/psql" "$PGSHARE/postgres.bki"; do
    [ -e "$need" ] || die "$need is missing: apt-get install postgresql-$PG_MAJOR postgresql-client-$PG_MAJOR"
done
IMAGE="${1:-sqlrs/postgres:$PG_MAJOR}"
id postgres >/dev/null 2>&1 || die "the host has no postgres account: apt-get install postgresql-$PG_MAJOR (or useradd --system --user-group postgres)"

VERSION="$("$PGLIB/bin/postgres" --version | sed -n 's/.*(PostgreSQL) \([^ ]*\).*/\1/p')"
[ -n "$VERSION" ] || die "cannot read the version from $PGLIB/bin/postgres --version"

TOOLS=(dash cat ls mkdir mktemp rm chmod id env sleep)
fingerprint() {
    {
        echo "$PG_MAJOR $VERSION"
        dpkg-query -W -f '${Package} ${Version}\n' "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR" libc6 2>/dev/null || true
        getent passwd postgres
        getent group postgres
        sha256sum "$0" "$HERE/docker-entrypoint.sh"
    } | sha256sum | cut -c1-32
}
SOURCE="$(fingerprint)"

existing="$(docker image inspect --format '{{ index .Config.Labels "org.sqlrs.source" }}' "$IMAGE" 2>/dev/null || true)"
if [ "$existing" = "$SOURCE" ]; then
    log "$IMAGE is up to date (PostgreSQL $VERSION)"
    docker image inspect --format '{{ .Id }}' "$IMAGE"
    exit 0
fi

ROOT="$(mktemp -d "${TMPDIR:-/tmp}/sqlrs-image.XXXXXX")"
trap 'rm -rf "$ROOT"' EXIT
log "assembling PostgreSQL $VERSION in $ROOT"

# copy PATH...: copies files or trees into ROOT at the same place, keeping links.
copy() {
    for p in "$@"; do
        mkdir -p "$ROOT$(dirname "$p")"
        cp -a "$p" "$ROOT$(dirname "$p")/"
    done
}

mkdir -p "$ROOT"/{etc,tmp,usr/bin,usr/local/bin,var/lib/postgresql/data,run/postgresql}
ln -s ../run "$ROOT/var/run"
# The host's merged-/usr links (/bin -> usr/bin, /lib -> usr/lib, ...), so
# paths ldd prints resolve the same way inside the image.
for top in bin sbin lib lib32 lib64; do
    if [ -L "/$top" ]; then
        ln -s "$(readlink "/$top")" "$ROOT/$top"
        mkdir -p "$ROOT/$(readlink -f "/$top")"
    elif [ -d "/$top" ]; then
        mkdir -p "$ROOT/$top"
    fi
done
chmod 1777 "$ROOT/tmp"
copy "$PGLIB" "$PGSHARE" /usr/share/zoneinfo /etc/passwd /etc/group
# JIT compilation is optional and would pull in LLVM (over 100 MB).
rm -rf "$ROOT$PGLIB"/lib/llvmjit* "$ROOT$PGLIB/lib/bitcode"
[ -e /etc/nsswitch.conf ] && copy /etc/nsswitch.conf

for tool in "${TOOLS[@]}"; do
    path="$(command -v "$tool")" || die "no $tool on the host"
    real="$(readlink -f "$path")"
    copy "$real"
    [ "$real" = "/usr/bin/$tool" ] || ln -sf "$real" "$ROOT/usr/bin/$tool"
done
ln -sf dash "$ROOT/usr/bin/sh"

# Shared libraries of every ELF file copied so far, and their loader.
libs="$(
    find "$ROOT" -type f \( -perm -u+x -o -name '*.so*' \) -print0 |
        xargs -0 -r sh -c 'for f; do ldd "${f#'"$ROOT"'}" 2>/dev/null; done' sh |
        grep -o '/[^ ]*' | sort -u
)"
for lib in $libs; do
    [ -e "$lib" ] || continue
    copy "$lib"
    real="$(readlink -f "$lib")"
    [ "$real" = "$lib" ] || copy "$real"
done

install -m 0755 "$HERE/docker-entrypoint.sh" "$ROOT/usr/local/bin/docker-entrypoint.sh"
chown postgres:postgres "$ROOT/var/lib/postgresql" "$ROOT/var/lib/postgresql/data" "$ROOT/run/postgresql"
chmod 0700 "$ROOT/var/lib/postgresql/data"
chmod 2775 "$ROOT/run/postgresql"

log "importing $IMAGE ($(du -sh "$ROOT" | cut -f1))"
tar -C "$ROOT" --numeric-owner --sort=name -c . |
    docker import \
        --change "ENV PATH=$PGLIB/bin:/usr/local/bin:/usr/bin:/bin" \
        --change "ENV PGDATA=/var/lib/postgresql/data" \
        --change "ENV LANG=C.UTF-8" \
        --change "ENV PG_MAJOR=$PG_MAJOR" \
        --change "USER postgres" \
        --change "WORKDIR /var/lib/postgresql" \
        --change "EXPOSE 5432" \
        --change "LABEL org.sqlrs.postgres.version=$VERSION" \
        --change "LABEL org.sqlrs.source=$SOURCE" \
        --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
        --change 'CMD ["postgres"]' \
        --message "PostgreSQL $VERSION from the host's Debian packages" \
        - "$IMAGE" >/dev/null

log "built $IMAGE (PostgreSQL $VERSION)"
docker image inspect --format '{{ .Id }}' "$IMAGE"
