#!/usr/bin/env bash
# Static checks (filled in as the collection grows).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m compileall -q plugins tests bench >/dev/null
