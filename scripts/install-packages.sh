#!/usr/bin/env bash
# Installs the Debian packages flowgate's replicas and tests need, if missing: etcd (the store
# replicas agree through; tests start their own on free loopback ports), protoc (the etcd
# client's gRPC code is generated at build time), and mosquitto with its command-line clients
# (the MQTT broker the end-to-end flows use; tests start their own). Needs root for apt-get.
set -euo pipefail
missing=()
need() { # need <command or path> <package>
  if [[ "$1" == /* ]]; then [ -x "$1" ] || missing+=("$2"); else command -v "$1" >/dev/null || missing+=("$2"); fi
}
need etcd etcd-server
need protoc protobuf-compiler
need /usr/sbin/mosquitto mosquitto
need mosquitto_pub mosquitto-clients
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "needed: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing ${missing[*]} ..." >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
# The packages may start a system etcd on 2379 and a broker on 1883; the tests use their own
# ports.
