#!/usr/bin/env bash
# flowgate against HAProxy and nginx, in one interleaved run, on loopback.
#   benches/bench.sh            full run (about 10 minutes), writes BENCHMARKS.md and benches/results/
#   ROUNDS=1 SECS=3 benches/bench.sh    a quick look
# Installs haproxy, nginx and wrk from apt when missing. Starts two fast origins (standing in
# for two Node-RED instances; they answer the flow-state endpoints), one proxy of each kind in
# front of them (first origin active, second as backup, health checks on), and measures each
# workload for direct / flowgate / haproxy / nginx in turn, ROUNDS times. Every process it
# starts is ended by PID when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-5}; IDLE=${IDLE:-10000}
OUT=$ROOT/benches/results; mkdir -p "$OUT"; RUN=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT
need=(); for t in haproxy nginx wrk; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
ulimit -n "$(ulimit -Hn)"
# A websocket through a proxy holds two descriptors in it: stay within the machine's limit.
IDLE_WS=${IDLE_WS:-$(( $(ulimit -n) / 2 - 1000 < 10000 ? $(ulimit -n) / 2 - 1000 : 10000 ))}
cargo build --release --locked -q --bin flowgate --example bench-origin --example bench-load
BIN=$ROOT/target/release; LOAD=$BIN/examples/bench-load
A=19101; B=19102; DIRECT=$A; FG=19111; HA=19112; NG=19113; FGADM=19121

"$BIN/examples/bench-origin" $A a & PIDS+=($!)
"$BIN/examples/bench-origin" $B b & PIDS+=($!)

cat > "$RUN/flowgate.yaml" <<YAML
listen: { proxy: "127.0.0.1:$FG", admin: "127.0.0.1:$FGADM" }
backends:
  - { id: a, url: "http://127.0.0.1:$A", priority: 200 }
  - { id: b, url: "http://127.0.0.1:$B", priority: 100 }
limits: { max_connections: 19000 }
log: { level: warn }
YAML
start_flowgate() { "$BIN/flowgate" run --config "$RUN/flowgate.yaml" 2>>"$RUN/flowgate.log" & FGPID=$!; PIDS+=($FGPID); }
start_flowgate

cat > "$RUN/haproxy.cfg" <<CFG
global
  maxconn 9900
  nbthread 2
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$HA
  default_backend nr
backend nr
  option httpchk GET /flows/state
  server a 127.0.0.1:$A check inter 100ms fall 2 rise 2
  server b 127.0.0.1:$B check inter 100ms fall 2 rise 2 backup
CFG
start_haproxy() { haproxy -f "$RUN/haproxy.cfg" -db 2>>"$RUN/haproxy.log" & HAPID=$!; PIDS+=($HAPID); }
start_haproxy

cat > "$RUN/nginx.conf" <<CFG
worker_processes 2;
pid $RUN/nginx.pid;
error_log $RUN/nginx-error.log;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http {
  access_log off;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream nr { server 127.0.0.1:$A; server 127.0.0.1:$B backup; keepalive 256; }
  server {
    listen 127.0.0.1:$NG;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://nr;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 1h;
    }
  }
}
CFG
start_nginx() { nginx -c "$RUN/nginx.conf" -g 'daemon off;' & NGPID=$!; PIDS+=($NGPID); }
start_nginx

ready() {
  for p in $A $B $FG $HA $NG; do
    for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
  done
  sleep 1   # health checks settle (flowgate elects a; haproxy marks both up)
}
ready

# CPU seconds (user+system) of a process and its children threads/workers.
cpu() { # pids...
  local t=0
  for p in "$@"; do
    read -r -a f < /proc/$p/stat
    t=$((t + f[13] + f[14]))
    for c in $(pgrep -P "$p" || true); do read -r -a g < /proc/$c/stat; t=$((t + g[13] + g[14])); done
  done
  echo $t
}
rss_kib() { local t=0; for p in "$@"; do
  t=$((t + $(awk '/VmRSS/{print $2}' /proc/$p/status)))
  for c in $(pgrep -P "$p" || true); do t=$((t + $(awk '/VmRSS/{print $2}' /proc/$c/status))); done
done; echo $t; }
declare -A PORT=([direct]=$DIRECT [flowgate]=$FG [haproxy]=$HA [nginx]=$NG)
declare -A PIDOF=([direct]="" [flowgate]=$FGPID [haproxy]=$HAPID [nginx]=$NGPID)
TICK=$(getconf CLK_TCK)
printf 'function request()\n  return wrk.format("POST", "/", {["Content-Type"]="application/octet-stream"}, string.rep("x", 1024))\nend\n' > "$RUN/post.lua"

RES=$OUT/results.jsonl; : > "$RES"
for round in $(seq "$ROUNDS"); do
  for work in get64 get256 post64; do
    for target in direct flowgate haproxy nginx; do
      case $work in get64) c=64; s=();; get256) c=256; s=();; post64) c=64; s=(-s "$RUN/post.lua");; esac
      pids=${PIDOF[$target]}
      before=$([ -n "$pids" ] && cpu $pids || echo 0)
      out=$(wrk -t2 -c$c -d${SECS}s "${s[@]}" "http://127.0.0.1:${PORT[$target]}/" 2>&1)
      after=$([ -n "$pids" ] && cpu $pids || echo 0)
      rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
      reqs=$(echo "$out" | awk '/requests in/{print $1}')
      errs=$(echo "$out" | awk '/Non-2xx|Socket errors/{print}' | tr '\n' ' ')
      cpu_us=$(python3 -c "print(round(($after-$before)/$TICK/$reqs*1e6,2) if $reqs else 0)")
      echo "{\"round\":$round,\"work\":\"$work\",\"target\":\"$target\",\"rps\":$rps,\"requests\":$reqs,\"cpu_us_per_req\":$cpu_us,\"errors\":\"$errs\"}" | tee -a "$RES"
    done
  done
  for target in direct flowgate haproxy nginx; do
    lat=$("$LOAD" rate "http://127.0.0.1:${PORT[$target]}/" 2000 "$SECS" 16)
    echo "{\"round\":$round,\"work\":\"rate2k\",\"target\":\"$target\",\"latency\":$lat}" | tee -a "$RES"
  done
done

# Memory: 10k idle keep-alive connections, then 10k idle websockets, per proxy. Each is measured
# on fresh proxy processes, so that none is credited with memory an earlier workload left free.
restart() {
  for p in $FGPID $HAPID $NGPID; do kill "$p"; done
  for p in $FGPID $HAPID $NGPID; do for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
  start_flowgate; start_haproxy; start_nginx; ready
  PIDOF=([direct]="" [flowgate]=$FGPID [haproxy]=$HAPID [nginx]=$NGPID)
}
for mode in idle ws; do
  restart
  n=$IDLE; [ $mode = ws ] && n=$IDLE_WS
  for target in flowgate haproxy nginx; do
    pids=${PIDOF[$target]}
    base=$(rss_kib $pids)
    exec 3> >("$LOAD" $mode "127.0.0.1:${PORT[$target]}" "$n" > "$RUN/load.out")
    for _ in $(seq 600); do grep -q READY "$RUN/load.out" 2>/dev/null && break; sleep 0.1; done
    sleep 1
    held=$(rss_kib $pids)
    exec 3>&-
    sleep 2
    echo "{\"work\":\"$mode\",\"target\":\"$target\",\"conns\":$n,\"rss_base_kib\":$base,\"rss_kib\":$held}" | tee -a "$RES"
  done
done

{
  echo "{\"machine\":\"$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)\","
  echo " \"versions\":\"$(haproxy -v | head -1 | cut -d' ' -f1-3); $(nginx -v 2>&1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); flowgate $(git rev-parse --short HEAD)\","
  echo " \"fd_limit\":$(ulimit -n),"
  echo " \"date\":\"$(date -u +%Y-%m-%dT%H:%MZ)\", \"rounds\":$ROUNDS, \"secs\":$SECS}"
} > "$OUT/machine.json"
python3 benches/report.py "$OUT" > BENCHMARKS.md
echo "wrote BENCHMARKS.md and $OUT/chart.svg"
