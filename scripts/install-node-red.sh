#!/usr/bin/env bash
# Installs Node-RED 4 (npm) into a local cache if it is not there yet, and prints the folder.
# Beside it, in extras/: Node-RED Dashboard 2.0 and socket.io-client, for the load-balanced
# tests (a dashboard's socket.io session through flowgate).
#   FLOWGATE_NR_HOME  where to install (default ~/.cache/flowgate/node-red)
# Safe to run concurrently (flock) and repeatedly (no network when already installed).
set -euo pipefail
NR_HOME=${FLOWGATE_NR_HOME:-$HOME/.cache/flowgate/node-red}
mkdir -p "$NR_HOME"
exec 9>"$NR_HOME/.install.lock"
flock 9
if [ ! -f "$NR_HOME/node_modules/node-red/red.js" ]; then
  command -v npm >/dev/null || { echo "npm not found: install Node.js 20 (apt-get install nodejs npm)" >&2; exit 1; }
  cd "$NR_HOME"
  [ -f package.json ] || echo '{"name":"flowgate-node-red","private":true}' > package.json
  echo "installing node-red@4 into $NR_HOME ..." >&2
  npm install --no-audit --no-fund --loglevel=error node-red@4 >&2
fi
if [ ! -f "$NR_HOME/extras/node_modules/@flowfuse/node-red-dashboard/package.json" ] \
  || [ ! -f "$NR_HOME/extras/node_modules/socket.io-client/package.json" ]; then
  mkdir -p "$NR_HOME/extras"
  cd "$NR_HOME/extras"
  [ -f package.json ] || echo '{"name":"flowgate-node-red-extras","private":true}' > package.json
  echo "installing Node-RED Dashboard 2.0 and socket.io-client into $NR_HOME/extras ..." >&2
  npm install --no-audit --no-fund --loglevel=error @flowfuse/node-red-dashboard@1 socket.io-client@4 >&2
fi
echo "$NR_HOME"
