#!/usr/bin/env bash
# A private Docker daemon for the sqlrs Docker runtime tests and CI.
#
#   packaging/ci/docker.sh DIR          start (idempotently) and print DOCKER_HOST
#   packaging/ci/docker.sh --stop DIR   stop it (its images and data stay in DIR)
#
# Installs Debian's docker.io when dockerd is missing, then runs dockerd in the
# background with everything under DIR: the socket DIR/docker.sock, the data
# root DIR/data, the exec root DIR/exec, the pid file DIR/dockerd.pid and the
# log DIR/dockerd.log. It leaves any system-wide Docker alone. Once the daemon
# answers, it prints the environment the tests read:
#
#   DOCKER_HOST=unix://DIR/docker.sock
#
# Use it as `eval "$(packaging/ci/docker.sh DIR)"`; progress goes to stderr.
# Must run as root. Then build the PostgreSQL image with
# packaging/docker/build-image.sh.
set -euo pipefail

usage() {
    echo "usage: $0 [--stop] DIR" >&2
    exit 2
}

log() { echo "docker.sh: $*" >&2; }

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
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/dockerd.pid"
export DOCKER_HOST="unix://$SOCK"

# The socket path must fit a Unix socket address (107 bytes).
if [ "${#SOCK}" -gt 107 ]; then
    echo "docker.sh: $SOCK is longer than a Unix socket path may be; use a shorter DIR" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "docker.sh: must run as root (dockerd needs it); try: sudo $0 $*" >&2
    exit 1
fi

# running: the pid in PIDFILE is a live dockerd.
running() {
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = dockerd ]
}

# answers: the daemon replies to /_ping on SOCK.
answers() {
    [ -S "$SOCK" ] && [ "$(curl -sf --max-time 2 --unix-socket "$SOCK" http://localhost/_ping 2>/dev/null || true)" = OK ]
}

if $stop; then
    if running; then
        pid="$(cat "$PIDFILE")"
        kill "$pid"
        for _ in $(seq 1 150); do
            [ -d "/proc/$pid" ] || break
            sleep 0.2
        done
        if [ -d "/proc/$pid" ]; then
            echo "docker.sh: dockerd (pid $pid) did not stop within 30 s; see $DIR/dockerd.log" >&2
            exit 1
        fi
        log "stopped dockerd (pid $pid)"
    else
        log "no dockerd running for $DIR"
    fi
    # dockerd leaves bind mounts under its folder (exec/netns/default): without
    # them gone, the folder cannot be removed. Deepest first.
    awk -v dir="$DIR/" 'index($2, dir) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt" || log "could not unmount $mnt"
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

ensure_tool dockerd docker.io
ensure_tool curl curl

mkdir -p "$DIR"
chmod 0711 "$DIR"

if running && answers; then
    log "dockerd already answers on $SOCK"
else
    if running; then
        log "dockerd (pid $(cat "$PIDFILE")) runs but does not answer yet"
    else
        rm -f "$SOCK" "$PIDFILE"
        log "starting dockerd on $SOCK (log $DIR/dockerd.log)"
        setsid dockerd \
            --host "$DOCKER_HOST" \
            --data-root "$DIR/data" \
            --exec-root "$DIR/exec" \
            --pidfile "$PIDFILE" \
            >>"$DIR/dockerd.log" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 300); do
        answers && break
        sleep 0.2
    done
    if ! answers; then
        echo "docker.sh: dockerd did not answer on $SOCK within 60 s; its log:" >&2
        tail -n 30 "$DIR/dockerd.log" >&2 || true
        exit 1
    fi
    log "dockerd answers on $SOCK"
fi

echo "DOCKER_HOST=$DOCKER_HOST"
