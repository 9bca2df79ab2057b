#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# The work is done by the action plugin plugins/action/progress.py on the controller; this file
# only documents it.

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: progress
short_description: Run a long module in the background and show its progress while it runs
version_added: 0.1.0
description:
  - Starts O(module) on the host as an asynchronous job, polls it every O(poll_interval) seconds
    and prints one progress line per poll (elapsed time, and what the module reports in its
    progress file), then returns the module's own result as the task's result.
  - If the job does not finish within O(timeout) seconds, or the run is interrupted, the job's
    processes on the host are ended and its job file removed; the task then fails saying so.
  - Used by the C(fleetcast.imaging.multicast_image) role around C(multicast_send), whose progress
    file lists every receiver, so that a transfer shows per-host progress as it happens.
author: fleetcast.imaging developers (@fleetcast)
options:
  module:
    description: Fully qualified name of the module to run.
    type: str
    required: true
  module_args:
    description: The module's arguments.
    type: dict
    default: {}
  timeout:
    description: Seconds the module may run before it is cancelled.
    type: int
    default: 3600
  poll_interval:
    description: Seconds between two polls (and two progress lines).
    type: float
    default: 2
  progress_option:
    description:
      - Name of the module's option that takes a file path to which the module writes its
        progress (a JSON object, replaced as it changes). The plugin chooses the path in the job's
        temporary directory and reads it on every poll.
      - Recognised keys are C(bytes_done), C(bytes_total), C(message), and C(receivers), a mapping
        of host to an object with C(bytes_done) and C(state). Others are ignored.
      - When not set, only the elapsed time is shown.
    type: str
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: In check mode the module runs in the foreground, in check mode, and reports its plan.
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
"""

EXAMPLES = r"""
- name: Send the image while every receiver shows its progress
  fleetcast.imaging.progress:
    module: fleetcast.imaging.multicast_send
    module_args:
      image: /srv/images/lab-master.fcimg
      interface: eth0
    progress_option: progress_file
    timeout: 1800
  delegate_to: server
  run_once: true
"""

RETURN = r"""
progress_elapsed:
  description: Seconds from the start of the job to its end.
  returned: always
  type: float
  sample: 42.7
progress_last:
  description: The last progress object the module wrote, if any.
  returned: when progress_option is set and the module wrote progress
  type: dict
"""
