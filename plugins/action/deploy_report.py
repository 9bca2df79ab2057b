# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

# Documented in plugins/modules/deploy_report.py (where ansible-doc looks for an action's options).
import os
import socket
import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.fleetcast.imaging.plugins.plugin_utils import _deploy_report


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _run_started() -> float | None:
    """When this ansible-playbook run started: the start time of the controller's main process,
    whose forked workers run action plugins (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{os.getppid()}/stat", encoding="ascii") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _plain(value):
    """Host variables as plain JSON-able data (templating may hand back its own str/dict types)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return str(value)


class ActionModule(ActionBase):

    _VALID_ARGS = frozenset(("participants", "server", "report_dir", "playbook"))
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        dummy, args = self.validate_argument_spec(argument_spec=dict(
            participants=dict(type="list", elements="str", required=True),
            server=dict(type="str"),
            report_dir=dict(type="path"),
            playbook=dict(type="str", default="deploy"),
        ))
        hostvars = task_vars.get("hostvars") or {}
        check_mode = bool(self._play_context.check_mode)

        def var(host, name):
            try:
                value = hostvars[host].get(name) if host in hostvars else None
            except Exception:  # an undefined or failing template counts as absent
                value = None
            return _plain(value) if value is not None else None

        hosts = []
        for host in args["participants"]:
            saved = var(host, "identity_snapshot_record")
            found = var(host, "imaging_identity_readback")
            hosts.append(_deploy_report.host_entry(
                host, var(host, "imaging_result"), var(host, "imaging_failure"), check_mode,
                identity_saved=saved.get("summary") if isinstance(saved, dict) else None,
                identity_found=(found.get("summary") if isinstance(found, dict) and not found.get("failed")
                                else None)))

        image = var(args["server"], "imaging_image_manifest") if args["server"] else None
        now, started = time.time(), _run_started()
        run = {
            "playbook": args["playbook"],
            "finished": _iso(now),
            "started": _iso(started) if started else None,
            "check_mode": check_mode,
            "limit": task_vars.get("ansible_limit") or None,
            "controller": socket.gethostname(),
            "image": {key: image.get(key) for key in ("path", "image_id", "used_bytes", "chunk_count")}
            if isinstance(image, dict) else None,
        }
        report = _deploy_report.build(hosts, run)
        directory = args["report_dir"] or os.path.join(os.getcwd(), "reports")
        stem = f"{args['playbook']}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{os.getppid()}"
        try:
            report = _deploy_report.write(report, directory, stem)
        except OSError as exc:
            raise AnsibleActionFail(str(exc)) from exc

        result.update(
            changed=False,
            report=report,
            lines=_deploy_report.summary_lines(report),
            stats={
                "report": report["files"]["markdown"],
                "report_json": report["files"]["json"],
                "totals": report["totals"],
                "hosts": {host["name"]: (f"failed at {host['failed_stage']}: {host['reason']}"
                                         if host["outcome"] == "failed" else host["outcome"])
                          for host in report["hosts"]},
            },
        )
        return result
