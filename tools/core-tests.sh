#!/usr/bin/env bash
# Usage: tools/core-tests.sh RELEASE...
# The unit tests that exercise ansible-core itself (they run its CLI, load our plugins or use
# AnsibleModule: found by what they import or call), under each ansible-core release given, each
# from its own venv (tools/core-venv.sh). The rest of tests/unit tests the engine, which imports
# no Ansible, so another ansible-core cannot change its result. The release of .venv is skipped:
# `pytest tests` already ran everything under it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
current=$(.venv/bin/python -c 'import ansible.release as r; print(".".join(r.__version__.split(".")[:2]))')
mapfile -t files < <(grep -lE 'from ansible(\.| import)|^import ansible|"ansible-playbook"|"ansible-doc"|"ansible"\)|AnsibleModule' \
  -r tests/unit --include='test_*.py' | sort)
status=0
for release in "$@"; do
  [ "$release" = "$current" ] && continue
  venv=$(tools/core-venv.sh "$release")
  version=$("$venv/bin/python" -c 'import ansible.release as r; print(r.__version__)')
  if "$venv/bin/python" -m pytest -p no:cacheprovider -q "${files[@]}" > ".build/core-tests-$release.log" 2>&1; then
    echo "core-tests: ansible-core $version: $(tail -1 ".build/core-tests-$release.log")"
  else
    echo "core-tests: ansible-core $version FAILED (.build/core-tests-$release.log):"
    tail -30 ".build/core-tests-$release.log"
    status=1
  fi
done
exit $status
