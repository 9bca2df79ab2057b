#!/usr/bin/env bash
# ansible-lint on the roles and playbooks (offline: no Galaxy look-ups).
set -euo pipefail
cd "$(dirname "$0")/.."
export ANSIBLE_COLLECTIONS_PATH="$PWD/.build/collections"
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ansible-lint --offline -q roles playbooks
echo "lint: ansible-lint clean on roles and playbooks"
