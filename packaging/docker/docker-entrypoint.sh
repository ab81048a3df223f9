#!/bin/sh
# Entrypoint of the image packaging/docker/build-image.sh makes.
#
# `docker run IMAGE [postgres] [-c setting=value ...]` creates the cluster in
# $PGDATA on first start (POSTGRES_PASSWORD sets the superuser's password,
# required unless POSTGRES_HOST_AUTH_METHOD=trust), then runs the server on all
# addresses. Any other command runs as given (e.g. psql, initdb, pg_isready).
# sqlrs itself runs initdb and postgres directly and does not go through here.
set -eu

if [ "${1#-}" != "${1:-}" ] || [ $# -eq 0 ]; then
    set -- postgres "$@"
fi

if [ "$1" = postgres ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "docker-entrypoint: PostgreSQL refuses to run as root; run the container as postgres (the image's default user)" >&2
        exit 1
    fi
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
        if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
            echo "docker-entrypoint: set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust) to create the cluster in $PGDATA" >&2
            exit 1
        fi
        mkdir -p "$PGDATA"
        chmod 0700 "$PGDATA"
        pwfile=""
        if [ -n "${POSTGRES_PASSWORD:-}" ]; then
            pwfile="$(mktemp)"
            printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        fi
        TZ="${TZ:-UTC}" initdb --username=postgres --encoding=UTF8 --locale=C \
            --auth-local=trust --auth-host="$auth" ${pwfile:+--pwfile="$pwfile"} \
            -D "$PGDATA" >&2
        [ -z "$pwfile" ] || rm -f "$pwfile"
        printf 'host all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
    fi
    shift
    exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi

exec "$@"
