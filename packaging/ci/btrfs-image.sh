#!/usr/bin/env bash
# Loop-mounted test filesystems for the sqlrs snapshotter tests.
#
#   packaging/ci/btrfs-image.sh DIR            create (idempotently) and mount
#   packaging/ci/btrfs-image.sh --unmount DIR  unmount (image files are kept)
#
# Creates sparse image files under DIR, formats one as btrfs and one as XFS with
# reflinks (mkfs.xfs -m reflink=1), loop-mounts them at DIR/btrfs and DIR/xfs,
# with direct I/O to the image (see `setup`), and prints the environment the
# tests read:
#
#   SQLRS_TEST_BTRFS=DIR/btrfs
#   SQLRS_TEST_XFS=DIR/xfs
#
# Use it as `eval "$(packaging/ci/btrfs-image.sh DIR)"`; progress goes to stderr.
# Must run as root (mount, losetup). Installs btrfs-progs / xfsprogs with apt-get
# when mkfs.btrfs / mkfs.xfs is missing. SIZE (default 8G) sets the image size.
set -euo pipefail

SIZE="${SIZE:-8G}"

usage() {
    echo "usage: $0 [--unmount] DIR" >&2
    exit 2
}

log() { echo "btrfs-image: $*" >&2; }

unmount=false
case "${1:-}" in
--unmount)
    unmount=true
    shift
    ;;
-h | --help) usage ;;
esac
[ $# -eq 1 ] || usage
DIR="$(realpath -m "$1")"

if [ "$(id -u)" -ne 0 ]; then
    echo "btrfs-image: must run as root (it loop-mounts filesystems); try: sudo $0 $*" >&2
    exit 1
fi

# fstype MOUNTPOINT: the filesystem type mounted exactly at MOUNTPOINT, or nothing.
fstype() {
    findmnt -n -o FSTYPE --mountpoint "$1" 2>/dev/null || true
}

if $unmount; then
    for fs in btrfs xfs; do
        mnt="$DIR/$fs"
        if [ -n "$(fstype "$mnt")" ]; then
            umount "$mnt"
            log "unmounted $mnt"
        fi
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

ensure_tool mkfs.btrfs btrfs-progs
ensure_tool mkfs.xfs xfsprogs

mkdir -p "$DIR"

# setup FS IMAGE MOUNTPOINT MKFS...: make IMAGE (once), format it, mount it.
setup() {
    local fs="$1" img="$2" mnt="$3"
    shift 3
    mkdir -p "$mnt"
    local current
    current="$(fstype "$mnt")"
    if [ "$current" = "$fs" ]; then
        log "$mnt already has $fs mounted"
    elif [ -n "$current" ]; then
        echo "btrfs-image: $mnt has $current mounted, expected $fs; unmount it first ($0 --unmount $DIR)" >&2
        exit 1
    else
        if [ ! -f "$img" ] || [ "$(blkid -o value -s TYPE "$img" 2>/dev/null || true)" != "$fs" ]; then
            log "creating $SIZE sparse $fs image $img"
            rm -f "$img"
            truncate -s "$SIZE" "$img"
            "$@" "$img" >&2
        fi
        mount -o loop "$img" "$mnt"
        log "mounted $img at $mnt"
    fi
    chmod 0755 "$mnt"
    # Direct I/O from the loop device to its image: otherwise every block is
    # cached twice (in the filesystem on the image and in the image file's
    # own page cache) and a flush of the test filesystem (a btrfs snapshot,
    # syncfs) writes the image file back then, unlike a real disk.
    local dev
    dev="$(findmnt -n -o SOURCE --mountpoint "$mnt")"
    case "$dev" in
    /dev/loop*)
        losetup --direct-io=on "$dev" ||
            log "$dev: direct I/O refused by the filesystem under $img; keeping buffered I/O"
        ;;
    esac
}

setup btrfs "$DIR/btrfs.img" "$DIR/btrfs" mkfs.btrfs -q
setup xfs "$DIR/xfs.img" "$DIR/xfs" mkfs.xfs -q -m reflink=1

echo "SQLRS_TEST_BTRFS=$DIR/btrfs"
echo "SQLRS_TEST_XFS=$DIR/xfs"
