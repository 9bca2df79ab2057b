# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running the disk tools (blkid, wipefs, losetup) with a C locale. Private to the collection."""

from __future__ import annotations

import os
import subprocess
from typing import Iterable, Optional

from .._errors import FleetcastError


def run(argv: Iterable[str], device: str, ok_codes: Iterable[int] = (0,),
        stdin: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run one tool about `device`; a failure becomes one sentence naming the device and the tool."""
    argv = [str(arg) for arg in argv]
    env = dict(os.environ, LC_ALL="C", LANG="C")
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, check=False)
    except OSError as err:
        raise FleetcastError(f"Cannot run {argv[0]} for {device}: {err.strerror}.") from err
    if proc.returncode not in tuple(ok_codes):
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = detail[-1].rstrip(".") if detail else f"exit code {proc.returncode}"
        raise FleetcastError(f"{os.path.basename(argv[0])} failed on {device}: {reason}.")
    return proc
