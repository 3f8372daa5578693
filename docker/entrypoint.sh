#!/bin/sh
# The container's entrypoint: `cas-vpn init` (idempotent: it never overwrites a configuration file or a key; with
# --public-ip $CAS_VPN_PUBLIC_IP when set), then `exec cas-vpn serve all`, so that serve is PID 1 and gets
# docker's SIGTERM. Arguments replace `serve all`: `serve SERVICE` is initialised the same way, any other cas-vpn
# command (`status`, `terminal add NAME`, …) runs as it is.
#   CAS_VPN_ROOT (default /batm), CAS_VPN_PUBLIC_IP, CAS_VPN_DATABASE_URL, CAS_VPN_CA_PASSPHRASE: as cas-vpn reads
#   them; CAS_VPN_BIN: the cas-vpn to run (default: the one on PATH).
set -eu
: "${CAS_VPN_ROOT:=/batm}"
export CAS_VPN_ROOT
bin=${CAS_VPN_BIN:-cas-vpn}
[ $# -gt 0 ] || set -- serve all
if [ "$1" = serve ]; then
  if [ -n "${CAS_VPN_PUBLIC_IP:-}" ]; then
    "$bin" init --public-ip "$CAS_VPN_PUBLIC_IP"
  else
    "$bin" init
  fi
fi
exec "$bin" "$@"
