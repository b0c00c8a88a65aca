#!/usr/bin/env bash
# A real filesystem on a volume: nbdfuse exposes the export as a file, a loop
# device turns it into a block device, ext4 on top. Files written, checked
# after remount, after a server restart, and fsck is clean throughout; a
# snapshot of it mounted read-only from its snapshot export shows the files
# as they were.
source "$(dirname "$0")/lib.sh"
need nbdfuse fusermount3 losetup mkfs.ext4 e2fsck mount umount sha256sum fstrim

[ "$(id -u)" -eq 0 ] || skip "needs root (loop devices, mount)"
[ -c /dev/fuse ] || skip "no /dev/fuse"
[ -e /dev/loop-control ] || [ -b /dev/loop0 ] || skip "no loop devices"
losetup -f >/dev/null 2>&1 || skip "no free loop device"

ebs volume create fsvol --type gp3 --size 1G --throughput 750 >/dev/null
start_server

F="$T/fuse"      # nbdfuse mountpoint; the export is the file $F/disk
MNT="$T/mnt"     # ext4 mountpoint
mkdir -p "$F" "$MNT"
FUSE_PID="" LOOP="" MOUNTED=""

# fuse_up [EXPORT [ro]]: the export (default fsvol) on a loop device; ro:
# nbdfuse --readonly and a read-only loop device.
fuse_up() {
  local export=${1:-fsvol} ro=${2:-}
  rm -f "$T/nbdfuse.pid"
  nbdfuse ${ro:+--readonly} -P "$T/nbdfuse.pid" "$F/disk" "$(uri "$export")" 2>"$T/nbdfuse.log" &
  FUSE_PID=$!
  for _ in $(seq 1 200); do
    [ -s "$T/nbdfuse.pid" ] && [ -f "$F/disk" ] && break
    kill -0 "$FUSE_PID" 2>/dev/null || { cat "$T/nbdfuse.log"; FUSE_PID=""; fail "nbdfuse exited"; }
    sleep 0.05
  done
  [ -f "$F/disk" ] || fail "nbdfuse: $F/disk did not appear"
  [ "$(stat -c %s "$F/disk")" -eq $((1 << 30)) ] || fail "nbdfuse file size $(stat -c %s "$F/disk")"
  LOOP=$(losetup -f --show ${ro:+-r} "$F/disk") || fail "losetup"
}

fuse_down() {
  if [ -n "$MOUNTED" ]; then umount "$MNT" || umount -l "$MNT"; MOUNTED=""; fi
  if [ -n "$LOOP" ]; then losetup -d "$LOOP"; LOOP=""; fi
  if [ -n "$FUSE_PID" ]; then
    # Unmounting makes nbdfuse flush, disconnect and exit; kill it only if not.
    fusermount3 -u "$F" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$FUSE_PID" 2>/dev/null || break; sleep 0.05; done
    kill "$FUSE_PID" 2>/dev/null || true
    wait "$FUSE_PID" 2>/dev/null || true
    FUSE_PID=""
  fi
  # The loop device is really gone (losetup -d is asynchronous while busy).
  mountpoint -q "$F" && fusermount3 -uz "$F" 2>/dev/null || true
}
# On any exit: unmount, detach, stop nbdfuse (before lib.sh stops the server).
on_exit fuse_down

do_mount() { mount -t ext4 "$@" "$LOOP" "$MNT" || fail "mount $*"; MOUNTED=1; }
do_umount() { sync -f "$MNT"; umount "$MNT" || fail "umount"; MOUNTED=""; }

fsck_clean() {
  local out rc=0
  out=$(e2fsck -fn "$LOOP" 2>&1) || rc=$?
  [ $rc -eq 0 ] || { echo "$out"; fail "e2fsck -fn $1: exit $rc"; }
  pass "e2fsck -fn clean ($1)"
}

# --- mkfs, mount, write a tree ---------------------------------------------
fuse_up
mkfs.ext4 -q -F -L ebs-e2e "$LOOP" || fail "mkfs.ext4"
do_mount
mkdir -p "$MNT/tree/a/b/c" "$MNT/tree/empty-dir" "$MNT/tree/many"
head -c $((8 << 20)) /dev/urandom >"$MNT/tree/big.bin"
head -c $((3 << 20)) /dev/urandom >"$MNT/tree/a/three-mib.bin"
for i in $(seq 1 40); do head -c $((i * 7919)) /dev/urandom >"$MNT/tree/many/f$i"; done
for i in $(seq 1 200); do echo "small file $i" >"$MNT/tree/a/b/c/s$i.txt"; done
: >"$MNT/tree/empty"
ln -s ../big.bin "$MNT/tree/a/link-to-big"
dd if=/dev/zero of="$MNT/tree/sparse" bs=1M seek=50 count=1 status=none
(cd "$MNT" && find tree -type f -print0 | sort -z | xargs -0 sha256sum) >"$T/sums"
[ "$(wc -l <"$T/sums")" -ge 240 ] || fail "tree has only $(wc -l <"$T/sums") files"
(cd "$MNT" && find tree | sort) >"$T/listing"
df -h "$MNT" | tail -n1
do_umount
pass "mkfs.ext4, mount, wrote $(wc -l <"$T/sums") files (~12 MiB + a sparse one)"
fuse_down

# --- fresh nbdfuse + loop: fsck, remount, verify --------------------------
fuse_up
fsck_clean "fresh nbdfuse after first unmount"
do_mount -o ro
(cd "$MNT" && sha256sum --quiet -c "$T/sums") || fail "checksums after remount"
diff <(cd "$MNT" && find tree | sort) "$T/listing" || fail "listing after remount"
[ "$(readlink "$MNT/tree/a/link-to-big")" = ../big.bin ] || fail "symlink"
do_umount
pass "contents identical after remount"
fuse_down

# --- restart the server, remount, verify, modify ---------------------------
stop_server
start_server
fuse_up
fsck_clean "after server restart"
do_mount
(cd "$MNT" && sha256sum --quiet -c "$T/sums") || fail "checksums after server restart"
diff <(cd "$MNT" && find tree | sort) "$T/listing" || fail "listing after server restart"
pass "contents identical after server restart"
# Delete, trim, rewrite. fstrim's discards go down the loop device and
# nbdfuse to the volume as NBD TRIMs, which punch holes in its data file: the
# file's allocation must shrink by about what was deleted (~6 MiB).
rm -rf "$MNT/tree/many"
sync -f "$MNT"
alloc() { echo $(($(stat -c '%b * %B' "$EBS_DATA_DIR/volumes/$(ebs volume describe fsvol --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])').img"))); }
before=$(alloc)
out=$(fstrim -v "$MNT" 2>&1) || fail "fstrim through loop + nbdfuse failed: $out"
trimmed=$(echo "$out" | sed -n 's/.*(\([0-9]*\) bytes) trimmed.*/\1/p')
[ "${trimmed:-0}" -gt 0 ] || fail "fstrim trimmed nothing: $out"
after=$(alloc)
[ $((before - after)) -ge $((4 << 20)) ] \
  || fail "fstrim ($out) freed only $((before - after)) bytes of the volume's data file ($before -> $after allocated)"
pass "fstrim: $out; the data file's allocation went from $before to $after bytes"
head -c $((2 << 20)) /dev/urandom >"$MNT/tree/new.bin"
sha256sum "$MNT/tree/new.bin" | sed "s|$MNT/||" >"$T/sums2"
do_umount
fuse_down

stop_server
start_server
fuse_up
fsck_clean "after delete, rewrite, trim and a second restart"
do_mount -o ro
(cd "$MNT" && sha256sum --quiet -c "$T/sums2") || fail "new file after restart"
[ ! -e "$MNT/tree/many" ] || fail "deleted directory is back"
(cd "$MNT" && grep -v '^[0-9a-f]*  tree/many/' "$T/sums" | sha256sum --quiet -c -) || fail "remaining files"
do_umount
fuse_down
pass "changes persisted across a second restart"

# --- a snapshot mounted read-only, straight from the store -----------------
SNAP=$(ebs snapshot create fsvol --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
# The volume moves on; the snapshot must not.
fuse_up
do_mount
rm -rf "$MNT/tree/a"
echo "written after the snapshot" >"$MNT/after-snapshot.txt"
do_umount
fuse_down
fuse_up "$SNAP" ro
do_mount -o ro,noload
(cd "$MNT" && sha256sum --quiet -c "$T/sums2") || fail "snapshot $SNAP: new.bin"
(cd "$MNT" && grep -v '^[0-9a-f]*  tree/many/' "$T/sums" | sha256sum --quiet -c -) || fail "snapshot $SNAP: files"
[ ! -e "$MNT/after-snapshot.txt" ] || fail "snapshot $SNAP shows a file written after it"
[ "$(readlink "$MNT/tree/a/link-to-big")" = ../big.bin ] || fail "snapshot $SNAP: symlink"
if touch "$MNT/x" 2>/dev/null; then fail "a file was created on the read-only snapshot mount"; fi
umount "$MNT" || fail "umount $SNAP"
MOUNTED=""
fuse_down
pass "snapshot export $SNAP mounted read-only (nbdfuse --readonly, losetup -r, ext4 ro,noload): files as they were"

stop_server
pass "server stopped cleanly"
