#!/usr/bin/env bash
# Runs `make deps` and then a command (default: `make all test`) in a fresh Debian 12 root, to
# check that `make deps` installs everything the build and the tests need and that nothing leans
# on what happens to be installed here.
#
#   tests/fresh-root.sh [-k] [-c CACHE] [COMMAND...]
#     COMMAND run in the source dir after `make deps` (default: make all test), e.g.
#             make all test-unit, or
#             sh -c 'make all && python3 -m pytest -q tests/integration/test_terminals.py'
#     -c      where the root is kept (default /var/tmp/warren-fresh-root): CACHE/base is a
#             debootstrap'd bookworm minbase plus `make`, made once and kept; each run copies
#             it to CACHE/run, so every run starts from the fresh root
#     -k      reuse CACHE/run as the last run left it (its packages installed): quicker when
#             repeating a check, no longer fresh
#
# The root is entered the way a machine boots into one: a mount namespace of its own (nothing
# mounted here shows outside, and it all goes when the script ends), the root bind-mounted onto
# itself and made / with pivot_root (not chroot: the daemon needs / to be a mount point), with
# /proc, /sys (cgroups included), /dev and /run. /tmp stays on the root's own disk: the tests'
# sandbox disks are sparse files there. The source is the work tree's tracked and untracked
# (not ignored) files, copied to /src: what is built is what a fresh clone plus your changes has.
# Runs as root; needs debootstrap (apt-get install debootstrap) and the Debian archive.
set -euo pipefail

cache=/var/tmp/warren-fresh-root
reuse=0
while getopts "kc:" opt; do
    case $opt in
    k) reuse=1 ;;
    c) cache=$OPTARG ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || set -- make all test

repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "fresh-root: run as root" >&2; exit 1; }
case $cache in "$repo"/*) echo "fresh-root: keep the root outside the repo" >&2; exit 1 ;; esac

mkdir -p "$cache"
if [ ! -x "$cache/base/usr/bin/make" ]; then
    command -v debootstrap >/dev/null || { echo "fresh-root: needs debootstrap" >&2; exit 1; }
    echo "fresh-root: debootstrap bookworm into $cache/base (once)"
    rm -rf "$cache/base.tmp"
    debootstrap --variant=minbase --include=make bookworm "$cache/base.tmp" \
        http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    mv "$cache/base.tmp" "$cache/base"
fi

root=$cache/run
if [ "$reuse" = 0 ] || [ ! -d "$root" ]; then
    rm -rf "$root"
    cp -a "$cache/base" "$root"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
rm -rf "$root/src"
mkdir -p "$root/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    tar --null --no-recursion --ignore-failed-read -T - -cf -) | tar -C "$root/src" -xf -

echo "fresh-root: make deps, then $*, in $root"
exec unshare --mount --propagation private -- /bin/bash -euo pipefail -c '
root=$1
shift
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
cd "$root"
mkdir -p .old-root
pivot_root . .old-root
cd /
umount -l /.old-root
rmdir /.old-root
cd /src
exec env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 WARREN_BIN=/src/build/warren \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/sh -c "make deps && exec \"\$@\"" make-deps "$@"
' fresh-root "$root" "$@"
