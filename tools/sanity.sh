#!/usr/bin/env bash
# ansible-test sanity on a copy of the tracked tree (ansible-test wants the collection at
# .../ansible_collections/fleetcast/imaging and a tree of its own, free of venvs and build output).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.build/sanity-venv"
# A tree of its own per run, so that two runs at once cannot disturb each other.
mkdir -p "$here/.build"
scratch=$(mktemp -d "$here/.build/sanity.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
tree="$scratch/ansible_collections/fleetcast/imaging"

if [ ! -x "$venv/bin/ansible-test" ]; then
  /usr/bin/python3 -m venv "$venv"
  version=$("$here/.venv/bin/python" -c 'import ansible.release as r; print(r.__version__)')
  "$venv/bin/pip" install -q --disable-pip-version-check "ansible-core==$version"
fi

# ansible-test bootstraps pip in its per-test venvs from a script it downloads from a host this
# machine cannot reach; it accepts a cached copy, so we provide a stand-in that uses ensurepip and
# then installs the requested pip from the package index.
pip_version=$(grep -o "pip='[0-9.]*'" "$venv"/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | head -1 | cut -d"'" -f2)
shim="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [ ! -f "$shim" ]; then
  mkdir -p "$(dirname "$shim")"
  cat > "$shim" <<'PY'
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
PY
fi

mkdir -p "$tree"
cd "$here"
git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents -P {} "$tree" 2>/dev/null || true
cd "$tree"
git init -q . && git add -A >/dev/null
"$venv/bin/ansible-test" sanity --local --requirements --python 3.11 --skip-test pslint \
  > "$here/.build/sanity.log" 2>&1 || {
    grep -E '^(ERROR|FATAL)' "$here/.build/sanity.log" || tail -40 "$here/.build/sanity.log"
    exit 1
  }
echo "sanity: ansible-test sanity clean ($(grep -c '^Running sanity test' "$here/.build/sanity.log") tests)"
