#!/usr/bin/env bash
# flowgate against HAProxy and nginx, in one interleaved run, on loopback.
#   benches/bench.sh            full run (about 25 minutes), writes BENCHMARKS.md and benches/results/
#   ROUNDS=1 SECS=3 benches/bench.sh    a quick look
#   ORIGINS=hyper benches/bench.sh      one origin only
# Installs haproxy, nginx and wrk from apt when missing.
#
# What a result depends on is part of the run, not a hidden choice:
# - the origin: two fast origins stand in for two Node-RED instances (the first active, the
#   second a backup; they answer the flow-state endpoints). Each run measures with a hyper
#   origin (benches/origin.rs, one thread) and with an nginx origin (one worker, a small config
#   answering the same paths), in turn;
# - the proxy's threads: flowgate with 1 worker runtime (FLOWGATE_WORKERS=1) and with one per
#   core (the default), HAProxy with 1 and 2 threads (nbthread), nginx with 1 worker;
# - flowgate's request path: its HTTP/1.1 fast path (the default) and, as flowgate-hyper,
#   the general hyper path (listen.fast_path: false), one runtime per core;
# - the request: a flow route (URLPATH, /hello), as devices and dashboards call; editor pages
#   (/ is the editor) go through the general path;
# - the connection count: small GETs at 64 and 256 connections, 1 KiB POSTs at 64.
# Every workload measures every target in turn, ROUNDS times, with the proxy's CPU time per
# request next to its requests/s. Every process it starts is ended by PID when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-5}; IDLE=${IDLE:-10000}; ORIGINS=${ORIGINS:-"hyper nginx"}
URLPATH=${URLPATH:-/hello}
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
A=19101; B=19102; DIRECT=$A
FG1=19111; FGN=19114; FGH=19116; HA1=19112; HA2=19115; NG=19113; FG1ADM=19121; FGNADM=19122; FGHADM=19123
TARGETS=(direct flowgate-1w flowgate-Nw flowgate-hyper haproxy-1t haproxy-2t nginx-1w)
PROXIES=(flowgate-1w flowgate-Nw flowgate-hyper haproxy-1t haproxy-2t nginx-1w)
declare -A PORT=([direct]=$DIRECT [flowgate-1w]=$FG1 [flowgate-Nw]=$FGN [flowgate-hyper]=$FGH [haproxy-1t]=$HA1 [haproxy-2t]=$HA2 [nginx-1w]=$NG)
declare -A PIDOF=([direct]="")

# --- origins ---------------------------------------------------------------------------------
ORIGIN_PIDS=()
start_origin() { # hyper | nginx
  ORIGIN_PIDS=()
  if [ "$1" = hyper ]; then
    "$BIN/examples/bench-origin" $A a & ORIGIN_PIDS+=($!)
    "$BIN/examples/bench-origin" $B b & ORIGIN_PIDS+=($!)
  else
    # The same paths as the hyper origin: a started instance (a) and a stopped one (b).
    server() { # port name state
      cat <<SRV
  server {
    listen 127.0.0.1:$1;
    default_type application/json;
    location = /flows/state { return 200 '{"state":"$3"}'; }
    location = /settings { return 200 '{"runtimeState":{"enabled":true}}'; }
    location = /flows { if (\$request_method = POST) { return 200 '{"rev":"bench"}'; } return 200 '{"flows":[],"rev":"bench"}'; }
    location / { default_type text/plain; if (\$request_method = POST) { return 200 '1024'; } return 200 '$2'; }
  }
SRV
    }
    cat > "$RUN/origin-nginx.conf" <<CFG
worker_processes 1;
pid $RUN/origin-nginx.pid;
error_log $RUN/origin-nginx-error.log;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
$(server $A a start)
$(server $B b stop)
}
CFG
    nginx -c "$RUN/origin-nginx.conf" -g 'daemon off;' & ORIGIN_PIDS+=($!)
  fi
  PIDS+=("${ORIGIN_PIDS[@]}")
}

# --- proxies ---------------------------------------------------------------------------------
flowgate_yaml() { # proxy-port admin-port fast-path
  cat <<YAML
listen: { proxy: "127.0.0.1:$1", admin: "127.0.0.1:$2", fast_path: ${3:-true} }
backends:
  - { id: a, url: "http://127.0.0.1:$A", priority: 200 }
  - { id: b, url: "http://127.0.0.1:$B", priority: 100 }
limits: { max_connections: 19000 }
log: { level: warn }
YAML
}
flowgate_yaml $FG1 $FG1ADM > "$RUN/flowgate-1w.yaml"
flowgate_yaml $FGN $FGNADM > "$RUN/flowgate-Nw.yaml"
flowgate_yaml $FGH $FGHADM false > "$RUN/flowgate-hyper.yaml"

haproxy_cfg() { # threads port
  cat <<CFG
global
  maxconn 9900
  nbthread $1
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$2
  default_backend nr
backend nr
  option httpchk GET /flows/state
  server a 127.0.0.1:$A check inter 100ms fall 2 rise 2
  server b 127.0.0.1:$B check inter 100ms fall 2 rise 2 backup
CFG
}
haproxy_cfg 1 $HA1 > "$RUN/haproxy-1t.cfg"
haproxy_cfg 2 $HA2 > "$RUN/haproxy-2t.cfg"

cat > "$RUN/nginx-1w.conf" <<CFG
worker_processes 1;
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

start_proxy() { # target
  case $1 in
    flowgate-1w) FLOWGATE_WORKERS=1 "$BIN/flowgate" run --config "$RUN/flowgate-1w.yaml" 2>>"$RUN/flowgate.log" & ;;
    flowgate-Nw|flowgate-hyper) "$BIN/flowgate" run --config "$RUN/$1.yaml" 2>>"$RUN/flowgate.log" & ;;
    haproxy-1t|haproxy-2t) haproxy -f "$RUN/$1.cfg" -db 2>>"$RUN/haproxy.log" & ;;
    nginx-1w) nginx -c "$RUN/nginx-1w.conf" -g 'daemon off;' & ;;
  esac
  PIDOF[$1]=$!; PIDS+=($!)
}
stop_pids() { # pids...
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
}
ready() {
  for t in "${TARGETS[@]}"; do
    for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:${PORT[$t]}/" && break; sleep 0.1; done
  done
  sleep 1   # health checks settle (flowgate elects a; haproxy marks both up)
}
# A fresh set of proxies in front of a fresh origin of the given kind.
fresh() { # origin
  stop_pids "${ORIGIN_PIDS[@]}" $(for t in "${PROXIES[@]}"; do echo "${PIDOF[$t]:-}"; done)
  start_origin "$1"
  for t in "${PROXIES[@]}"; do start_proxy "$t"; done
  ready
}

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
TICK=$(getconf CLK_TCK)
printf 'function request()\n  return wrk.format("POST", nil, {["Content-Type"]="application/octet-stream"}, string.rep("x", 1024))\nend\n' > "$RUN/post.lua"

RES=$OUT/results.jsonl; : > "$RES"
for origin in $ORIGINS; do
  fresh "$origin"
  for round in $(seq "$ROUNDS"); do
    for work in get64 get256 post64; do
      for target in "${TARGETS[@]}"; do
        case $work in get64) c=64; s=();; get256) c=256; s=();; post64) c=64; s=(-s "$RUN/post.lua");; esac
        pids=${PIDOF[$target]}
        before=$([ -n "$pids" ] && cpu $pids || echo 0)
        out=$(wrk -t2 -c$c -d${SECS}s "${s[@]}" "http://127.0.0.1:${PORT[$target]}$URLPATH" 2>&1)
        after=$([ -n "$pids" ] && cpu $pids || echo 0)
        rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
        reqs=$(echo "$out" | awk '/requests in/{print $1}')
        errs=$(echo "$out" | awk '/Non-2xx|Socket errors/{print}' | tr '\n' ' ')
        cpu_us=$(python3 -c "print(round(($after-$before)/$TICK/$reqs*1e6,2) if $reqs else 0)")
        echo "{\"origin\":\"$origin\",\"round\":$round,\"work\":\"$work\",\"target\":\"$target\",\"rps\":$rps,\"requests\":$reqs,\"cpu_us_per_req\":$cpu_us,\"errors\":\"$errs\"}" | tee -a "$RES"
      done
    done
    for target in "${TARGETS[@]}"; do
      lat=$("$LOAD" rate "http://127.0.0.1:${PORT[$target]}$URLPATH" 2000 "$SECS" 16)
      echo "{\"origin\":\"$origin\",\"round\":$round,\"work\":\"rate2k\",\"target\":\"$target\",\"latency\":$lat}" | tee -a "$RES"
    done
  done
done

# Memory: 10k idle keep-alive connections, then 10k idle websockets, per proxy (hyper origin,
# which holds websockets). Each is measured on fresh proxy processes, so that none is credited
# with memory an earlier workload left free.
for mode in idle ws; do
  fresh hyper
  n=$IDLE; [ $mode = ws ] && n=$IDLE_WS
  for target in "${PROXIES[@]}"; do
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
  echo " \"fd_limit\":$(ulimit -n), \"cores\":$(nproc), \"origins\":\"$ORIGINS\","
  echo " \"date\":\"$(date -u +%Y-%m-%dT%H:%MZ)\", \"rounds\":$ROUNDS, \"secs\":$SECS}"
} > "$OUT/machine.json"
python3 benches/report.py "$OUT" > BENCHMARKS.md
echo "wrote BENCHMARKS.md and $OUT/chart.svg"
