#!/usr/bin/env bash
# Demo: two real Node-RED 4 instances behind flowgate on this machine.
#   - installs Node-RED 4 with npm into ~/.cache/flowgate/node-red (first run only)
#   - builds flowgate (release)
#   - prepares two user directories in $FLOWGATE_DEMO_DIR (default ./demo-run) with a small
#     flow, boots both instances with their flows stopped (flowgate prepare-standby)
#   - runs flowgate in the foreground; Ctrl-C stops flowgate and both instances
#   - with --replicas: also a local etcd, and a second flowgate replica on its own ports in
#     front of the same two instances (the two agree through etcd; see the README)
# Ports (override with env): PROXY_PORT=1880 HTTPS_PORT=1443 ADMIN_PORT=9901 NR_A_PORT=18801 NR_B_PORT=18802
#   with --replicas also: PROXY2_PORT=1881 ADMIN2_PORT=9902 ETCD_PORT=23790 ETCD_PEER_PORT=23800
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PROXY_PORT=${PROXY_PORT:-1880}; HTTPS_PORT=${HTTPS_PORT:-1443}; ADMIN_PORT=${ADMIN_PORT:-9901}
NR_A_PORT=${NR_A_PORT:-18801}; NR_B_PORT=${NR_B_PORT:-18802}
DIR=${FLOWGATE_DEMO_DIR:-$ROOT/demo-run}
REPLICAS=0
[ "${1:-}" = "--replicas" ] && REPLICAS=1
PROXY2_PORT=${PROXY2_PORT:-1881}; ADMIN2_PORT=${ADMIN2_PORT:-9902}
ETCD_PORT=${ETCD_PORT:-23790}; ETCD_PEER_PORT=${ETCD_PEER_PORT:-23800}
PORTS=("$PROXY_PORT" "$HTTPS_PORT" "$ADMIN_PORT" "$NR_A_PORT" "$NR_B_PORT")
[ $REPLICAS = 1 ] && PORTS+=("$PROXY2_PORT" "$ADMIN2_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT")

for p in "${PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is in use; set PROXY_PORT/ADMIN_PORT/NR_A_PORT/NR_B_PORT" >&2; exit 1
  fi
done
command -v node >/dev/null || { echo "Node.js is required (apt-get install nodejs npm)" >&2; exit 1; }
bash scripts/install-packages.sh
NR_HOME=$(bash scripts/install-node-red.sh)
echo "building flowgate ..."
cargo build --release --locked -q
FLOWGATE=$ROOT/target/release/flowgate

mkdir -p "$DIR"
PIDS=()
cleanup() {
  # The instances' current PIDs too: flowgate may have restarted them (demo-restart.sh).
  for f in "$DIR"/nr-a/node-red.pid "$DIR"/nr-b/node-red.pid; do [ -f "$f" ] && PIDS+=("$(cat "$f")"); done
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
  cp "$ROOT/contrib/node-red/flowgate-fence.js" "$ud/flowgate-fence.js"
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
  - id: nr-a
    url: "http://127.0.0.1:$NR_A_PORT"
    priority: 200
    restart: { command: [bash, "$ROOT/scripts/demo-restart.sh", "$DIR", nr-a, "$NR_A_PORT", "$NR_HOME", "$FLOWGATE"] }
  - id: nr-b
    url: "http://127.0.0.1:$NR_B_PORT"
    priority: 100
    restart: { command: [bash, "$ROOT/scripts/demo-restart.sh", "$DIR", nr-b, "$NR_B_PORT", "$NR_HOME", "$FLOWGATE"] }
health: { canary: /flowgate/canary }
recovery: { hung_for: 3s, down_for: 5s }
YAML
if [ $REPLICAS = 1 ]; then
  ETCD_URL=http://127.0.0.1:$ETCD_PORT
  nohup etcd --name demo --data-dir "$DIR/etcd" --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "demo=http://127.0.0.1:$ETCD_PEER_PORT" >>"$DIR/etcd.log" 2>&1 </dev/null &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -fs -o /dev/null "$ETCD_URL/health" && break; sleep 0.1; done
  echo "cluster: { id: fg-1, etcd: [\"$ETCD_URL\"], prefix: /flowgate-demo/ }" >> "$DIR/flowgate.yaml"
  sed -e "s/proxy: \"127.0.0.1:$PROXY_PORT\"/proxy: \"127.0.0.1:$PROXY2_PORT\"/; s/admin: \"127.0.0.1:$ADMIN_PORT\"/admin: \"127.0.0.1:$ADMIN2_PORT\"/" \
      -e "s/, https: \"127.0.0.1:$HTTPS_PORT\"//; /^tls:/d; s/^state: { dir: state }/state: { dir: state-2 }/; s/id: fg-1,/id: fg-2,/" \
      "$DIR/flowgate.yaml" > "$DIR/flowgate-2.yaml"
  "$FLOWGATE" check --config "$DIR/flowgate-2.yaml"
  (cd "$DIR" && nohup "$FLOWGATE" run --config "$DIR/flowgate-2.yaml" >>"$DIR/flowgate-2.log" 2>&1 </dev/null) &
  PIDS+=($!)
  cat <<INFO

  Replicas: a second flowgate (fg-2, log $DIR/flowgate-2.log) serves the same instances on
    http://127.0.0.1:$PROXY2_PORT/ (admin http://127.0.0.1:$ADMIN2_PORT/), agreeing with fg-1
    (this terminal) through etcd at $ETCD_URL. One of them is the controller: see "cluster"
    in  curl http://127.0.0.1:$ADMIN_PORT/status  and  curl http://127.0.0.1:$ADMIN2_PORT/status
  Kill the controller flowgate and watch the other take over within 2 s, the active untouched.
INFO
fi
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
  Watch a hang:        curl -m1 http://127.0.0.1:$NR_A_PORT/spin   (a while(true) in a function node);
                       flowgate fails over, then restarts the hung instance (scripts/demo-restart.sh)
  Operate it:          export FLOWGATE_ADMIN_TOKEN=$ADMIN_TOKEN
                       $FLOWGATE ctl -c $DIR/flowgate.yaml status
                       $FLOWGATE ctl -c $DIR/flowgate.yaml switchover
                       $FLOWGATE ctl -c $DIR/flowgate.yaml rolling-restart
  Reload the config:   kill -HUP <flowgate pid>, or edit $DIR/flowgate.yaml
  Ctrl-C stops flowgate and both instances.

INFO
"$FLOWGATE" run --config "$DIR/flowgate.yaml"
