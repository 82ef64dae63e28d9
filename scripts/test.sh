#!/usr/bin/env bash
# Runs every test: unit, integration (in-process fakes) and end-to-end against real
# Node-RED 4. Installs what it needs: Node-RED with npm into ~/.cache/flowgate/node-red
# (Node.js 20 must be present), and Rust crates through cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "Node.js is required (apt-get install nodejs npm)" >&2; exit 1; }
bash scripts/install-node-red.sh >/dev/null
cargo test --locked "$@"
