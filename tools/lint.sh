#!/usr/bin/env bash
# ansible-lint (production profile, .ansible-lint) on the whole collection - galaxy.yml, meta/,
# roles, playbooks, plugin docs - offline; then antsibull-docs on the collection's docs (plugin
# docs, docs/docsite/links.yml and extra-docs.yml), as the Ansible docs site builds them.
set -euo pipefail
cd "$(dirname "$0")/.."
export ANSIBLE_COLLECTIONS_PATH="$PWD/.build/collections"
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ansible-lint -q
echo "lint: ansible-lint clean (production profile) on the collection"
# antsibull-docs wants the collection at .../ansible_collections/fleetcast/imaging.
mkdir -p .build/collections/ansible_collections/fleetcast
ln -sfn "$PWD" .build/collections/ansible_collections/fleetcast/imaging
(cd .build/collections/ansible_collections/fleetcast/imaging &&
  antsibull-docs lint-collection-docs --plugin-docs . > "$OLDPWD/.build/docs-lint.log" 2>&1) || {
  grep -E ':[0-9]+:[0-9]+: ' .build/docs-lint.log || tail -30 .build/docs-lint.log
  exit 1
}
echo "lint: antsibull-docs lint-collection-docs clean"
