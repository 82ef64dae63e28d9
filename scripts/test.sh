#!/usr/bin/env bash
# Runs every test: unit, integration (in-process fakes), end-to-end against real Node-RED 4,
# and the status page in headless Chromium. Installs what it needs: Node-RED and
# playwright-core with npm into ~/.cache/flowgate (Node.js 20 must be present), Debian's
# chromium, etcd, protoc and mosquitto with apt (as root), and Rust crates through cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "Node.js is required (apt-get install nodejs npm)" >&2; exit 1; }
bash scripts/install-packages.sh
bash scripts/install-node-red.sh >/dev/null
bash scripts/install-browser.sh >/dev/null
cargo test --locked "$@"
