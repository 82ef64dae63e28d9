#!/usr/bin/env bash
# Installs what the browser test needs and prints the playwright-core folder:
#   Debian's chromium (apt; needs root), and playwright-core from npm into a local cache
#   (FLOWGATE_PLAYWRIGHT_HOME, default ~/.cache/flowgate/playwright). No browser download.
set -euo pipefail
PW_HOME=${FLOWGATE_PLAYWRIGHT_HOME:-$HOME/.cache/flowgate/playwright}
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing chromium (apt) ..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2
  else
    echo "chromium is missing: sudo apt-get install chromium" >&2; exit 1
  fi
fi
mkdir -p "$PW_HOME"
exec 9>"$PW_HOME/.install.lock"
flock 9
if [ ! -f "$PW_HOME/node_modules/playwright-core/package.json" ]; then
  cd "$PW_HOME"
  [ -f package.json ] || echo '{"name":"flowgate-browser-test","private":true}' > package.json
  echo "installing playwright-core (npm) ..." >&2
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error playwright-core@1 >&2
fi
echo "$PW_HOME/node_modules/playwright-core"
