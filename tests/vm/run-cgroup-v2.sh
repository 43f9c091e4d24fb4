#!/usr/bin/env bash
# cgroup v2 for real, whatever the host runs: boots Debian 12's own kernel (linux-image-amd64)
# under qemu (TCG, no KVM needed) with cgroup v1 disabled (cgroup_no_v1=all), on a debootstrap'd
# Debian 12 root holding warren's runtime libraries, and runs tests/vm/cgroup_v2.py there against
# this checkout's daemon: from a delegated cgroup (as systemd's Delegate=yes gives) and from the
# root cgroup. One PASS/FAIL line per step comes back through the serial console.
#
#   tests/vm/run-cgroup-v2.sh [BUILD_DIR]        (make test-cgroup-v2; BUILD_DIR defaults to build)
#
# Installs what it needs (qemu, debootstrap, busybox-static, ...). The kernel with the modules
# the initramfs loads, and the root image, are cached in $WARREN_VM_CACHE (default
# /var/cache/warren-vm), each under a hash of what it is made from (kernel package and version;
# Debian suite and package list), so a warm run only packs the build into an initramfs and
# boots. The root image is never written: the VM's writes go to a throw-away overlay. Exits
# non-zero when a step fails, or when the VM has not finished after $WARREN_VM_TIMEOUT seconds
# (default 300). Runs one VM at a time (a lock in the cache dir).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "${1:-$HERE/../../build}" && pwd)
CACHE=${WARREN_VM_CACHE:-/var/cache/warren-vm}
TIMEOUT=${WARREN_VM_TIMEOUT:-300}
SUITE=bookworm
# The drivers the initramfs must load: the root disk (virtio-blk on PCI, ext4) and what the
# daemon needs besides (loop devices for the sandboxes' disks, overlayfs).
MODULES="virtio_pci virtio_blk ext4 loop overlay"
# The root's packages besides the daemon's libraries: mkfs.ext4 for the sandboxes' disks, and
# python3 for the driver (and the OOM step's memory hog).
ROOT_PKGS="e2fsprogs python3"
# Bump when the way the root is made changes, to rebuild cached roots.
ROOT_RECIPE=1
VM_DEBS="qemu-system-x86 debootstrap busybox-static cpio kmod e2fsprogs"

log() { echo "cgroup-v2 vm: $*"; }
die() {
    echo "cgroup-v2 vm: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (it installs packages, debootstraps a root and boots a VM)"
for f in warren warren-init; do
    [ -x "$BUILD/$f" ] || die "$BUILD/$f is missing: build first (make all)"
done

apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        apt_updated=1
    fi
}

missing=""
for p in $VM_DEBS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    log "installing Debian packages:$missing"
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing \
        >/dev/null || die "cannot install:$missing"
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 900 9 || die "another run has held $CACHE/lock for 15 minutes"
rm -rf "$CACHE"/tmp.* # what a killed run was making
t_start=$(date +%s)

sha() { sha256sum | cut -c1-16; }

# --- kernel + modules ----------------------------------------------------------------------
kernel_pkg() {
    # awk reads it all: with pipefail, an early exit would fail the pipeline on SIGPIPE.
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ && !n++ { print $2 }'
}
kpkg=$(kernel_pkg)
if [ -z "$kpkg" ]; then
    apt_update
    kpkg=$(kernel_pkg)
fi
[ -n "$kpkg" ] || die "apt knows no linux-image-amd64 (no Debian source configured?)"
kver=$(apt-cache policy "$kpkg" | sed -n 's/ *Candidate: //p')
krel=${kpkg#linux-image-}
boot="$CACHE/boot-$(echo "$kpkg=$kver $MODULES" | sha)"
if [ -f "$boot/ok" ]; then
    log "kernel $kpkg $kver: cached"
else
    log "kernel $kpkg $kver: downloading"
    tmp=$(mktemp -d "$CACHE/tmp.XXXXXX")
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg=$kver" >/dev/null 2>&1) || {
        apt_update
        (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg=$kver" >/dev/null)
    } || die "cannot download $kpkg=$kver"
    dpkg-deb -x "$tmp"/*.deb "$tmp/x"
    depmod -b "$tmp/x" "$krel"
    mkdir -p "$tmp/boot/modules"
    cp "$tmp/x/boot/vmlinuz-$krel" "$tmp/boot/vmlinuz"
    for m in $MODULES; do
        modprobe -d "$tmp/x" -S "$krel" --show-depends "$m" || die "kernel $krel has no module $m"
    done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' >"$tmp/kos"
    # busybox insmod takes plain .ko files only.
    while read -r ko; do
        name=$(basename "$ko")
        case "$name" in
        *.ko.xz) xz -dc "$ko" >"$tmp/boot/modules/${name%.xz}" ;;
        *.ko.zst) zstd -qdc "$ko" >"$tmp/boot/modules/${name%.zst}" ;;
        *) cp "$ko" "$tmp/boot/modules/" ;;
        esac
        name=${name%.xz}
        echo "${name%.zst}" >>"$tmp/boot/modules/order"
    done <"$tmp/kos"
    touch "$tmp/boot/ok"
    rm -rf "$CACHE"/boot-*
    mv "$tmp/boot" "$boot"
    rm -rf "$tmp"
fi

# --- root image ----------------------------------------------------------------------------
# The packages that ship the daemon's shared libraries, as the host's build links them (dpkg
# knows some by the path ldd prints, others by the real one, with a merged /usr).
runtime_pkgs() {
    ldd "$BUILD/warren" | awk '/=> \// { print $3 }' | while read -r lib; do
        echo "$lib"
        readlink -f "$lib"
    done | { xargs dpkg -S 2>/dev/null || true; } | cut -d: -f1 | sort -u
}
pkgs=$( (runtime_pkgs; echo $ROOT_PKGS | tr ' ' '\n') | sort -u | paste -sd, -)
# Where apt gets the suite from here.
suite_mirror() {
    apt-get indextargets --format '$(REPO_URI)' "Release: $SUITE" 'Identifier: Packages' |
        awk '!n++'
}
root_img="$CACHE/root-$(echo "$SUITE $pkgs $ROOT_RECIPE" | sha).img"
if [ -f "$root_img" ]; then
    log "root ($SUITE: $pkgs): cached"
else
    log "root ($SUITE: $pkgs): debootstrap"
    mirror=$(suite_mirror)
    if [ -z "$mirror" ]; then
        apt_update
        mirror=$(suite_mirror)
    fi
    [ -n "$mirror" ] || die "no apt source for Debian $SUITE to debootstrap from"
    tmp=$(mktemp -d "$CACHE/tmp.XXXXXX")
    nice -n 10 debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$tmp/root" "$mirror" \
        >"$tmp/debootstrap.log" 2>&1 || {
        tail -20 "$tmp/debootstrap.log" >&2
        die "debootstrap failed"
    }
    rm -rf "$tmp/root/var/cache/apt/archives"/*.deb "$tmp/root/var/lib/apt/lists"/*
    # Sparse: 4 GiB leaves room for the daemon's free-space check on sandbox disks.
    mkfs.ext4 -q -F -L warren-vm-root -d "$tmp/root" "$tmp/root.img" 4G
    rm -f "$CACHE"/root-*.img
    mv "$tmp/root.img" "$root_img"
    rm -rf "$tmp"
fi
t_ready=$(date +%s)

# --- this run: initramfs with the build, then boot -----------------------------------------
run=$(mktemp -d /tmp/warren-vm.XXXXXX)
qpid=""
cleanup() {
    [ -z "$qpid" ] || kill "$qpid" 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT
mkdir -p "$run/initrd/bin" "$run/initrd/dev" "$run/initrd/proc" "$run/initrd/sys" \
    "$run/initrd/newroot" "$run/initrd/payload"
cp "$(dpkg -L busybox-static | awk '/\/bin\/busybox$/ && !n++')" "$run/initrd/bin/busybox"
mknod -m 600 "$run/initrd/dev/console" c 5 1
cp -r "$boot/modules" "$run/initrd/modules"
cp "$HERE/initramfs-init.sh" "$run/initrd/init"
chmod 755 "$run/initrd/init"
cp "$BUILD/warren" "$BUILD/warren-init" "$HERE/cgroup_v2.py" "$run/initrd/payload/"
(cd "$run/initrd" && find . | cpio -o -H newc --quiet) >"$run/initrd.cpio"

smp=$(($(nproc) < 2 ? 1 : 2))
console="$run/console.log"
: >"$console"
log "booting $krel under qemu (TCG, $smp vcpu), at most ${TIMEOUT}s"
nice -n 10 timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 \
    -nodefaults -machine pc -accel tcg -cpu max -smp "$smp" -m 2048 \
    -kernel "$boot/vmlinuz" -initrd "$run/initrd.cpio" \
    -append "console=ttyS0 panic=-1 cgroup_no_v1=all loglevel=3" \
    -drive "file=$root_img,format=raw,if=virtio,snapshot=on" \
    -nic none -vga none -display none -no-reboot \
    -chardev "file,id=con,path=$console" -serial chardev:con &
qpid=$!
tail -n +1 -f --pid="$qpid" "$console" | tr -d '\r' &
tpid=$!
rc=0
wait "$qpid" || rc=$?
qpid=""
wait "$tpid" || true
t_end=$(date +%s)

summary=$(tr -d '\r' <"$console" | grep -E '^cgroup-v2: [0-9]+ passed, [0-9]+ failed$' | tail -1 || true)
log "setup $((t_ready - t_start))s, VM $((t_end - t_ready))s"
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    die "the VM did not finish within ${TIMEOUT}s"
fi
[ -n "$summary" ] || die "the VM ended (qemu status $rc) without a result line"
failed=$(echo "$summary" | sed 's/.* \([0-9]*\) failed$/\1/')
passed=$(echo "$summary" | sed 's/^cgroup-v2: \([0-9]*\) passed.*/\1/')
[ "$failed" = 0 ] && [ "$passed" -gt 0 ] || die "$failed step(s) failed"
