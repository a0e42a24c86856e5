#!/usr/bin/env bash
# Install what xmem needs to build, test and benchmark (Debian 12). Idempotent:
# does nothing when every package is present.
#   scripts/install-deps.sh          build + test dependencies
#   scripts/install-deps.sh --bench  also the peers the benchmarks compare against
set -euo pipefail
pkgs=(build-essential cmake pkg-config libfabric-dev libfabric-bin libprotobuf-c-dev
      protobuf-c-compiler libsodium-dev libxxhash-dev libsqlite3-dev libisal-dev libjansson-dev libmimalloc-dev uthash-dev libcriterion-dev clang libclang-rt-14-dev iproute2 procps
      gdb # gdb: the stress tests' watchdog prints user-space stacks of a hang
      libmicrohttpd-dev libsystemd-dev groff-base man-db bash-completion # metrics endpoint, sd_notify/journald; test_ops renders the man pages and the completion
      libcurl4-openssl-dev etcd-server etcd-client) # the manager group on etcd (docs/ha.md, test_ha)
if [[ "${1:-}" == "--bench" ]]; then
  pkgs+=(memcached redis-server)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} == 0 )); then
  exit 0
fi
echo "installing: ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# test_ha and bench/manager_ha start their own etcd on loopback free ports: not the packaged service
$SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
# the benchmarks start their own memcached/redis on loopback; the packaged services are not needed
if [[ "${1:-}" == "--bench" ]]; then
  for svc in memcached redis-server; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
fi
