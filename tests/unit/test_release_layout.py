"""Release hygiene that a file layout decides: playbook names that resolve, one supported range of
ansible-core stated alike everywhere, one project URL, every guide on the docs site."""
import glob
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _yaml(*parts):
    return yaml.safe_load(open(os.path.join(ROOT, *parts), encoding="utf-8"))


def test_no_directory_shadows_a_playbook():
    # `ansible-playbook fleetcast.imaging.lab` looks for playbooks/lab before playbooks/lab.yml: a
    # directory of that name makes it fail with "Is a directory".
    for path in glob.glob(os.path.join(ROOT, "playbooks", "*.y*ml")):
        stem = os.path.splitext(path)[0]
        assert not os.path.isdir(stem), f"playbooks/{os.path.basename(stem)}/ hides {os.path.basename(path)}"


def test_supported_ansible_core_range_is_stated_alike_everywhere():
    releases = [line.strip() for line in open(os.path.join(ROOT, "tools", "ansible-versions.txt"), encoding="utf-8")
                if line.strip() and not line.startswith("#")]
    oldest, newest = releases[0], releases[-1]
    upper = f"{newest.split('.')[0]}.{int(newest.split('.')[1]) + 1}"
    assert _yaml("meta", "runtime.yml")["requires_ansible"] == f">={oldest}.0,<{upper}.0"
    ee = _yaml("meta", "execution-environment.yml")
    assert ee["dependencies"]["ansible_core"]["package_pip"] == f"ansible-core>={oldest},<{upper}"
    requirements = open(os.path.join(ROOT, "tools", "requirements.txt"), encoding="utf-8").read()
    assert f"ansible-core>={newest},<{upper}" in requirements


def test_one_project_url():
    galaxy = _yaml("galaxy.yml")
    base = galaxy["repository"]
    assert base.startswith("https://") and "example" not in base
    for key in ("documentation", "homepage", "issues"):
        assert galaxy[key].startswith(base), key
    links = _yaml("docs", "docsite", "links.yml")
    assert base.endswith("/" + links["edit_on_github"]["repository"])
    assert all(link["url"].startswith(base) for link in links["extra_links"])
    assert os.path.isfile(os.path.join(ROOT, "LICENSE"))
    assert galaxy["license"] == ["GPL-3.0-or-later"]


def test_every_guide_is_on_the_docs_site():
    listed = open(os.path.join(ROOT, "docs", "docsite", "rst", "guides.rst"), encoding="utf-8").read()
    extra = _yaml("docs", "docsite", "extra-docs.yml")
    assert [entry for section in extra["sections"] for entry in section["toctree"]] == ["guides"]
    for path in glob.glob(os.path.join(ROOT, "docs", "*.md")):
        name = os.path.basename(path)
        assert re.search(rf"/docs/{re.escape(name)}>`_", listed), f"docs/docsite/rst/guides.rst does not list {name}"
