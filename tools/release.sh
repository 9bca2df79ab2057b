#!/usr/bin/env bash
# Usage: tools/release.sh [extra antsibull-changelog release options]
# Release notes for the version galaxy.yml names: checks every fragment, folds them into
# changelogs/changelog.yaml (removing the fragment files) and regenerates CHANGELOG.md and
# CHANGELOG.rst. New modules, plugins and roles are listed from the collection itself (their
# version_added), never from fragments. Run it on main after the last merge of the release, then
# commit, tag and `ansible-galaxy collection build` (docs/releasing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/antsibull-changelog ] && PATH="$PWD/.venv/bin:$PATH"
version=$(sed -n 's/^version: *//p' galaxy.yml)
antsibull-changelog lint
antsibull-changelog release --version "$version" "$@"
echo "release: CHANGELOG.md and CHANGELOG.rst written for $version"
