#!/usr/bin/env bash
# Usage: tools/core-venv.sh RELEASE   (e.g. 2.18)  -> prints the venv's directory.
# One venv per ansible-core release under .build/venvs/<release>, with the newest patch release of
# that line from PyPI, ansible-test's own needs and pytest. It sees Debian's site-packages (like
# .venv) so that the unit tests find python3-parted, python3-zstandard, python3-numpy and
# python3-hivex. Re-created only when this script or tools/requirements-core.txt change.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
release=${1:?usage: tools/core-venv.sh RELEASE}
venv="$here/.build/venvs/$release"
stamp="$venv/.fleetcast-core"
want="ansible-core==$release.* $(sha256sum "$here/tools/core-venv.sh" "$here/tools/requirements-core.txt" | cut -c1-16 | tr '\n' ' ')"
if [ ! -x "$venv/bin/ansible-test" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "core-venv: preparing $venv (ansible-core $release.*)" >&2
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "ansible-core==$release.*" \
    -r "$here/tools/requirements-core.txt" > "$venv.log" 2>&1 || { cat "$venv.log" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
echo "$venv"
