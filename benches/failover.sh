#!/usr/bin/env bash
# Failover under load against real Node-RED 4: kill -9 of the active, and a hung event loop
# (a while(true) function node), with a GET every 2 ms through the proxy. flowgate, and beside
# it HAProxy tuned for fast failover (inter 100ms fall 2, backup, retries + redispatch), on the
# same kind of instances. HAProxy cannot start or stop flows, so for it both instances run
# their flows all the time (which is what running Node-RED behind HAProxy means).
#   benches/failover.sh    appends to benches/results/failover.jsonl (read by report.py)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd); OUT=$ROOT/benches/results; mkdir -p "$OUT"; RUN=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT
command -v haproxy >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; }
NR_HOME=$(bash scripts/install-node-red.sh)
cargo build --release --locked -q --bin flowgate --example bench-load
BIN=$ROOT/target/release; LOAD=$BIN/examples/bench-load
: > "$OUT/failover.jsonl"

boot() { # name port prepare(yes/no) -> pid
  local ud="$RUN/$1-$RANDOM"; mkdir -p "$ud"
  cp config/demo/flows.json config/demo/settings.js "$ud/"
  [ "$3" = yes ] && "$BIN/flowgate" prepare-standby --user-dir "$ud" >/dev/null
  FG_NAME=$1 FG_PORT=$2 node "$NR_HOME/node_modules/node-red/red.js" -u "$ud" -p "$2" -s "$ud/settings.js" >"$ud/log" 2>&1 &
  local pid=$!; PIDS+=($pid)
  for _ in $(seq 300); do curl -fs -o /dev/null "http://127.0.0.1:$2/auth/login" && break; sleep 0.1; done
  echo $pid
}
wait_ok() { for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }

run() { # proxy case
  local proxy=$1 case=$2 a=19301 b=19302 port=19311 pa pb ppid
  if [ "$proxy" = flowgate ]; then
    pa=$(boot nr-a $a yes); pb=$(boot nr-b $b yes)
    printf 'listen: { proxy: "127.0.0.1:%s", admin: "127.0.0.1:19321" }\nbackends:\n  - { id: nr-a, url: "http://127.0.0.1:%s", priority: 200 }\n  - { id: nr-b, url: "http://127.0.0.1:%s" }\nlog: { level: warn }\n' $port $a $b > "$RUN/fg.yaml"
    "$BIN/flowgate" run --config "$RUN/fg.yaml" 2>"$RUN/fg.log" & ppid=$!
  else
    pa=$(boot nr-a $a no); pb=$(boot nr-b $b no)
    cat > "$RUN/ha.cfg" <<CFG
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 15s
  timeout check 400ms
  retries 3
  option redispatch
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$port
  default_backend nr
backend nr
  option httpchk GET /flowgate/canary
  server a 127.0.0.1:$a check inter 100ms fall 2 rise 2
  server b 127.0.0.1:$b check inter 100ms fall 2 rise 2 backup
CFG
    haproxy -f "$RUN/ha.cfg" -db 2>"$RUN/ha.log" & ppid=$!
  fi
  PIDS+=($ppid)
  wait_ok "http://127.0.0.1:$port/hello"; sleep 2   # past flowgate's promotion grace
  local cmd
  if [ "$case" = kill ]; then cmd=(kill -9 "$pa"); else cmd=(curl -s -m 0.2 -o /dev/null "http://127.0.0.1:$a/spin"); fi
  local r; r=$("$LOAD" steady "http://127.0.0.1:$port/hello" 6 2 2000 -- "${cmd[@]}" || true)
  echo "{\"proxy\":\"$proxy\",\"case\":\"$case\",\"result\":$r}" | tee -a "$OUT/failover.jsonl"
  kill -9 "$ppid" "$pa" "$pb" 2>/dev/null || true; sleep 1
}
for round in 1 2 3; do
  for proxy in flowgate haproxy; do run $proxy kill; run $proxy hang; done
done
