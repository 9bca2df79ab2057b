# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

# Documented in plugins/modules/progress.py (where ansible-doc looks for an action's options).
import json
import shlex
import time

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.plugins.loader import fragment_loader
from ansible.utils.display import Display
from ansible.utils.plugin_docs import get_docstring

display = Display()

MiB = 1024 * 1024

# Runs on the host to cancel the job: end the process group of every process started from the
# job's own temporary directory (a unique path), and nothing else.
_CANCEL_SCRIPT = r"""
import os, signal, sys
marker = sys.argv[1].encode()
me = os.getpgid(0)
groups = set()
for pid in os.listdir('/proc'):
    if not pid.isdigit():
        continue
    try:
        with open('/proc/%s/cmdline' % pid, 'rb') as handle:
            if marker in handle.read():
                groups.add(os.getpgid(int(pid)))
    except OSError:
        pass
groups.discard(me)
for group in groups:
    try:
        os.killpg(group, signal.SIGTERM)
    except OSError:
        pass
print(len(groups))
"""


def format_progress(host: str, elapsed: float, progress: dict | None) -> str:
    """One line a person can read: host, elapsed time, overall share, rate and each receiver."""
    line = f"{host}: {int(elapsed) // 60}:{int(elapsed) % 60:02d}"
    if not progress:
        return line + " running"
    done, total = progress.get("bytes_done"), progress.get("bytes_total")
    receivers = progress.get("receivers")
    if isinstance(done, (int, float)):
        # With receivers listed, the overall figure is what every one of them holds (the slowest):
        # say so, or "0%" beside a receiver that is done reads as a contradiction.
        line += (" slowest" if isinstance(receivers, dict) and len(receivers) > 1 else "") + f" {done / MiB:.1f} MiB"
        if isinstance(total, (int, float)) and total > 0:
            line += f" of {total / MiB:.1f} MiB ({100.0 * done / total:.0f}%)"
        if elapsed > 0:
            line += f", {done / MiB / elapsed:.1f} MiB/s"
    if isinstance(receivers, dict) and receivers:
        parts = []
        for name in sorted(receivers):
            info = receivers[name] if isinstance(receivers[name], dict) else {}
            part = f"{name} {info.get('state', '?')}"
            if isinstance(info.get("bytes_done"), (int, float)) and isinstance(total, (int, float)) and total > 0:
                part += f" {100.0 * info['bytes_done'] / total:.0f}%"
            parts.append(part)
        line += " | " + ", ".join(parts)
    if progress.get("message"):
        line += f" | {progress['message']}"
    return line


class ActionModule(ActionBase):

    _VALID_ARGS = frozenset(("module", "module_args", "timeout", "poll_interval", "progress_option"))
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=dict(
            module=dict(type="str", required=True),
            module_args=dict(type="dict", default={}),
            timeout=dict(type="int", default=3600),
            poll_interval=dict(type="float", default=2.0),
            progress_option=dict(type="str"),
        ))
        module = args["module"]
        module_args = dict(args["module_args"])
        host = task_vars.get("inventory_hostname", "?") if task_vars else "?"
        if self._task.delegate_to:
            host = self._task.delegate_to

        if self._play_context.check_mode:
            # A plan is quick: run it in the foreground and hand its answer back as is.
            result.update(self._execute_module(module_name=module, module_args=module_args,
                                               task_vars=task_vars))
            return result

        tmpdir = self._connection._shell.tmpdir or self._make_tmp_path()
        progress_path = None
        if args["progress_option"]:
            if self._documents_option(module, args["progress_option"]):
                progress_path = self._connection._shell.join_path(tmpdir, "progress.json")
                module_args[args["progress_option"]] = progress_path
            else:
                display.warning(f"{module} has no option {args['progress_option']}: "
                                "only the elapsed time can be shown while it runs.")

        started = time.monotonic()
        job_id = None
        finished = False
        last_progress = None
        # The async wrapper's own limit is only a backstop, a little later than ours: our loop
        # cancels the job and says so; a poll that takes long (a loaded host) must not let the
        # wrapper's bare "Timeout exceeded" come first.
        self._task.async_val = args["timeout"] + max(30, int(4 * args["poll_interval"]))
        try:
            start = self._execute_module(module_name=module, module_args=module_args,
                                         task_vars=task_vars, wrap_async=True)
            job_id = start.get("ansible_job_id")
            # The job's own directory is removed by the job; the polls below get a new one, ours.
            self._cleanup_remote_tmp = True
            if start.get("failed") or not job_id:
                result.update(start)
                finished = True
                return result
            while True:
                time.sleep(args["poll_interval"])
                status = self._job_status(job_id, "status", task_vars)
                elapsed = time.monotonic() - started
                if progress_path:
                    last_progress = self._read_progress(progress_path) or last_progress
                if status.get("finished"):
                    finished = True
                    if status.get("failed") and status.get("msg") == "Timeout exceeded":
                        raise AnsibleActionFail(f"{module} on {host} did not finish within "
                                                f"{args['timeout']} seconds and was cancelled.")
                    for key in ("ansible_job_id", "started", "finished", "results_file"):
                        status.pop(key, None)
                    result.update(status)
                    break
                if status.get("failed"):
                    # async_status failed itself (job file unreadable): say so, then cancel below.
                    raise AnsibleActionFail(f"Cannot follow {module} on {host}: "
                                            f"{status.get('msg', 'job status unreadable')}")
                display.display(format_progress(host, elapsed, last_progress))
                if elapsed > args["timeout"]:
                    raise AnsibleActionFail(f"{module} on {host} did not finish within "
                                            f"{args['timeout']} seconds and was cancelled.")
        finally:
            self._task.async_val = 0
            if job_id and not finished:
                self._cancel(tmpdir, job_id, task_vars)
        result["progress_elapsed"] = round(time.monotonic() - started, 3)
        if last_progress is not None:
            result["progress_last"] = last_progress
        return result

    def _documents_option(self, module: str, option: str) -> bool:
        """Whether the module's documentation lists `option` (so passing it cannot break it),
        read as ansible-doc reads it: doc fragments merged in. Any failure to read it counts as
        'not documented' (the progress lines then show the elapsed time only)."""
        try:
            context = self._shared_loader_obj.module_loader.find_plugin_with_context(
                module, collection_list=self._task.collections)
            if not context.resolved or not context.plugin_resolved_path:
                return False
            doc = get_docstring(context.plugin_resolved_path, fragment_loader, verbose=False, ignore_errors=True,
                                collection_name=context.plugin_resolved_collection or None,
                                is_module=True, plugin_type="module")[0] or {}
        except Exception as exc:  # an ansible-core whose loader API differs: degrade, do not fail the task
            display.vvv(f"progress: cannot read the documentation of {module}: {exc}")
            return False
        return option in (doc.get("options") or {})

    def _job_status(self, job_id: str, mode: str, task_vars: dict) -> dict:
        # What the async_status action does, without a task of its own.
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        return self._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                    module_args=dict(jid=job_id, mode=mode, _async_dir=async_dir))

    def _read_progress(self, path: str) -> dict | None:
        res = self._low_level_execute_command("cat " + shlex.quote(path) + " 2>/dev/null",
                                              sudoable=True)
        if res.get("rc") != 0:
            return None
        try:
            value = json.loads(to_text(res.get("stdout", "")))
        except ValueError:
            return None  # being replaced right now; the next poll reads it
        return value if isinstance(value, dict) else None

    def _cancel(self, tmpdir: str, job_id: str, task_vars: dict) -> None:
        interpreter = (task_vars or {}).get("ansible_python_interpreter") or "/usr/bin/python3"
        command = " ".join(shlex.quote(part) for part in (
            interpreter, "-c", _CANCEL_SCRIPT, tmpdir))
        res = self._low_level_execute_command(command, sudoable=True)
        display.warning(f"Cancelled job {job_id}: ended {to_text(res.get('stdout', '')).strip() or 0} "
                        f"process group(s) on {self._play_context.remote_addr}.")
        self._job_status(job_id, "cleanup", task_vars)
        self._remove_tmp_path(tmpdir, force=True)
