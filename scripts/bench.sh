#!/usr/bin/env bash
# Run every xmem benchmark against daemons it starts on 127.0.0.1, and stop
# them all on exit. Builds nothing: `make bench` builds the release preset
# first. Output goes to stdout and to $OUT (default build/bench-results.txt).
#
#   BIN_DIR   where xmemd, xmem, kv_compare, region_create are (default build/bin)
#   OUT       results file (default build/bench-results.txt)
#   ITERS     kv_compare GETs per peer (default 20000)
#   BENCH_ITERS  `xmem bench --iters` (default: its own, 2000)
#   REGIONS   region_create --count (default 20)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN_DIR=${BIN_DIR:-$REPO/build/bin}
OUT=${OUT:-$REPO/build/bench-results.txt}
ITERS=${ITERS:-20000}
REGIONS=${REGIONS:-20}
BENCH_ARGS=()
if [[ -n "${BENCH_ITERS:-}" ]]; then BENCH_ARGS=(--iters "$BENCH_ITERS"); fi

for b in xmemd xmem kv_compare region_create xfer_floor; do
  if [[ ! -x "$BIN_DIR/$b" ]]; then
    echo "bench.sh: $BIN_DIR/$b missing: run 'make bench' (or set BIN_DIR)" >&2
    exit 1
  fi
done
for b in memcached redis-server; do
  if ! command -v "$b" >/dev/null; then
    echo "bench.sh: $b not installed: run scripts/install-deps.sh --bench" >&2
    exit 1
  fi
done

TMP=$(mktemp -d /tmp/xmem-bench.XXXXXX)
PIDS=()
# stop_pid PID: SIGTERM, up to ~5 s, then SIGKILL
stop_pid() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$(dirname "$OUT")"
: >"$OUT"
# everything printed from here on goes to the terminal and to $OUT
exec > >(tee -a "$OUT") 2>&1

SECRET=$TMP/secret
"$BIN_DIR/xmem" secret new "$SECRET" >/dev/null
# the benchmarks are clients: they work as a tenant, with a credential of their own
CRED=$TMP/bench.cred
"$BIN_DIR/xmem" --secret-file "$SECRET" tenant add bench --out "$CRED" >/dev/null

# start_xmemd NAME ARGS...: starts xmemd, waits for "xmemd listening on HOST:PORT",
# and sets ADDR to HOST:PORT and XMEMD_PID.
start_xmemd() {
  local name=$1; shift
  local log=$TMP/$name.out
  "$BIN_DIR/xmemd" --listen 127.0.0.1:0 --secret-file "$SECRET" "$@" >"$log" 2>"$TMP/$name.err" &
  local pid=$!
  PIDS+=("$pid")
  XMEMD_PID=$pid
  ADDR=""
  for _ in $(seq 100); do
    ADDR=$(sed -n 's/^xmemd listening on \([0-9.]*:[0-9]*\)$/\1/p' "$log")
    [[ -n "$ADDR" ]] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "bench.sh: xmemd ($name) did not start:" >&2
  cat "$TMP/$name.err" >&2
  exit 1
}

# free_port: a TCP port nothing listens on right now
free_port() {
  python3 - <<'EOF'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}

# wait_port PORT LOG: until something accepts on 127.0.0.1:PORT (bounded, 10 s)
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench.sh: nothing listens on 127.0.0.1:$1; $2 says:" >&2
  cat "$2" >&2 || true
  exit 1
}

section() { printf '\n== %s ==\n' "$*"; }

# cpu_sample: "busy total" jiffies of all CPUs from /proc/stat
cpu_sample() { awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t-$5-$6, t; exit}' /proc/stat; }
# cpu_report BEFORE: how busy the machine was since BEFORE (all CPUs, this run included)
cpu_report() {
  local b0 t0 b1 t1
  read -r b0 t0 <<<"$1"
  read -r b1 t1 <<<"$(cpu_sample)"
  if (( t1 > t0 )); then
    echo "machine CPU busy during this step: $(( 100 * (b1 - b0) / (t1 - t0) ))% of $(nproc) CPUs (this benchmark included); load average $(cut -d' ' -f1-3 /proc/loadavg)"
  fi
}

echo "xmem benchmarks, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, $(uname -r)"
echo "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), binaries $BIN_DIR"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "appliances: xmemd defaults (--spin-us 2000: its progress thread busy-polls 2 ms after"
echo "activity, then sleeps on the CQ fd); clients on this host: XMEM_TRANSPORT=tcp unless a"
echo "section says local (the local transport maps the region: no appliance CPU at all)"

section "xmem bench, provider tcp (xmemd --pool 64G --provider tcp)"
start_xmemd tcp --pool 64G --provider tcp
TCP_ADDR=$ADDR
CPU0=$(cpu_sample)
XMEM_TRANSPORT=tcp "$BIN_DIR/xmem" --appliance "$TCP_ADDR" --secret-file "$CRED" bench "${BENCH_ARGS[@]}"
cpu_report "$CPU0"

section "xfer_floor: the transport alone (src/xfer over tcp;ofi_rxm, no xmem client or appliance)"
CPU0=$(cpu_sample)
"$BIN_DIR/xfer_floor" --sizes 4K,1M --iters 5000 --idle-pauses 5 --pause-ms 1000
cpu_report "$CPU0"

section "region_create: 64 GiB regions on the tcp appliance"
"$BIN_DIR/region_create" --appliance "$TCP_ADDR" --secret-file "$CRED" --size 64G --count "$REGIONS"

section "xmem bench, local transport (the tcp appliance, XMEM_TRANSPORT=local)"
CPU0=$(cpu_sample)
XMEM_TRANSPORT=local "$BIN_DIR/xmem" --appliance "$TCP_ADDR" --secret-file "$CRED" bench "${BENCH_ARGS[@]}"
cpu_report "$CPU0"

section "kv_compare: 4 KiB xm_read over the local transport"
XMEM_TRANSPORT=local "$BIN_DIR/kv_compare" --appliance "$TCP_ADDR" --secret-file "$CRED" --iters "$ITERS"

section "kv_compare: 4 KiB GET, memcached / redis / xmem (tcp appliance)"
MC_PORT=$(free_port)
MC_USER=()
if [[ $(id -u) -eq 0 ]]; then MC_USER=(-u root); fi # memcached refuses root without -u
memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -t 1 -m 256 "${MC_USER[@]}" >"$TMP/memcached.log" 2>&1 &
PIDS+=($!)
RD_PORT=$(free_port)
redis-server --port "$RD_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$TMP" --logfile "$TMP/redis.log" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$MC_PORT" "$TMP/memcached.log"
wait_port "$RD_PORT" "$TMP/redis.log"
echo "memcached $(memcached -V | cut -d' ' -f2) -t 1 on :$MC_PORT; redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on :$RD_PORT"
CPU0=$(cpu_sample)
XMEM_TRANSPORT=tcp "$BIN_DIR/kv_compare" --memcached "127.0.0.1:$MC_PORT" --redis "127.0.0.1:$RD_PORT" \
  --appliance "$TCP_ADDR" --secret-file "$CRED" --iters "$ITERS"
# a busy machine never idles its CPUs, which makes the wake-ups of blocking
# servers (memcached, redis) far cheaper than on an idle one: say which it was
cpu_report "$CPU0"

echo
echo "results written to $OUT"
