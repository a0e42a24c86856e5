#!/usr/bin/env bash
# Striped streaming across hosts (issue 3 target: "scales with N until the
# client's link or CPU is the limit"). Hosts are simulated with network
# namespaces: the manager, appliances 1..NMAX and the client each in its own,
# every one joined by a veth pair to a bridge in a "switch" namespace (so all
# of the client's traffic crosses its one veth link, like a host's one NIC).
# For each N it runs, in the client namespace, raw TCP to N appliance hosts in
# parallel (bench/tcp_stream, the reference) and manager_alloc --stream over a
# stripe:N allocation, and prints both with the ratio.
# Needs root and `ip netns`. Everything it makes (namespaces, links,
# processes, files) is removed on exit, also on failure or Ctrl-C.
# Builds nothing: build the release preset first (cmake --preset release &&
# cmake --build build -j2). Output goes to stdout and to $OUT.
#
#   BIN_DIR  where the binaries are (default build/bin)
#   OUT      results file (default build/bench-netns-stripe.txt)
#   SIZE     bytes moved per direction and measurement (default 1G)
#   NMAX     appliances; N runs 1..NMAX (default 3)
#   PASSES   write+read passes of the stream; pass 1 writes fresh pool pages (default 2)
#   POOL     pool of each appliance (default 2G; reserved, touched only by the stream)
#   APPLIANCE_RATE  e.g. 4gbit: limit each appliance host's link to that rate in both
#            directions (tc tbf on both ends of its veth), so that one appliance is the
#            bottleneck and striping has something to spread; default: no limit
#   APPLIANCE_OPTS  more xmemd flags, e.g. "--spin-us 0" (appliances sleep on their fd
#            at once instead of polling 2 ms after activity)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN_DIR=${BIN_DIR:-$REPO/build/bin}
OUT=${OUT:-$REPO/build/bench-netns-stripe.txt}
SIZE=${SIZE:-1G}
NMAX=${NMAX:-3}
PASSES=${PASSES:-2}
POOL=${POOL:-2G}
APPLIANCE_OPTS=${APPLIANCE_OPTS:-}
APPLIANCE_RATE=${APPLIANCE_RATE:-}
SUBNET=10.252.88.   # exists only inside the namespaces made here

for b in xmem xmemd xmem-manager manager_alloc tcp_stream; do
  if [[ ! -x "$BIN_DIR/$b" ]]; then
    echo "bench-netns-stripe.sh: $BIN_DIR/$b missing: build the release preset (or set BIN_DIR)" >&2
    exit 1
  fi
done
if [[ $(id -u) -ne 0 ]]; then
  echo "bench-netns-stripe.sh: needs root (network namespaces)" >&2
  exit 1
fi
if ! ip netns list >/dev/null 2>&1; then
  echo "bench-netns-stripe.sh: \`ip netns\` is not available (iproute2)" >&2
  exit 1
fi
if (( NMAX < 1 || NMAX > 8 )); then
  echo "bench-netns-stripe.sh: NMAX must be 1..8" >&2
  exit 1
fi

TAG=xb$$
NODES=(m c)
for ((i = 1; i <= NMAX; i++)); do NODES+=("a$i"); done
declare -A HOST=([m]=10 [c]=30)
for ((i = 1; i <= NMAX; i++)); do HOST[a$i]=$((20 + i)); done
PIDS=()
WORK=$(mktemp -d /tmp/xmem-bench-netns.XXXXXX)
MADE=0

cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if (( MADE )); then
    # anything still running inside our namespaces (it would keep them alive unseen)
    for n in "${NODES[@]}"; do
      for p in $(ip netns pids "$TAG-$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    done
    for n in "${NODES[@]}" sw; do ip netns del "$TAG-$n" 2>/dev/null || true; done
  fi
  if (( rc != 0 )) && [[ -d $WORK ]]; then
    for f in "$WORK"/*.log; do [[ -f $f ]] && { echo "---- $f"; tail -n 20 "$f"; } >&2; done
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local n=$1; shift; ip netns exec "$TAG-$n" "$@"; }
addr() { echo "$SUBNET${HOST[$1]}"; }

# namespaces, bridge, one veth pair per host
MADE=1
ip netns add "$TAG-sw"
ip -n "$TAG-sw" link add br0 type bridge
ip -n "$TAG-sw" link set br0 up
k=0
for n in "${NODES[@]}"; do
  ip netns add "$TAG-$n"
  ip -n "$TAG-sw" link add "p$k" type veth peer name eth0 netns "$TAG-$n"
  ip -n "$TAG-sw" link set "p$k" master br0
  ip -n "$TAG-sw" link set "p$k" up
  ip -n "$TAG-$n" addr add "$(addr "$n")/24" dev eth0
  ip -n "$TAG-$n" link set eth0 up
  ip -n "$TAG-$n" link set lo up
  if [[ -n $APPLIANCE_RATE && $n == a* ]]; then
    # bucket of 4 MiB: at these rates a smaller one (rate / HZ) cannot keep up
    tc -n "$TAG-sw" qdisc add dev "p$k" root tbf rate "$APPLIANCE_RATE" burst 4m latency 20ms
    tc -n "$TAG-$n" qdisc add dev eth0 root tbf rate "$APPLIANCE_RATE" burst 4m latency 20ms
  fi
  k=$((k + 1))
done

"$BIN_DIR/xmem" secret new "$WORK/secret" >/dev/null
MGR=$(addr m):7300
# started with `ip netns exec` itself (not a shell function) so that $! is the daemon
ip netns exec "$TAG-m" "$BIN_DIR/xmem-manager" --listen "$MGR" --db "$WORK/manager.db" \
  --secret-file "$WORK/secret" --log-level warn >/dev/null 2>"$WORK/manager.log" &
PIDS+=($!)
for ((i = 1; i <= NMAX; i++)); do
  ip netns exec "$TAG-a$i" "$BIN_DIR/xmemd" --listen "$(addr "a$i"):7400" --pool "$POOL" --provider tcp \
    --secret-file "$WORK/secret" --manager "$MGR" --domain "d$i" --log-level warn \
    $APPLIANCE_OPTS >/dev/null 2>"$WORK/a$i.log" &
  PIDS+=($!)
  ip netns exec "$TAG-a$i" "$BIN_DIR/tcp_stream" serve "$(addr "a$i"):7500" >/dev/null 2>"$WORK/tcp$i.log" &
  PIDS+=($!)
done

export XMEM_MANAGER=$MGR XMEM_SECRET_FILE=$WORK/secret XMEM_TENANT=bench
up=0
for ((t = 0; t < 200; t++)); do
  up=$(in_ns c "$BIN_DIR/xmem" appliances 2>/dev/null | grep -cw up || true)
  (( up == NMAX )) && break
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "bench-netns-stripe.sh: a daemon exited at start" >&2; exit 1; }
  done
  sleep 0.1
done
if (( up != NMAX )); then
  echo "bench-netns-stripe.sh: $up of $NMAX appliances came up" >&2
  exit 1
fi

# GB/s figure and client CPU of the line starting with $1 in $2
figure() { awk -v w="$1" 'index($0, w) == 1 { for (i = 1; i <= NF; i++) if ($i == "GB/s") print $(i-1) }' <<<"$2" | tail -n 1; }
cpu() { awk -v w="$1" 'index($0, w) == 1 { if (match($0, /client CPU +[0-9]+%/)) { s = substr($0, RSTART, RLENGTH); sub(/client CPU +/, "", s); print s } }' <<<"$2" | tail -n 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
# the lines of the last pass (manager_alloc labels passes from 2 on)
if (( PASSES > 1 )); then LW="striped streaming write, pass $PASSES"; LR="striped streaming read, pass $PASSES"
else LW="striped streaming write "; LR="striped streaming read "; fi

{
  echo "# striped streaming across hosts in network namespaces: $(date -u +%FT%TZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# $SIZE per direction, 1 MiB ops; raw TCP: one thread and connection per appliance host;"
  echo "# xmem: manager_alloc --stream $SIZE --policy stripe:N --passes $PASSES (one thread, depth 16); xmemd ${APPLIANCE_OPTS:-(defaults)};"
  echo "# appliance links: ${APPLIANCE_RATE:-veth at full speed} each way; the client's link: veth at full speed"
  echo "# write = pass 1 (fresh pool pages), rewrite = pass $PASSES (touched pages); CPU = client process, 100% = one CPU;"
  echo "# machine = both CPUs busy over the xmem run, all processes (ours and anyone else's)"
  printf "%-3s | %-16s | %-16s | %-16s | %-5s | %-16s | %-16s | %-5s | %s\n" N "raw TCP write" "xmem write" \
    "xmem rewrite" ratio "raw TCP read" "xmem read" ratio machine
  for ((n = 1; n <= NMAX; n++)); do
    targets=""
    for ((i = 1; i <= n; i++)); do targets+="${targets:+,}$(addr "a$i"):7500"; done
    raw=$(in_ns c "$BIN_DIR/tcp_stream" run "$SIZE" "$targets")
    read -r b0 t0 < <(busy)
    xm=$(in_ns c "$BIN_DIR/manager_alloc" --pairs 0 --stream "$SIZE" --policy "stripe:$n" --passes "$PASSES")
    read -r b1 t1 < <(busy)
    rw=$(figure "raw TCP write" "$raw"); rr=$(figure "raw TCP read" "$raw")
    xw=$(figure "striped streaming write " "$xm"); xw2=$(figure "$LW" "$xm"); xr=$(figure "$LR" "$xm")
    printf "%-3s | %5s (cpu %4s) | %5s (cpu %4s) | %5s (cpu %4s) | %5s | %5s (cpu %4s) | %5s (cpu %4s) | %5s | %3d%%\n" "$n" \
      "$rw" "$(cpu "raw TCP write" "$raw")" "$xw" "$(cpu "striped streaming write " "$xm")" \
      "$xw2" "$(cpu "$LW" "$xm")" "$(ratio "$xw2" "$rw")" \
      "$rr" "$(cpu "raw TCP read" "$raw")" "$xr" "$(cpu "$LR" "$xm")" \
      "$(ratio "$xr" "$rr")" $(( 100 * (b1 - b0) / (t1 - t0 > 0 ? t1 - t0 : 1) ))
  done
  echo "# GB/s; ratio = xmem / raw TCP over the same hosts and links in the same run (rewrite vs raw write, read of the last pass vs raw read)"
} | tee "$OUT"
