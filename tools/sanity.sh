#!/usr/bin/env bash
# Usage: tools/sanity.sh [RELEASE...]   ansible-test sanity under each ansible-core release given
# (default: the one of .venv), each from its own venv (tools/core-venv.sh).
# ansible-test wants the collection at .../ansible_collections/fleetcast/imaging and a tree of its
# own, free of venvs and build output: it runs on a copy of the tracked tree.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -eq 0 ]; then
  set -- "$("$here/.venv/bin/python" -c 'import ansible.release as r; print(".".join(r.__version__.split(".")[:2]))')"
fi
mkdir -p "$here/.build"

# ansible-test bootstraps pip in its per-test venvs from a script it downloads from a host this
# machine cannot reach; it accepts a cached copy, so we provide a stand-in that uses ensurepip and
# then installs the requested pip from the package index.
pip_shim() {
  local venv=$1 pip_version shim
  pip_version=$(grep -o "pip='[0-9.]*'" "$venv"/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | head -1 | cut -d"'" -f2)
  shim="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
  [ -f "$shim" ] && return 0
  mkdir -p "$(dirname "$shim")"
  cat > "$shim" <<'PY'
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
PY
}

status=0
for release in "$@"; do
  venv=$("$here/tools/core-venv.sh" "$release")
  pip_shim "$venv"
  # A tree of its own per run, so that two runs at once cannot disturb each other.
  scratch=$(mktemp -d "$here/.build/sanity.XXXXXX")
  tree="$scratch/ansible_collections/fleetcast/imaging"
  mkdir -p "$tree"
  (cd "$here" && git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents -P {} "$tree" 2>/dev/null || true)
  log="$here/.build/sanity-$release.log"
  if (cd "$tree" && git init -q . && git add -A >/dev/null &&
      "$venv/bin/ansible-test" sanity --local --requirements --python 3.11 --skip-test pslint) > "$log" 2>&1; then
    echo "sanity: ansible-test sanity clean under ansible-core $("$venv/bin/python" -c 'import ansible.release as r; print(r.__version__)') ($(grep -c '^Running sanity test' "$log") tests)"
  else
    echo "sanity: ansible-core $release FAILED ($log):"
    grep -E '^(ERROR|FATAL)' "$log" || tail -40 "$log"
    status=1
  fi
  rm -rf "$scratch"
done
exit $status
