"""The changelog: fragments lint clean, none announces a new module, plugin, role or playbook
(antsibull-changelog lists those itself from version_added), and tools/release.sh turns them into
release notes that name every module and role of the collection. Run on a copy of the tree."""
import glob
import os
import re
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_no_fragment_announces_a_new_module_or_plugin():
    offending = []
    for path in sorted(glob.glob(os.path.join(ROOT, "changelogs", "fragments", "*.y*ml"))):
        for section, entries in (yaml.safe_load(open(path, encoding="utf-8")) or {}).items():
            for entry in entries if isinstance(entries, list) else []:
                if re.search(r"\bnew (module|plugin|role|playbook|connection|lookup|filter)\b|^\S+ - new[;.]", entry,
                             re.I):
                    offending.append(f"{os.path.basename(path)} {section}: {entry[:100]}")
    assert not offending, "\n".join(offending)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_release_notes_name_every_module_and_role(tmp_path):
    tree = tmp_path / "ansible_collections" / "fleetcast" / "imaging"
    tree.mkdir(parents=True)
    subprocess.run(f"git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - "
                   f"| tar -xf - -C {tree}", shell=True, cwd=ROOT, check=True, capture_output=True)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["tools/release.sh", "--date", "2026-12-01"], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    notes = (tree / "CHANGELOG.md").read_text()
    assert (tree / "CHANGELOG.rst").exists()
    assert not glob.glob(str(tree / "changelogs" / "fragments" / "*.yml")), "fragments were not folded in"
    modules = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py")))
    roles = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "roles", "*")))
    new = notes[notes.index("New Modules"):]
    for module in modules:
        assert f"fleetcast\\.imaging\\.{module.replace('_', chr(92) + '_')} \\- " in new, module
    for role in roles:
        assert f"fleetcast\\.imaging\\.{role.replace('_', chr(92) + '_')} \\- " in notes[notes.index("New Roles"):], role
    assert "fleetcast\\.imaging\\.netns \\- " in notes
    changes = yaml.safe_load((tree / "changelogs" / "changelog.yaml").read_text())
    version = yaml.safe_load(open(os.path.join(ROOT, "galaxy.yml"), encoding="utf-8"))["version"]
    assert changes["releases"][version]["changes"]["release_summary"]
