#!/usr/bin/env bash
# ABBA rounds of the control plane against a previous build: build both trees as in
# docs/performance.md ("Encrypted control plane") into /tmp/wt-prev and /tmp/wt-cur first.
set -u
export FI_OFI_RXM_MSG_RX_SIZE=16
run() {
  local B=/tmp/wt-$1/build/bin
  export XMEM_RUN_DIR=/tmp/abrun-$1
  $B/xmem down >/dev/null 2>&1; rm -rf $XMEM_RUN_DIR
  eval "$($B/xmem up --appliances 4 --pool 20G 2>/dev/null)"
  if [ "$1" = prev ]; then export XMEM_TENANT=bench; else unset XMEM_TENANT; fi
  echo "== round $2 build $1"
  $B/manager_alloc --threads 1 --pairs 3000 2>&1 | tail -4 | grep -E "pairs/s|CPU"
  $B/manager_alloc --threads 6 --pairs 1500 2>&1 | tail -4 | grep -E "pairs/s|CPU"
  $B/ctl_rtt --manager $XMEM_MANAGER --iters 5000 --runs 3 2>&1 | grep median
  $B/xmem down >/dev/null 2>&1; rm -rf $XMEM_RUN_DIR
  unset XMEM_MANAGER XMEM_SECRET_FILE XMEM_TENANT
}
for r in 1 2 3 4; do
  if [ $((r % 2)) = 1 ]; then run prev $r; run cur $r; else run cur $r; run prev $r; fi
done
