#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# The work is done by the action plugin plugins/action/deploy_report.py on the controller; this
# file only documents it.

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: deploy_report
short_description: Keep the report of a deployment on the controller and return its summary
version_added: 0.1.0
description:
  - Reads what C(fleetcast.imaging.deploy) left per participant (the host variables
    C(imaging_result), C(imaging_failure), C(identity_snapshot_record) and
    C(imaging_identity_readback)) and writes the run's report on the controller - a JSON file and
    a Markdown page with every host's result, the stages it passed, bytes, seconds, rate, the
    digest of what was written, the identity checks and each failure with its reason.
  - Returns the summary table as a list of lines (print it with M(ansible.builtin.debug) so that
    it reads well under any callback) and a short form for M(ansible.builtin.set_stats), which
    AWX shows as the job's artifacts.
  - The files are C(<playbook>-<UTC time>-<pid>.json) and C(.md) in O(report_dir); C(latest.json)
    and C(latest.md) there point at the newest.
  - In check mode the report is written too (it records the plan; no managed host is changed).
author: fleetcast.imaging developers (@fleetcast)
options:
  participants:
    description: The participants of this run, in the order the report lists them.
    type: list
    elements: str
    required: true
  server:
    description: The image server, whose C(imaging_image_manifest) names the image in the report.
    type: str
  report_dir:
    description:
      - Directory on the controller for the report files; made if missing.
      - Default C(reports) in the directory ansible-playbook runs in. In AWX that directory is
        thrown away with the job's container, so point this at a persistent volume to keep the files
        (the statistics stay with the job anyway).
    type: path
  playbook:
    description: Name of the playbook the report is of (the files' prefix and the page's title).
    type: str
    default: deploy
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The report is written in check mode too, recording the plan; no managed host is changed.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  async:
    description: Supports being used with the C(async) keyword.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: posix
notes:
  - Runs on the controller only (an action plugin); use it with C(run_once).
seealso:
  - module: ansible.builtin.set_stats
"""

EXAMPLES = r"""
- name: Keep the report and print the summary
  fleetcast.imaging.deploy_report:
    participants: "{{ groups['imaging_participants'] }}"
    server: "{{ groups['imaging_server'][0] }}"
    report_dir: /srv/fleetcast/reports
  run_once: true
  register: report

- name: Print the summary, one line per host
  ansible.builtin.debug:
    msg: "{{ report.lines }}"
  run_once: true

- name: Show the outcome in AWX
  ansible.builtin.set_stats:
    data:
      fleetcast_imaging: "{{ report.stats }}"
  run_once: true
"""

RETURN = r"""
lines:
  description: The summary table, one string per line, ending with where the report is kept.
  returned: success
  type: list
  elements: str
  sample:
    - "host         result          bytes  seconds identity  digest  fsck"
    - "p1           ok           25165824      2.1 yes       yes     clean"
    - "1 participant(s): 1 ok, 0 planned, 0 failed, 0 skipped"
    - "Report: /srv/fleetcast/reports/deploy-20261201T221500Z-4242.md (data: /srv/fleetcast/reports/deploy-20261201T221500Z-4242.json)"
report:
  description:
    - The report as written to the JSON file - C(report_version), C(run) (playbook, started,
      finished, check_mode, limit, controller, image), C(totals), C(files) and C(hosts).
    - Each host has C(name), C(outcome) (V(ok), V(planned), V(failed), V(skipped)),
      C(failed_stage), C(reason), C(stages), C(bytes), C(seconds), C(rate_mib_s), C(digest),
      C(digest_verified), C(read_back), C(identity) (C(reapplied), C(saved), C(found), C(checks))
      and C(fsck) (C(clean), C(checked)).
  returned: success
  type: dict
stats:
  description: Paths of the report, the totals and each host's outcome, for M(ansible.builtin.set_stats).
  returned: success
  type: dict
  sample: {"report": "/srv/fleetcast/reports/latest.md", "totals": {"hosts": 3, "ok": 2, "failed": 1},
           "hosts": {"p1": "ok", "p2": "failed at multicast: no session was heard"}}
"""
