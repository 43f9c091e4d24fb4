#!/bin/busybox sh
# PID 1 of the cgroup v2 test VM's initramfs (see run-cgroup-v2.sh). Debian's kernel keeps the
# virtio, ext4, loop and overlay drivers in modules: load them, mount the root disk, put this
# run's build and driver in it, mount what a systemd host would (cgroup2 alone, with systemd's
# options), and hand over to the driver. A busybox shell stays PID 1 there: it reaps the
# orphans a killed daemon leaves, and powers the VM off when the driver is done.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "cgroup-v2 FAIL initramfs: $*"
    echo "cgroup-v2: 0 passed, 1 failed"
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# modprobe --show-depends order, dependencies first. A failure is not fatal by itself
# (crc32c-intel needs SSE4.2, which the emulated CPU may lack: crc32c_generic stands in); what
# is needed is checked by its effect below.
while read -r ko; do
    insmod "/modules/$ko" 2>/dev/null || echo "initramfs: insmod $ko failed"
done </modules/order

# virtio devices are probed asynchronously.
i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ "$i" -le 300 ] || fail "no /dev/vda after 30 s"
    sleep 0.1
done
[ -c /dev/loop-control ] || fail "no /dev/loop-control: the loop module did not load"
mount -t ext4 /dev/vda /newroot || fail "cannot mount the root disk"

mkdir -p /newroot/opt/warren-vm
cp /payload/* /bin/busybox /newroot/opt/warren-vm/ || fail "cannot copy the payload"
for d in proc sys dev; do
    mount --move "/$d" "/newroot/$d" || fail "cannot move /$d"
done
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /newroot/sys/fs/cgroup ||
    fail "cannot mount cgroup2"
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=0755 tmpfs /newroot/run

exec switch_root /newroot /opt/warren-vm/busybox sh -c '
    export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
    /opt/warren-vm/busybox hostname warren-vm
    /opt/warren-vm/busybox ip link set lo up
    python3 /opt/warren-vm/cgroup_v2.py </dev/null >/dev/console 2>&1 ||
        echo "cgroup-v2 FAIL driver: exited with status $?" >/dev/console
    sync
    /opt/warren-vm/busybox poweroff -f'
