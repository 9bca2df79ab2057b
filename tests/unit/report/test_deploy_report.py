"""The kept report of a deployment: every participant's outcome, stages, bytes, digest, identity
checks and failure reason, in the JSON file, the Markdown page and the printed summary alike."""
import json
import os

import pytest

from ansible_collections.fleetcast.imaging.plugins.plugin_utils import _deploy_report as report_mod

OK = {"ok": True, "bytes": "25165824", "seconds": "2.5", "digest": "ab" * 32, "digest_verified": "True",
      "read_back": True, "identity_reapplied": True, "fsck_clean": True, "fsck_checked": 2}
SAVED = {"hostname": "p1", "machine_id": "1" * 32, "ssh_fingerprints": ["SHA256:aaa"]}


def _report(hosts, check_mode=False):
    return report_mod.build(hosts, {"playbook": "deploy", "finished": "2026-12-01T22:00:00Z",
                                    "check_mode": check_mode, "limit": None})


def test_outcomes_stages_and_identity_checks():
    hosts = [
        report_mod.host_entry("p1", OK, None, False, SAVED, dict(SAVED)),
        report_mod.host_entry("p2", {"bytes": "-", "seconds": "-"},
                              {"stage": "multicast", "msg": "no session was heard on eth0"}, False, SAVED),
        report_mod.host_entry("p3", None, None, False),
        report_mod.host_entry("p4", OK, None, False, SAVED, dict(SAVED, hostname="master")),
    ]
    rep = _report(hosts)
    p1, p2, p3, p4 = rep["hosts"]
    assert p1["outcome"] == "ok" and p1["bytes"] == 25165824 and p1["seconds"] == 2.5
    assert p1["rate_mib_s"] == 9.6 and p1["digest_verified"] is True
    assert set(p1["stages"].values()) == {"ok"}
    assert p1["identity"]["checks"] == {"hostname": True, "machine_id": True, "ssh_fingerprints": True}
    assert p2["outcome"] == "failed" and p2["failed_stage"] == "multicast"
    assert p2["reason"] == "no session was heard on eth0" and p2["bytes"] is None
    assert [p2["stages"][s] for s in report_mod.STAGES] == ["ok", "ok", "failed", "not run", "not run", "not run"]
    assert p3["outcome"] == "skipped"
    assert p4["identity"]["checks"]["hostname"] is False
    assert rep["totals"] == {"hosts": 4, "ok": 2, "unchanged": 0, "planned": 0, "failed": 1, "skipped": 1,
                             "bytes": 2 * 25165824}


def test_check_mode_reports_a_plan():
    rep = _report([report_mod.host_entry("p1", {"ok": True, "bytes": 100, "seconds": 0}, None, True)], True)
    assert rep["hosts"][0]["outcome"] == "planned"
    assert set(rep["hosts"][0]["stages"].values()) == {"planned"}
    lines = report_mod.summary_lines(rep)
    assert lines[1].split() == ["p1", "planned", "100", "0", "no", "no", "-"]
    assert "Check mode: nothing was written; the table shows the plan." in lines


def test_files_hold_every_host_and_reason_and_the_summary_links_them(tmp_path):
    hosts = [report_mod.host_entry("p1", OK, None, False, SAVED, dict(SAVED)),
             report_mod.host_entry("p2", {}, {"stage": "wipe", "msg": "/dev/loop7 | is busy"}, False)]
    rep = report_mod.write(_report(hosts), str(tmp_path / "reports"), "deploy-x")
    data = json.loads((tmp_path / "reports" / "deploy-x.json").read_text())
    assert data["hosts"][1]["reason"] == "/dev/loop7 | is busy"
    assert data["files"]["markdown"] == str(tmp_path / "reports" / "deploy-x.md")
    page = (tmp_path / "reports" / "deploy-x.md").read_text()
    assert "- **p2** failed at wipe: /dev/loop7 \\| is busy" in page
    assert "`" + "ab" * 32 + "` (matches the image)" in page
    assert "identity read back from the new system: hostname matches, machine_id matches" in page
    assert os.readlink(tmp_path / "reports" / "latest.md") == "deploy-x.md"
    lines = report_mod.summary_lines(rep)
    assert lines[0].split() == ["host", "result", "bytes", "seconds", "identity", "digest", "fsck"]
    assert lines[1].split() == ["p1", "ok", "25165824", "2.5", "yes", "yes", "clean"]
    assert lines[2].split() == ["p2", "FAILED", "-", "-", "no", "no", "-"]
    assert lines[3] == "p2 failed at wipe: /dev/loop7 | is busy"
    assert lines[-2:] == [f"Report: {rep['files']['markdown']}", f"Data: {rep['files']['json']}"]
    # The table rows stay short enough that no callback folds them.
    assert all("\n" not in line for line in lines) and all(len(line) < 80 for line in lines[:3])


def test_an_unwritable_directory_is_one_sentence(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"^Cannot make the report directory .*/file/reports: .*\.$"):
        report_mod.write(_report([]), str(blocker / "reports"), "deploy-x")
