"""What a Galaxy user gets: `ansible-galaxy collection build` -> install into a fresh path ->
`ansible-doc -l fleetcast.imaging` lists every module -> the lab deploys from the installed
collection alone (`ansible-playbook fleetcast.imaging.lab`, the checkout out of every path), keeps
its report and links it in the summary. Also: the tarball carries what a user needs and nothing of
the development tree, and ansible-builder's introspection, run the way every EE build runs it,
finds the collection's Python and system requirements."""
import glob
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest
import yaml

from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import standing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.path.dirname(sys.executable)


def _env(collections, tmp_path):
    (tmp_path / "ansible.cfg").write_text("[defaults]\nhost_key_checking = False\nretry_files_enabled = False\n")
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"),
                ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8", PATH=BIN + os.pathsep + os.environ["PATH"])


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    out = tmp_path_factory.mktemp("tarball")
    built = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(out), ROOT],
                           capture_output=True, text=True, check=False, timeout=120)
    assert built.returncode == 0, built.stderr
    tarball = glob.glob(str(out / "fleetcast-imaging-*.tar.gz"))[0]
    collections = out / "collections"
    # A fresh machine: only the new path is searched (the tests' own path holds the checkout).
    done = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-p", str(collections), tarball],
                          capture_output=True, text=True, check=False, timeout=120,
                          env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections)))
    assert done.returncode == 0, done.stderr
    assert (collections / "ansible_collections" / "fleetcast" / "imaging" / "MANIFEST.json").is_file(), done.stdout
    return {"tarball": tarball, "collections": collections,
            "root": collections / "ansible_collections" / "fleetcast" / "imaging"}


def test_tarball_holds_the_collection_and_not_the_development_tree(installed):
    with tarfile.open(installed["tarball"]) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))["collection_info"]
    for wanted in ("LICENSE", "README.md", "meta/runtime.yml", "meta/execution-environment.yml", "meta/bindep.txt",
                   "bindep.txt", "requirements.txt", "changelogs/changelog.yaml", "docs/docsite/links.yml",
                   "docs/docsite/extra-docs.yml", "playbooks/deploy.yml", "playbooks/inventory/lab.yml"):
        assert wanted in names, wanted
    for unwanted in ("Makefile", "pytest.ini", "tools", "bench", ".ci", "tests/unit", "tests/integration",
                     "tests/conftest.py", "changelogs/fragments"):
        assert not any(n == unwanted or n.startswith(unwanted + "/") for n in names), unwanted
    assert manifest["license"] == ["GPL-3.0-or-later"]
    for key in ("repository", "documentation", "homepage", "issues"):
        assert manifest[key].startswith("https://github.com/fleetcast/fleetcast.imaging"), (key, manifest[key])


def test_ansible_doc_lists_every_module_from_the_install(installed, tmp_path):
    proc = subprocess.run([os.path.join(BIN, "ansible-doc"), "-l", "fleetcast.imaging"], capture_output=True,
                          text=True, env=_env(installed["collections"], tmp_path), check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = set(re.findall(r"^fleetcast\.imaging\.(\w+)", proc.stdout, re.M))
    modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py"))}
    assert listed == modules
    assert str(installed["root"]) in subprocess.run(
        [os.path.join(BIN, "ansible-doc"), "fleetcast.imaging.deploy_report"], capture_output=True, text=True,
        env=_env(installed["collections"], tmp_path), check=False).stdout


def test_ee_introspection_finds_the_collection_requirements(installed, tmp_path):
    # ansible-builder writes introspect.py into every build context and runs it on the installed
    # collections: it reads meta/execution-environment.yml's file names against the collection's root.
    context = tmp_path / "context"
    created = subprocess.run([os.path.join(BIN, "ansible-builder"), "create", "-f",
                              os.path.join(ROOT, "meta", "execution-environment.yml"), "-c", str(context)],
                             capture_output=True, text=True, check=False, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    proc = subprocess.run([sys.executable, str(context / "_build" / "scripts" / "introspect.py"), "introspect",
                           str(installed["collections"]), "--write-bindep", str(tmp_path / "bindep.txt"),
                           "--write-pip", str(tmp_path / "pip.txt")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bindep = (tmp_path / "bindep.txt").read_text()
    assert "openssh-client [platform:dpkg]" in bindep and "python3-parted [target platform:dpkg]" in bindep
    definition = yaml.safe_load(open(os.path.join(ROOT, "meta", "execution-environment.yml"), encoding="utf-8"))
    assert definition["dependencies"]["ansible_core"]["package_pip"] == "ansible-core>=2.18,<2.20"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_lab_deploys_from_the_installed_collection(installed, tmp_path):
    name, directory = "fcr" + os.urandom(2).hex(), tmp_path / "lab"
    reports = tmp_path / "reports"
    env = _env(installed["collections"], tmp_path)
    argv = [os.path.join(BIN, "ansible-playbook"), "-i", str(installed["root"] / "playbooks" / "inventory" / "lab.yml"),
            "fleetcast.imaging.lab", "-e", f"imaging_lab_name={name}", "-e", f"imaging_lab_directory={directory}",
            "-e", f"imaging_port={20000 + int.from_bytes(os.urandom(2), 'big') % 20000}",
            "-e", f"imaging_report_dir={reports}"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=360)
    finally:
        standing.destroy(str(directory), name)   # lab.yml tears down itself; this is belt and braces
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:] + proc.stderr[-2000:]
    # Every task ran from the installed copy, none from the checkout.
    assert ROOT + "/plugins" not in out + proc.stderr
    assert re.search(r"4 participant\(s\): 4 ok, 0 unchanged, 0 planned, 0 failed, 0 skipped", out), out[-3000:]
    page = re.search(r"Report: (\S+\.md)", out).group(1)
    data = re.search(r"Data: (\S+\.json)", out).group(1)
    assert os.path.dirname(page) == str(reports) and os.path.isfile(page)
    report = json.loads(open(data, encoding="utf-8").read())
    assert [host["outcome"] for host in report["hosts"]] == ["ok"] * 4   # p1-p3 and the blank p4
    assert all(host["digest_verified"] and host["identity"]["reapplied"] for host in report["hosts"])
    assert not directory.exists(), "the lab was not torn down"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert name + "-" not in listed
