#!/usr/bin/env bash
# The demo's restart command for one Node-RED instance (flowgate runs it to recover a hung or
# crashed instance, for rolling restarts and `flowgate ctl restart`), as `systemctl restart
# node-red@NAME` would with contrib/systemd/node-red@.service: stop the process (SIGTERM, then
# SIGKILL after 5 s: a blocked event loop ignores SIGTERM), make it boot with its flows stopped
# (flowgate prepare-standby), and start it again.
# Usage: demo-restart.sh DIR NAME PORT NODE_RED_HOME FLOWGATE_BINARY
set -euo pipefail
DIR=$1 NAME=$2 PORT=$3 NR_HOME=$4 FLOWGATE=$5
UD="$DIR/$NAME"
gone() { [ ! -e "/proc/$1" ] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
old=$(cat "$UD/node-red.pid" 2>/dev/null || true)
if [ -n "$old" ] && ! gone "$old"; then
  kill -TERM "$old" 2>/dev/null || true
  for _ in $(seq 1 50); do gone "$old" && break; sleep 0.1; done
  gone "$old" || kill -KILL "$old" 2>/dev/null || true
  while ! gone "$old"; do sleep 0.05; done
fi
"$FLOWGATE" prepare-standby --user-dir "$UD" >/dev/null
FG_NAME=$NAME setsid nohup node "$NR_HOME/node_modules/node-red/red.js" -u "$UD" -p "$PORT" -s "$UD/settings.js" \
  >>"$UD/node-red.log" 2>&1 </dev/null &
echo "$!" > "$UD/node-red.pid"
echo "restarted $NAME: PID $!"
