#!/usr/bin/env bash
# ansible-lint on roles and playbooks (filled in as they appear).
set -euo pipefail
