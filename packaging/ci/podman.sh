#!/usr/bin/env bash
# A private rootful Podman service for the sqlrs Docker runtime tests and CI:
# Podman's Docker-compatible API on a socket of its own.
#
#   packaging/ci/podman.sh DIR          start (idempotently) and print DOCKER_HOST
#   packaging/ci/podman.sh --stop DIR   stop its containers and the service
#                                       (its images and data stay in DIR)
#
# Installs Debian's podman when it is missing, then runs
# `podman system service --time=0` in the background with everything under
# DIR: the socket DIR/podman.sock, the image and container storage DIR/storage,
# the run root DIR/run, libpod's state DIR/tmp, network definitions
# DIR/networks, the configuration DIR/containers.conf and DIR/storage.conf
# (written on the first start), the pid file DIR/podman.pid and the log
# DIR/podman.log. It leaves any system-wide Podman or Docker alone. Once the
# service answers, it prints the environment the tests read:
#
#   DOCKER_HOST=unix://DIR/podman.sock
#
# Use it as `export "$(packaging/ci/podman.sh DIR)"`; progress goes to stderr.
# Must run as root (rootful Podman keeps the host's uids in bind mounts). Then
# build the PostgreSQL image with packaging/docker/build-image.sh, which talks
# to the service through the same DOCKER_HOST. To use the podman command on the
# same storage: CONTAINERS_CONF=DIR/containers.conf
# CONTAINERS_STORAGE_CONF=DIR/storage.conf podman ps.
set -euo pipefail

usage() {
    echo "usage: $0 [--stop] DIR" >&2
    exit 2
}

log() { echo "podman.sh: $*" >&2; }

stop=false
case "${1:-}" in
--stop)
    stop=true
    shift
    ;;
-h | --help) usage ;;
esac
[ $# -eq 1 ] || usage
DIR="$(realpath -m "$1")"
SOCK="$DIR/podman.sock"
PIDFILE="$DIR/podman.pid"
export DOCKER_HOST="unix://$SOCK"
export CONTAINERS_CONF="$DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$DIR/storage.conf"

# The socket path must fit a Unix socket address (107 bytes).
if [ "${#SOCK}" -gt 107 ]; then
    echo "podman.sh: $SOCK is longer than a Unix socket path may be; use a shorter DIR" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "podman.sh: must run as root (rootful Podman); try: sudo $0 $*" >&2
    exit 1
fi

# running: the pid in PIDFILE is a live (not zombie) podman.
running() {
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = podman ] &&
        [ "$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)" != Z ]
}

# answers: the service replies to /_ping on SOCK.
answers() {
    [ -S "$SOCK" ] && [ "$(curl -sf --max-time 2 --unix-socket "$SOCK" http://localhost/_ping 2>/dev/null || true)" = OK ]
}

if $stop; then
    if running; then
        pid="$(cat "$PIDFILE")"
        # Containers outlive the service (conmon watches them): stop them first,
        # as dockerd does with its own when it exits.
        if [ -e "$CONTAINERS_CONF" ]; then
            podman stop --all --time 10 >/dev/null 2>>"$DIR/podman.log" ||
                log "could not stop every container; see $DIR/podman.log"
        fi
        kill "$pid"
        for _ in $(seq 1 150); do
            running || break
            sleep 0.2
        done
        if running; then
            echo "podman.sh: podman (pid $pid) did not stop within 30 s; see $DIR/podman.log" >&2
            exit 1
        fi
        rm -f "$SOCK" "$PIDFILE"
        log "stopped the podman service (pid $pid)"
    else
        log "no podman service running for $DIR"
    fi
    # The overlay driver bind-mounts its storage folder onto itself (and a
    # layer's merged view while a container runs); without the service those
    # mounts only keep DIR from being removed. Deepest first.
    { findmnt -rn -o TARGET | grep -F "$DIR/storage/" || true; } | sort -r | while read -r target; do
        umount "$target" 2>/dev/null || umount -l "$target" ||
            log "could not unmount $target"
    done
    exit 0
fi

ensure_tool() { # ensure_tool COMMAND PACKAGE
    if ! command -v "$1" >/dev/null 2>&1; then
        log "installing $2 (for $1)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq "$2" >&2
    fi
}

ensure_tool podman podman
ensure_tool curl curl

mkdir -p "$DIR"/{storage,run,tmp,networks}
chmod 0711 "$DIR"

# Written once: the storage driver of existing storage cannot change.
if [ ! -e "$CONTAINERS_STORAGE_CONF" ]; then
    # overlay needs kernel support and a backing filesystem other than
    # overlayfs (e.g. not inside a container's own root); vfs works anywhere
    # but copies every layer.
    driver=vfs
    if grep -qw overlay /proc/filesystems && [ "$(stat -f -c %T "$DIR")" != overlayfs ]; then
        driver=overlay
    fi
    log "storage driver: $driver"
    cat >"$CONTAINERS_STORAGE_CONF" <<EOF
# Written by packaging/ci/podman.sh: storage of the private Podman service.
[storage]
driver = "$driver"
graphroot = "$DIR/storage"
runroot = "$DIR/run"
EOF
fi

# Containers get the limits the service itself has, as dockerd's do: Podman
# 4's defaults (1048576 open files and processes) need CAP_SYS_RESOURCE, which
# a container-hosted CI may lack. Podman lowers its own process limit to 32768
# when it starts, so the containers' limit is at most that.
nofile="$(ulimit -Hn)"
[ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ] && nofile=1048576
nproc="$(ulimit -Hu)"
[ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
# cgroupfs without systemd as the init (no D-Bus to ask for scopes).
cgroup_manager=cgroupfs
[ -d /run/systemd/system ] && cgroup_manager=systemd
cat >"$CONTAINERS_CONF.new" <<EOF
# Written by packaging/ci/podman.sh: settings of the private Podman service.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
cgroup_manager = "$cgroup_manager"
events_logger = "file"
tmp_dir = "$DIR/tmp"
image_copy_tmp_dir = "$DIR/tmp"

[network]
network_config_dir = "$DIR/networks"
EOF
mv "$CONTAINERS_CONF.new" "$CONTAINERS_CONF"

if running && answers; then
    log "podman already answers on $SOCK"
else
    if running; then
        log "podman (pid $(cat "$PIDFILE")) runs but does not answer yet"
    else
        rm -f "$SOCK" "$PIDFILE"
        log "starting podman system service on $SOCK (log $DIR/podman.log)"
        (
            cd /
            exec setsid podman system service --time=0 "$DOCKER_HOST" \
                >>"$DIR/podman.log" 2>&1 </dev/null
        ) &
        echo $! >"$PIDFILE"
    fi
    for _ in $(seq 1 300); do
        answers && break
        running || break
        sleep 0.2
    done
    if ! answers; then
        echo "podman.sh: podman did not answer on $SOCK within 60 s; its log:" >&2
        tail -n 30 "$DIR/podman.log" >&2 || true
        exit 1
    fi
    log "podman answers on $SOCK"
fi

echo "DOCKER_HOST=$DOCKER_HOST"
