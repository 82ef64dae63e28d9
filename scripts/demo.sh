#!/usr/bin/env bash
# Demo: two real Node-RED 4 instances behind flowgate on this machine.
#   - installs Node-RED 4 with npm into ~/.cache/flowgate/node-red (first run only)
#   - builds flowgate (release)
#   - prepares two user directories in $FLOWGATE_DEMO_DIR (default ./demo-run) with a small
#     flow, boots both instances with their flows stopped (flowgate prepare-standby)
#   - runs flowgate in the foreground; Ctrl-C stops flowgate and both instances
# Ports (override with env): PROXY_PORT=1880 HTTPS_PORT=1443 ADMIN_PORT=9901 NR_A_PORT=18801 NR_B_PORT=18802
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PROXY_PORT=${PROXY_PORT:-1880}; HTTPS_PORT=${HTTPS_PORT:-1443}; ADMIN_PORT=${ADMIN_PORT:-9901}
NR_A_PORT=${NR_A_PORT:-18801}; NR_B_PORT=${NR_B_PORT:-18802}
DIR=${FLOWGATE_DEMO_DIR:-$ROOT/demo-run}

for p in "$PROXY_PORT" "$HTTPS_PORT" "$ADMIN_PORT" "$NR_A_PORT" "$NR_B_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is in use; set PROXY_PORT/ADMIN_PORT/NR_A_PORT/NR_B_PORT" >&2; exit 1
  fi
done
command -v node >/dev/null || { echo "Node.js is required (apt-get install nodejs npm)" >&2; exit 1; }
NR_HOME=$(bash scripts/install-node-red.sh)
echo "building flowgate ..."
cargo build --release --locked -q
FLOWGATE=$ROOT/target/release/flowgate

mkdir -p "$DIR"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

start_instance() { # name port
  local name=$1 port=$2 ud="$DIR/$1"
  mkdir -p "$ud"
  cp "$ROOT/config/demo/flows.json" "$ud/flows.json"
  cp "$ROOT/config/demo/settings.js" "$ud/settings.js"
  "$FLOWGATE" prepare-standby --user-dir "$ud" >/dev/null
  FG_NAME=$name nohup node "$NR_HOME/node_modules/node-red/red.js" -u "$ud" -p "$port" -s "$ud/settings.js" \
    >>"$ud/node-red.log" 2>&1 </dev/null &
  PIDS+=($!)
  echo "$!" > "$ud/node-red.pid"
}
start_instance nr-a "$NR_A_PORT"
start_instance nr-b "$NR_B_PORT"
for port in "$NR_A_PORT" "$NR_B_PORT"; do
  for _ in $(seq 1 300); do
    curl -fs -o /dev/null "http://127.0.0.1:$port/auth/login" && break
    sleep 0.1
  done
done

[ -f "$DIR/certs/self-signed.crt" ] || "$FLOWGATE" self-signed --name localhost --name 127.0.0.1 --out "$DIR/certs" >/dev/null
ADMIN_TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
export FLOWGATE_ADMIN_TOKEN=$ADMIN_TOKEN
cat > "$DIR/flowgate.yaml" <<YAML
listen: { proxy: "127.0.0.1:$PROXY_PORT", https: "127.0.0.1:$HTTPS_PORT", admin: "127.0.0.1:$ADMIN_PORT" }
tls: { certs: certs }
admin: { token: { env: FLOWGATE_ADMIN_TOKEN } }
state: { dir: state }
backends:
  - { id: nr-a, url: "http://127.0.0.1:$NR_A_PORT", priority: 200 }
  - { id: nr-b, url: "http://127.0.0.1:$NR_B_PORT", priority: 100 }
health: { canary: /flowgate/canary }
YAML
"$FLOWGATE" check --config "$DIR/flowgate.yaml"

cat <<INFO

  flowgate is starting in front of two Node-RED instances:
    nr-a  PID $(cat "$DIR/nr-a/node-red.pid")  http://127.0.0.1:$NR_A_PORT  (priority 200)
    nr-b  PID $(cat "$DIR/nr-b/node-red.pid")  http://127.0.0.1:$NR_B_PORT

  Point a browser at   http://127.0.0.1:$PROXY_PORT/          (the editor of the active instance)
                  or   https://127.0.0.1:$HTTPS_PORT/         (self-signed certificate: the browser warns)
  Status page:         http://127.0.0.1:$ADMIN_PORT/           (live; paste the admin token below for its buttons)
  A flow endpoint:     curl http://127.0.0.1:$PROXY_PORT/hello
  Status (JSON):       curl http://127.0.0.1:$ADMIN_PORT/status
  Metrics:             curl http://127.0.0.1:$ADMIN_PORT/metrics

  Watch a failover:    while sleep 0.2; do curl -s http://127.0.0.1:$PROXY_PORT/hello; echo; done
                       kill -9 \$(cat $DIR/nr-a/node-red.pid)
  Watch a hang:        curl -m1 http://127.0.0.1:$NR_A_PORT/spin   (a while(true) in a function node)
  Planned switchover:  curl -X POST -H "Authorization: Bearer $ADMIN_TOKEN" http://127.0.0.1:$ADMIN_PORT/switchover
  Reload the config:   kill -HUP <flowgate pid>, or edit $DIR/flowgate.yaml
  Ctrl-C stops flowgate and both instances.

INFO
"$FLOWGATE" run --config "$DIR/flowgate.yaml"
