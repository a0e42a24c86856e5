#!/usr/bin/env bash
# Peers of an xmem mapping (issue 4): the bench/map_workloads.h workloads on
# plain local memory, on a mapped file under a cgroup v1 memory limit, and on
# anonymous memory under that limit with the kernel swapping to zram.
# Needs root. Sets up a zram swap device for the run and removes it on exit
# (swap areas that existed before are left as they were); map_peers makes and
# removes its own cgroups (/sys/fs/cgroup/memory/xmem-bench-<pid>-*).
# Builds nothing: `make bench` builds the release preset first.
# Output goes to stdout and to $OUT (default build/bench-map-peers.txt).
#
#   BIN_DIR    where map_peers is (default build/bin)
#   OUT        results file (default build/bench-map-peers.txt)
#   SIZE       working set (default 4G)
#   FRACTIONS  local memory, % of the working set (default 100,75,50,25)
#   WORKLOADS  default scan,gups,pages,sort
#   BUDGET     seconds after which gups/pages on file/zram stop and are scaled (default 30)
#   TIMEOUT    seconds per measurement before it is killed, reported as "> TIMEOUT" (default 600)
#   ZRAM_ALGO  zram compressor (default: the kernel's, lzo-rle)
#   DIR        where the mapped file goes (default /var/tmp)
#   EXTRA      more map_peers options
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN_DIR=${BIN_DIR:-$REPO/build/bin}
OUT=${OUT:-$REPO/build/bench-map-peers.txt}
SIZE=${SIZE:-4G}
FRACTIONS=${FRACTIONS:-100,75,50,25}
WORKLOADS=${WORKLOADS:-scan,gups,pages,sort}
BUDGET=${BUDGET:-30}
TIMEOUT=${TIMEOUT:-600}
DIR=${DIR:-/var/tmp}

if [[ ! -x "$BIN_DIR/map_peers" ]]; then
  echo "bench-map-peers.sh: $BIN_DIR/map_peers missing: run 'make bench' (or set BIN_DIR)" >&2
  exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "bench-map-peers.sh: needs root (cgroups, swapon)" >&2
  exit 1
fi

# bytes of SIZE (4G, 512M, 65536)
to_bytes() {
  local v=${1%[iB]}; v=${v%i}
  case $v in
    *[kK]) echo $(( ${v%?} << 10 )) ;;
    *[mM]) echo $(( ${v%?} << 20 )) ;;
    *[gG]) echo $(( ${v%?} << 30 )) ;;
    *) echo $(( v )) ;;
  esac
}
SIZE_BYTES=$(to_bytes "$SIZE")

ZDEV=""       # /dev/zramN we set up
ZNUM=""       # N if we hot-added it (then we hot-remove it)
ZSWAPON=0
MP_PID=""
WORK=$(mktemp -d "$DIR/xmem-map-peers.XXXXXX")

cleanup() {
  set +e
  if [[ -n "$MP_PID" ]]; then
    kill -TERM "$MP_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$MP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$MP_PID" 2>/dev/null
    wait "$MP_PID" 2>/dev/null
    # map_peers removes its cgroups itself; these are left only if it was killed
    for cg in /sys/fs/cgroup/memory/xmem-bench-"$MP_PID"-*; do
      [[ -d "$cg" ]] && rmdir "$cg" 2>/dev/null
    done
  fi
  if [[ -n "$ZDEV" ]]; then
    if (( ZSWAPON )); then
      # swapoff of a half-full device pages everything back in: bounded, 10 min
      timeout 600 swapoff "$ZDEV" || echo "bench-map-peers.sh: swapoff $ZDEV failed" >&2
    fi
    echo 1 >"/sys/block/${ZDEV#/dev/}/reset" 2>/dev/null
    if [[ -n "$ZNUM" ]]; then
      echo "$ZNUM" >/sys/class/zram-control/hot_remove 2>/dev/null
    fi
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mkdir -p "$(dirname "$OUT")"
: >"$OUT"
exec > >(tee -a "$OUT") 2>&1

echo "bench-map-peers.sh, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, $(uname -r)"
echo "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), binary $BIN_DIR/map_peers"
echo "swap before: $(tail -n +2 /proc/swaps | awk '{print $1}' | tr '\n' ' ')"

# zram: a device of our own (hot_add), else a free zram0; skipped if none
if [[ ! -d /sys/class/zram-control ]] && command -v modprobe >/dev/null; then
  modprobe zram num_devices=1 2>/dev/null || true
fi
if [[ -r /sys/class/zram-control/hot_add ]]; then
  ZNUM=$(cat /sys/class/zram-control/hot_add)
  ZDEV=/dev/zram$ZNUM
elif [[ -e /sys/block/zram0 ]] && [[ $(cat /sys/block/zram0/disksize) == 0 ]]; then
  ZDEV=/dev/zram0
fi
ZRAM_ARGS=()
if [[ -n "$ZDEV" ]]; then
  for _ in $(seq 50); do [[ -b "$ZDEV" ]] && break; sleep 0.1; done
  zsys=/sys/block/${ZDEV#/dev/}
  if [[ -n "${ZRAM_ALGO:-}" ]]; then echo "$ZRAM_ALGO" >"$zsys/comp_algorithm"; fi
  # the whole working set fits, plus room for the program itself
  echo $(( SIZE_BYTES + (64 << 20) )) >"$zsys/disksize"
  mkswap "$ZDEV" >/dev/null
  swapon -p 32767 "$ZDEV"
  ZSWAPON=1
  ZRAM_ARGS=(--zram "$ZDEV")
  echo "zram: $ZDEV, disksize $(cat "$zsys/disksize") B, $(cat "$zsys/comp_algorithm"), swap priority 32767"
else
  echo "zram: not available (no /sys/class/zram-control, no free zram0): zram rows skipped"
fi
echo "transparent huge pages: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo '?')"
echo "vm.swappiness $(cat /proc/sys/vm/swappiness), dirty_ratio $(cat /proc/sys/vm/dirty_ratio), dirty_background_ratio $(cat /proc/sys/vm/dirty_background_ratio)"
echo "file system of $DIR: $(df --output=source,fstype "$DIR" | tail -1)"
echo

START=$(date +%s)
set +e
# shellcheck disable=SC2086
"$BIN_DIR/map_peers" --size "$SIZE" --fractions "$FRACTIONS" --workloads "$WORKLOADS" \
  --dir "$WORK" --budget "$BUDGET" --timeout "$TIMEOUT" "${ZRAM_ARGS[@]}" ${EXTRA:-} &
MP_PID=$!
wait "$MP_PID"
RC=$?
MP_PID=""
set -e
echo "bench-map-peers.sh: $(( $(date +%s) - START )) s, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "results written to $OUT"
exit "$RC"
