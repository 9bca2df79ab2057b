"""Every command and example in README.md and docs/ runs as written (docs/docs-examples.md says
how each kind of block is checked; keep the two in step).

- ```shell blocks: each command (backslash continuations joined, comments dropped) is matched
  against RULES below; a command no rule knows fails the test, naming the file and line.
- ```yaml blocks: must parse; a play list, a task list or a play-keyword fragment is
  syntax-checked as a playbook and every fleetcast.imaging module's arguments (tasks and
  module_defaults, groups expanded from meta/runtime.yml) must be options the module documents;
  an inventory (top key `all`) must load with ansible-inventory.
- Any other fence (untagged, text, json, python) is illustration and is not run.
"""
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.path.dirname(sys.executable)
LAB_INVENTORY = os.path.join(ROOT, "playbooks", "inventory", "lab.yml")
DOCS = ["README.md"] + sorted(os.path.relpath(path, ROOT)
                              for path in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.M | re.S)


def _env():
    return dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
                ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
                ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8", PATH=BIN + os.pathsep + os.environ.get("PATH", ""))


def _run(argv, cwd=ROOT, timeout=120):
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)


def blocks():
    """(file, line, tag, body) of every fenced block in README.md and docs/."""
    found = []
    for name in DOCS:
        text = open(os.path.join(ROOT, name), encoding="utf-8").read()
        for match in FENCE.finditer(text):
            found.append((name, text[:match.start()].count("\n") + 1, match.group(1), match.group(2)))
    return found


def commands(body):
    """The commands of a shell block: continuations joined, comments and blank lines dropped."""
    out, pending = [], ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


# ---------------------------------------------------------------------------------------------
# Module documentation, read once.

_DOC_CACHE = {}


def module_options(names):
    """{fqcn: set of documented options} (one ansible-doc call for all names not read yet)."""
    missing = sorted(set(names) - set(_DOC_CACHE))
    if missing:
        proc = _run([os.path.join(BIN, "ansible-doc"), "-j"] + missing)
        assert proc.returncode == 0, proc.stderr
        for name, data in json.loads(proc.stdout).items():
            _DOC_CACHE[name] = set((data.get("doc") or {}).get("options") or {})
    return {name: _DOC_CACHE.get(name) for name in names}


def action_group(name):
    runtime = yaml.safe_load(open(os.path.join(ROOT, "meta", "runtime.yml"), encoding="utf-8"))
    group = name.split("/", 1)[1].rsplit(".", 1)[1]
    return ["fleetcast.imaging." + module for module in runtime["action_groups"][group]]


def _tasks(items):
    for item in items or []:
        if not isinstance(item, dict):
            continue
        yield item
        for key in ("block", "rescue", "always"):
            yield from _tasks(item.get(key))


def option_problems(plays):
    """Arguments given to fleetcast.imaging modules (tasks and module_defaults) that the module
    does not document."""
    wanted = []   # (where, module, argument names)
    for play in plays:
        for key, defaults in (play.get("module_defaults") or {}).items():
            modules = action_group(key) if key.startswith("group/") else [key]
            wanted += [(f"module_defaults {key}", module, set(defaults or {})) for module in modules]
        for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
            for task in _tasks(play.get(section)):
                for key, args in task.items():
                    if key.startswith("fleetcast.imaging.") and isinstance(args, dict):
                        wanted.append((f"task {task.get('name', key)!r}", key, set(args)))
    docs = module_options({module for dummy, module, dummy2 in wanted})
    problems = []
    for where, module, args in wanted:
        if docs[module] is None:
            problems.append(f"{where}: no module {module}")
        elif args - docs[module]:
            problems.append(f"{where}: {module} has no option(s) {sorted(args - docs[module])}")
    return problems


# ---------------------------------------------------------------------------------------------
# Shell commands. Each rule: (predicate on argv, check). A check returns None when the command is
# fine, or a sentence saying what is wrong.

def _strip_env(argv):
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
        argv = argv[1:]
    return argv


def _tool(argv):
    return os.path.basename(argv[0]) if argv else ""


def check_playbook(argv, ctx):
    # Every ansible-playbook command is syntax-checked; real runs of the lab, deploy and capture
    # playbooks are the lab tests (tests/integration/deploy, tests/integration/release).
    words = [ctx["inventory"] if word == "inventory.yml" else word for word in argv[1:]]
    argv = [os.path.join(BIN, "ansible-playbook")] + words + ["--syntax-check"]
    proc = _run(argv)
    return None if proc.returncode == 0 else f"syntax check failed: {proc.stdout[-800:]} {proc.stderr[-800:]}"


def check_doc(argv, ctx):
    proc = _run([os.path.join(BIN, "ansible-doc")] + argv[1:])
    return None if proc.returncode == 0 and proc.stdout.strip() else f"ansible-doc failed: {proc.stderr[-800:]}"


def check_adhoc(argv, ctx):
    # Ad-hoc commands act on hosts (the lab's tear-down, for example): not run; the module must
    # exist and every key=value argument must be one of its options.
    words = argv[1:]
    module = words[words.index("-m") + 1]
    args = words[words.index("-a") + 1] if "-a" in words else ""
    options = module_options([module])[module]
    if options is None:
        return f"no module {module}"
    unknown = {pair.split("=", 1)[0] for pair in shlex.split(args) if "=" in pair} - options
    return f"{module} has no option(s) {sorted(unknown)}" if unknown else None


def check_builder(argv, ctx):
    # `ansible-builder build` needs podman or docker and the base image: `create` writes the same
    # build context from the same definition, which is what can fail in our files.
    words = argv[1:]
    definition = words[words.index("-f") + 1]
    context = os.path.join(ctx["scratch"], "ee-context")
    proc = _run([os.path.join(BIN, "ansible-builder"), "create", "-f", definition, "-c", context])
    return None if proc.returncode == 0 else f"ansible-builder create failed: {proc.stdout[-800:]}{proc.stderr[-800:]}"


def check_pip(argv, ctx):
    # Not run: the package must be one tools/requirements.txt installs for everyone.
    wanted = {re.split(r"[<>=!~\[ ]", word)[0].lower() for word in argv[2:] if not word.startswith("-")}
    listed = {re.split(r"[<>=!~\[ ]", line.strip())[0].lower()
              for line in open(os.path.join(ROOT, "tools", "requirements.txt"), encoding="utf-8")
              if line.strip() and not line.startswith("#")}
    return f"not in tools/requirements.txt: {sorted(wanted - listed)}" if wanted - listed else None


def check_apt(argv, ctx):
    # Not run (it installs): every package must exist for apt (tools/bootstrap.sh installs them).
    missing = []
    for package in (word for word in argv[2:] if not word.startswith("-")):
        installed = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True,
                                   text=True, check=False).stdout
        if "ok installed" not in installed and subprocess.run(
                ["apt-cache", "show", "--no-all-versions", package], capture_output=True, check=False).returncode:
            missing.append(package)
    return f"apt knows no package(s) {missing}" if missing else None


def check_galaxy(argv, ctx):
    if argv[1:3] == ["collection", "build"]:
        proc = _run([os.path.join(BIN, "ansible-galaxy")] + argv[1:] + ["--output-path", ctx["scratch"], "--force"])
        return None if proc.returncode == 0 else f"build failed: {proc.stderr[-800:]}"
    # `collection install fleetcast.imaging` needs Galaxy: the tarball test installs the built
    # collection the same way (tests/integration/release/test_tarball.py).
    if argv[1:3] == ["collection", "install"]:
        return None
    return "no rule for this ansible-galaxy command"


def check_run(argv, ctx):
    proc = _run(argv)
    return None if proc.returncode == 0 else f"exited {proc.returncode}: {proc.stdout[-800:]}{proc.stderr[-800:]}"


COVERED = {
    # command (first words) -> where it is exercised instead of here
    ("make", "demo"): "tests/integration/release/test_tarball.py runs the same lab.yml from the installed tarball",
    ("make", "test"): "CI (.ci/run) runs it",
    ("make", "e2e"): "run by hand before a release (qemu VMs, 30-60 minutes on 2 cores; not in CI); its engine "
                     "pieces are unit-tested in tests/unit/boot",
    ("podman", "push"): "needs a container registry; the image it pushes is built by `ansible-builder build`",
    ("docker", "push"): "needs a container registry",
    ("tools/release.sh",): "tests/integration/release/test_changelog.py runs it on a copy of the tree",
}

RULES = [
    (lambda a: _tool(a) == "ansible-playbook", check_playbook),
    (lambda a: _tool(a) == "ansible-doc", check_doc),
    (lambda a: _tool(a) == "ansible" and "-m" in a, check_adhoc),
    (lambda a: _tool(a) == "ansible-builder" and a[1:2] in (["build"], ["create"]), check_builder),
    (lambda a: _tool(a) in ("pip", "pip3") and a[1:2] == ["install"], check_pip),
    (lambda a: _tool(a) in ("apt-get", "apt") and a[1:2] == ["install"], check_apt),
    (lambda a: _tool(a) == "ansible-galaxy", check_galaxy),
    (lambda a: _tool(a) in ("bindep", "antsibull-changelog", "antsibull-docs", "ansible-inventory")
     and not (a[1:2] == ["release"]), check_run),
]


def _covered(argv):
    for words, dummy in COVERED.items():
        if tuple(argv[:len(words)]) == words:
            return True
    return False


def _inventory_of(name, scratch):
    """The file's own example inventory (a yaml block with `all:`) as scratch/inventory.yml, or
    the lab's, for commands that say `-i inventory.yml`."""
    for doc, dummy, tag, body in blocks():
        if doc == name and tag == "yaml":
            data = yaml.safe_load(body)
            if isinstance(data, dict) and "all" in data:
                path = os.path.join(scratch, "inventory.yml")
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(body)
                return path
    return LAB_INVENTORY


SHELL_BLOCKS = [b for b in blocks() if b[2] == "shell"]
YAML_BLOCKS = [b for b in blocks() if b[2] == "yaml"]


def test_the_docs_have_examples_to_check():
    # The rule is only worth something while the docs tag their examples.
    assert len(SHELL_BLOCKS) >= 5 and len(YAML_BLOCKS) >= 4, (len(SHELL_BLOCKS), len(YAML_BLOCKS))


@pytest.mark.parametrize("name,line,tag,body", SHELL_BLOCKS, ids=[f"{b[0]}:{b[1]}" for b in SHELL_BLOCKS])
def test_shell_block_runs(name, line, tag, body, tmp_path):
    ctx = {"scratch": str(tmp_path), "inventory": _inventory_of(name, str(tmp_path))}
    problems = []
    for argv in commands(body):
        argv = _strip_env(argv)
        if _covered(argv):
            continue
        for matches, check in RULES:
            if matches(argv):
                why = check(argv, ctx)
                if why:
                    problems.append(f"{name}:{line}: `{shlex.join(argv)}`: {why}")
                break
        else:
            problems.append(f"{name}:{line}: `{shlex.join(argv)}`: no rule checks this command: add one to "
                            "tests/integration/docs/test_docs_examples.py (see docs/docs-examples.md)")
    assert not problems, "\n".join(problems)


def _as_plays(data):
    """The block as a list of plays, or None when it is not Ansible content."""
    if isinstance(data, dict) and set(data) & {"module_defaults", "vars", "collections"} and "all" not in data:
        return [dict({"name": "Example", "hosts": "localhost", "gather_facts": False, "tasks": []}, **data)]
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        if all("hosts" in item or "ansible.builtin.import_playbook" in item or "import_playbook" in item
               for item in data):
            return data
        return [{"name": "Example", "hosts": "localhost", "gather_facts": False, "tasks": data}]
    return None


@pytest.mark.parametrize("name,line,tag,body", YAML_BLOCKS, ids=[f"{b[0]}:{b[1]}" for b in YAML_BLOCKS])
def test_yaml_block_is_valid(name, line, tag, body, tmp_path):
    data = yaml.safe_load(body)
    if isinstance(data, dict) and "all" in data:
        path = tmp_path / "inventory.yml"
        path.write_text(body)
        proc = _run([os.path.join(BIN, "ansible-inventory"), "-i", str(path), "--graph"])
        assert proc.returncode == 0 and "@all" in proc.stdout, f"{name}:{line}: {proc.stderr}"
        return
    plays = _as_plays(data)
    if plays is None:
        return   # data of another kind (a requirements file, a manifest): parsing is the check
    problems = option_problems([play for play in plays if "hosts" in play])
    assert not problems, f"{name}:{line}: " + "; ".join(problems)
    playbook = tmp_path / "example.yml"
    playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    proc = _run([os.path.join(BIN, "ansible-playbook"), "-i", LAB_INVENTORY, str(playbook), "--syntax-check"])
    assert proc.returncode == 0, f"{name}:{line}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"


def test_the_option_check_catches_an_unsupported_group_default():
    # The example that used to be in docs/reference.md: no module of the group but three has
    # `threads`, so ansible-core refuses it for the others ("Unsupported parameters").
    problems = option_problems([{"hosts": "all", "module_defaults": {"group/fleetcast.imaging.imaging": {"threads": 4}},
                                 "tasks": []}])
    assert any("fleetcast.imaging.disk_wipe has no option(s) ['threads']" in p for p in problems), problems


def test_every_command_is_split_as_a_shell_would():
    assert commands("A=1 B=2 \\\n  .venv/bin/ansible-playbook -i x.yml p.yml   # comment\n\n# only\nmake demo\n") == [
        ["A=1", "B=2", ".venv/bin/ansible-playbook", "-i", "x.yml", "p.yml"], ["make", "demo"]]
    assert _strip_env(["A=1", "ansible-doc", "x"]) == ["ansible-doc", "x"]
    assert shutil.which("dpkg-query")
