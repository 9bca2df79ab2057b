# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the collection: may change without notice. Plain Python (no Ansible imports), so
# that it runs under pytest directly.
"""The kept report of one deployment: what each participant went through, as data (JSON), as a
page a person reads (Markdown), and as the few lines of the summary the run prints.

The input is what deploy.yml leaves per participant: `result` (imaging_result: bytes, seconds,
digest, digest_verified, read_back, identity_reapplied, fsck_clean, fsck_checked, ok), `failure`
(imaging_failure: stage, msg) and the identity summaries saved before the wipe and read back from
the new system.
"""

from __future__ import annotations

import json
import os
import tempfile

REPORT_VERSION = 1

# The stages of deploy.yml, in order; a failure at one means every later stage did not run.
STAGES = ("preflight", "wipe", "multicast", "verify", "identity re-apply", "fsck")

# Keys of an identity summary that the post-deploy check compares (the rest is shown only).
_IDENTITY_COMPARED = ("hostname", "machine_id", "ssh_fingerprints")

_COLUMNS = "%-12s %-8s %12s %8s %-9s %-7s %-6s"


def _number(value):
    """An int or float from a value that may be a number, a numeric string, '-' or missing."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        text = str(value).strip()
        return int(text) if text.isdigit() else float(text)
    except ValueError:
        return None


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1")
    return bool(value)


def host_entry(name: str, result: dict | None, failure: dict | None, check_mode: bool,
               identity_saved: dict | None = None, identity_found: dict | None = None) -> dict:
    """One participant's part of the report."""
    result = result if isinstance(result, dict) else {}
    if isinstance(failure, dict):
        stage = str(failure.get("stage") or "unknown stage")
        outcome, reason = "failed", str(failure.get("msg") or "failed")
    elif _flag(result.get("unchanged")):
        # deploy_state found the host still holding what its last deploy left: nothing was done
        stage = None
        outcome, reason = "unchanged", str(result.get("reason") or "")
    elif _flag(result.get("ok")):
        stage = None
        outcome, reason = ("planned", "check mode: nothing was written") if check_mode else ("ok", "")
    else:
        stage = None
        outcome, reason = "skipped", "did not take part"

    stages = {}
    for name_of_stage in STAGES:
        if outcome == "failed":
            if name_of_stage == stage:
                stages[name_of_stage] = "failed"
            elif stage in STAGES and STAGES.index(name_of_stage) > STAGES.index(stage):
                stages[name_of_stage] = "not run"
            elif stage in STAGES:
                stages[name_of_stage] = "ok"
            else:
                stages[name_of_stage] = "unknown"
        elif outcome == "ok":
            stages[name_of_stage] = "ok"
        elif outcome in ("planned", "unchanged"):
            stages[name_of_stage] = outcome
        else:
            stages[name_of_stage] = "not run"

    written, seconds = _number(result.get("bytes")), _number(result.get("seconds"))
    # verified: the running clone answered with its own identity (boot_verify, on real machines)
    identity = {"reapplied": _flag(result.get("identity_reapplied")), "verified": _flag(result.get("identity_verified"))}
    if isinstance(identity_saved, dict):
        identity["saved"] = {k: identity_saved[k] for k in sorted(identity_saved)}
    if isinstance(identity_found, dict):
        identity["found"] = {k: identity_found[k] for k in sorted(identity_found)}
        if isinstance(identity_saved, dict):
            identity["checks"] = {key: identity_saved.get(key) == identity_found.get(key)
                                  for key in _IDENTITY_COMPARED if key in identity_saved}
    return {
        "name": name,
        "outcome": outcome,
        "failed_stage": stage,
        "reason": reason,
        "stages": stages,
        "bytes": written,
        "seconds": seconds,
        "rate_mib_s": round(written / seconds / 1048576, 1) if written and seconds else None,
        "digest": result.get("digest") or None,
        "digest_verified": _flag(result.get("digest_verified")),
        "read_back": _flag(result.get("read_back")),
        "identity": identity,
        "fsck": {"clean": _flag(result.get("fsck_clean")), "checked": _number(result.get("fsck_checked"))},
    }


def build(hosts: list[dict], run: dict) -> dict:
    """The whole report: `run` holds the run's facts (playbook, started, finished, check_mode,
    limit, image); `hosts` the entries of host_entry()."""
    totals = {"hosts": len(hosts)}
    for outcome in ("ok", "unchanged", "planned", "failed", "skipped"):
        totals[outcome] = sum(1 for host in hosts if host["outcome"] == outcome)
    totals["bytes"] = sum(host["bytes"] or 0 for host in hosts if host["outcome"] == "ok")
    return {"report_version": REPORT_VERSION, "run": dict(run), "totals": totals, "hosts": list(hosts)}


def summary_lines(report: dict) -> list[str]:
    """The summary the run prints: the table (one short row per participant, so that no callback
    folds it), then each failure with its reason, the totals and where the report is kept."""
    lines = [(_COLUMNS % ("host", "result", "bytes", "seconds", "identity", "digest", "fsck")).rstrip()]
    for host in report["hosts"]:
        lines.append((_COLUMNS % (
            host["name"], host["outcome"].upper() if host["outcome"] == "failed" else host["outcome"],
            "-" if host["bytes"] is None else host["bytes"],
            "-" if host["seconds"] is None else host["seconds"],
            "verified" if host["identity"].get("verified") else "yes" if host["identity"]["reapplied"] else "no",
            "yes" if host["digest_verified"] else "no",
            "clean" if host["fsck"]["clean"] else "-")).rstrip()
            + (f"  {host['reason']}" if host["outcome"] == "unchanged" and host["reason"] else ""))
    if not report["hosts"]:
        lines.append("(no participant in this run)")
    for host in report["hosts"]:
        if host["outcome"] == "failed":
            lines.append(f"{host['name']} failed at {host['failed_stage']}: {host['reason']}")
    if report["run"].get("check_mode"):
        lines.append("Check mode: nothing was written; the table shows the plan.")
    totals = report["totals"]
    lines.append(f"{totals['hosts']} participant(s): {totals['ok']} ok, {totals['unchanged']} unchanged, "
                 f"{totals['planned']} planned, "
                 f"{totals['failed']} failed, {totals['skipped']} skipped")
    files = report.get("files") or {}
    if files.get("markdown"):
        lines.append(f"Report: {files['markdown']}")
        lines.append(f"Data: {files['json']}")
    return lines


def _cell(value) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    """A page a person reads: the run, one table row per host, then every failure with its reason,
    the stages and the identity checks."""
    run = report["run"]
    out = [f"# fleetcast.imaging: {run.get('playbook', 'deploy')} report", ""]
    facts = [("Finished", run.get("finished")), ("Started", run.get("started")),
             ("Mode", "check (nothing was written)" if run.get("check_mode") else "run"),
             ("Limit", run.get("limit")), ("Controller", run.get("controller"))]
    image = run.get("image") or {}
    if image:
        facts += [("Image", image.get("path")), ("Image id", image.get("image_id")),
                  ("Image bytes written per host", image.get("used_bytes"))]
    for label, value in facts:
        if value not in (None, ""):
            out.append(f"- **{label}**: {_cell(value)}")
    totals = report["totals"]
    out += ["", f"**{totals['hosts']} participant(s)**: {totals['ok']} ok, {totals['unchanged']} unchanged, "
                f"{totals['planned']} planned, "
                f"{totals['failed']} failed, {totals['skipped']} skipped; {totals['bytes']} bytes written.", ""]
    out += ["| Host | Result | Bytes | Seconds | MiB/s | Digest verified | Read back | Identity | fsck | Reason |",
            "|---|---|---:|---:|---:|---|---|---|---|---|"]
    for host in report["hosts"]:
        out.append("| " + " | ".join(_cell(v) for v in (
            host["name"], host["outcome"], host["bytes"], host["seconds"], host["rate_mib_s"],
            "yes" if host["digest_verified"] else "no", "yes" if host["read_back"] else "no",
            "verified on the running clone" if host["identity"].get("verified")
            else "re-applied" if host["identity"]["reapplied"] else "no",
            "clean" if host["fsck"]["clean"] else "-",
            (f"at {host['failed_stage']}: {host['reason']}" if host["outcome"] == "failed" else host["reason"]),
        )) + " |")
    failed = [host for host in report["hosts"] if host["outcome"] == "failed"]
    if failed:
        out += ["", "## Failures", ""]
        for host in failed:
            out.append(f"- **{host['name']}** failed at {host['failed_stage']}: {_cell(host['reason'])}")
    out += ["", "## Stages", "", "| Host | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
    for host in report["hosts"]:
        out.append("| " + " | ".join([_cell(host["name"])] + [_cell(host["stages"][s]) for s in STAGES]) + " |")
    out += ["", "## Digests and identity", ""]
    for host in report["hosts"]:
        ident = host["identity"]
        out.append(f"### {host['name']}")
        out.append("")
        out.append(f"- digest of what was written: `{host['digest'] or '-'}`"
                   + (" (matches the image)" if host["digest_verified"] else ""))
        if ident.get("checks"):
            checks = ", ".join(f"{key} {'matches' if ok else 'DIFFERS'}" for key, ok in ident["checks"].items())
            out.append(f"- identity read back from the new system: {checks}")
        found = ident.get("found") or ident.get("saved") or {}
        for key in sorted(found):
            value = found[key]
            value = ", ".join(str(v) for v in value) if isinstance(value, list) else value
            out.append(f"- {key}: {_cell(value)}")
        if host["fsck"]["checked"] is not None:
            out.append(f"- file systems checked: {host['fsck']['checked']}, "
                       + ("all clean" if host["fsck"]["clean"] else "not all clean"))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _write(path: str, text: str) -> None:
    # Written beside its final name and renamed: a reader never sees half a report.
    handle, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def write(report: dict, directory: str, stem: str) -> dict:
    """Writes <stem>.json and <stem>.md into `directory` (made if missing), points latest.json and
    latest.md at them, and returns the report with their absolute paths under `files`."""
    directory = os.path.abspath(directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise OSError(f"Cannot make the report directory {directory}: {exc.strerror or exc}.") from exc
    files = {"json": os.path.join(directory, stem + ".json"), "markdown": os.path.join(directory, stem + ".md")}
    report = dict(report, files=files)
    try:
        _write(files["json"], json.dumps(report, indent=2, sort_keys=True) + "\n")
        _write(files["markdown"], markdown(report))
        for kind, suffix in (("json", ".json"), ("markdown", ".md")):
            latest = os.path.join(directory, "latest" + suffix)
            temp = latest + ".tmp"
            if os.path.lexists(temp):
                os.unlink(temp)
            os.symlink(os.path.basename(files[kind]), temp)
            os.replace(temp, latest)
    except OSError as exc:
        raise OSError(f"Cannot write the report into {directory}: {exc.strerror or exc}.") from exc
    return report
