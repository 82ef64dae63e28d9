#!/usr/bin/env bash
# Installs what replicas need from Debian's packages, if missing: etcd (the store replicas
# agree through; the tests start their own on free loopback ports) and protoc (the etcd
# client's gRPC code is generated at build time). Needs root for apt-get.
set -euo pipefail
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "needed: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing ${missing[*]} ..." >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
# The package may start a system etcd on 2379; flowgate's tests use their own ports.
