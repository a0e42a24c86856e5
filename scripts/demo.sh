#!/usr/bin/env bash
# make demo: start an appliance on loopback, show the CLI, stop it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN_DIR:-$repo/build/bin}
dir=$(mktemp -d /tmp/xmem-demo-XXXXXX)
pid=""
cleanup() {
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

"$bin/xmem" secret new "$dir/secret" >/dev/null
# a 64 GiB pool on any machine: it is reserved, not touched
"$bin/xmemd" --listen 127.0.0.1:0 --pool 64G --secret-file "$dir/secret" --log-level warn \
  >"$dir/xmemd.out" 2>"$dir/xmemd.err" &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$dir/xmemd.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^xmemd listening on //p' "$dir/xmemd.out")
[[ -n "$addr" ]] || { cat "$dir/xmemd.err"; exit 1; }
echo "xmemd (pid $pid) serves a 64 GiB pool on $addr over libfabric tcp"
# a tenant works with a credential of its own, issued with the cluster secret
step "$bin/xmem" --secret-file "$dir/secret" tenant add demo --out "$dir/demo.cred"
export XMEM_APPLIANCE=$addr XMEM_SECRET_FILE=$dir/demo.cred

step "$bin/xmem" stat
step "$bin/xmem" region create --size 48G --name dataset
step "$bin/xmem" region create --size 16M --name notes
echo "xmem: external memory, one-sided access" > "$dir/msg"
step "$bin/xmem" put notes --offset 4096 < "$dir/msg"
printf '\n$ xmem get notes --offset 4096 --length %s\n' "$(stat -c %s "$dir/msg")"
"$bin/xmem" get notes --offset 4096 --length "$(stat -c %s "$dir/msg")"
head -c 8M /dev/urandom > "$dir/blob"
step "$bin/xmem" put dataset --offset 40G < "$dir/blob"
printf '\n$ xmem get dataset --offset 40G --length 8M | cmp - blob\n'
"$bin/xmem" get dataset --offset 40G --length 8M | cmp - "$dir/blob" && echo "8 MiB round trip at offset 40 GiB: identical"
step "$bin/xmem" region ls
echo
echo "xmemd's resident memory: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status) for a 48 GiB region (only what was written is in memory)"
step "$bin/xmem" bench --sizes 8,4K,64K,1M --iters 500
step "$bin/xmem" region rm dataset
step "$bin/xmem" region rm notes
step "$bin/xmem" stat

# ---- a local cluster: an allocation manager and three appliances -------------
printf '\n\033[1m# An allocation manager and three appliances (xmem up), one allocation striped over all of them\033[0m\n'
export XMEM_RUN_DIR=$dir/cluster
unset XMEM_APPLIANCE
cleanup_cluster() { "$bin/xmem" down 2>/dev/null || true; cleanup; }
trap cleanup_cluster EXIT
printf '\n\033[1m$ eval $(xmem up --appliances 3 --pool 8G)\033[0m\n'
eval "$("$bin/xmem" up --appliances 3 --pool 8G)"
step "$bin/xmem" appliances
step "$bin/xmem" alloc --size 12G --policy stripe:3:1M --name striped
step "$bin/xmem" put striped --offset 5G < "$dir/blob"
printf '\n$ xmem get striped --offset 5G --length 8M | cmp - blob\n'
"$bin/xmem" get striped --offset 5G --length 8M | cmp - "$dir/blob" && echo "8 MiB written across three appliances and read back: identical"
step "$bin/xmem" ls
step "$bin/xmem" appliances
printf '\n\033[1m# kill -9 one appliance: the allocation turns degraded\033[0m\n'
kill -9 "$(cat "$XMEM_RUN_DIR/xmemd-1.pid")"
sleep 3
step "$bin/xmem" ls
step "$bin/xmem" appliances
step "$bin/xmem" free striped
printf '\n$ xmem down\n'
"$bin/xmem" down

# ---- mapped external memory (xm_map) ------------------------------------------
printf '\n\033[1m# Mapped external memory: sort a 64 MiB data set that lives on the appliance, through a 16 MiB local cache\033[0m\n'
unset XMEM_MANAGER
export XMEM_APPLIANCE=$addr XMEM_SECRET_FILE=$dir/demo.cred
step "$bin/map_sort" 64M
