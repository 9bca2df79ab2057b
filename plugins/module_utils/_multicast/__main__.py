# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``python3 -m ...module_utils._multicast send|receive``: the bridge without Ansible (benchmarks,
rescue shells). Options are the modules' (dashes for underscores); the session key comes from
E(FLEETCAST_SESSION_KEY). Prints the module's result as one JSON line. Private to the collection."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .._errors import FleetcastError
from . import session


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetcast-multicast")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("send", "receive"):
        command = sub.add_parser(name)
        command.add_argument("--interface", default="eth0")
        command.add_argument("--group", default="239.255.42.1")
        command.add_argument("--port", type=int, default=9000)
        command.add_argument("--no-offload", dest="offload", action="store_false")
    send = sub.choices["send"]
    send.add_argument("--image")
    send.add_argument("--source-devices", nargs="+")
    send.add_argument("--expected", default="")
    send.add_argument("--min-receivers", type=int, default=1)
    send.add_argument("--max-wait", type=int, default=60)
    send.add_argument("--rate-mbit", type=int, default=0)
    send.add_argument("--receiver-timeout", type=int, default=8)
    send.add_argument("--encrypt", action="store_true")
    receive = sub.choices["receive"]
    receive.add_argument("--dest")
    receive.add_argument("--devices", nargs="+")
    receive.add_argument("--name")
    receive.add_argument("--timeout", type=int, default=30)
    receive.add_argument("--window-mib", type=int, default=40)
    receive.add_argument("--no-resume", dest="resume", action="store_false")
    options = vars(parser.parse_args(argv))
    options["session_key"] = os.environ.get("FLEETCAST_SESSION_KEY", "")
    try:
        if not options["session_key"]:
            raise FleetcastError("Set FLEETCAST_SESSION_KEY to the session key.")
        missing = session.missing_library(disks=bool(options.get("devices")))
        if missing:
            raise FleetcastError(f"The library {missing[0]} is missing.")
        if options.pop("command") == "send":
            options["expected"] = [name for name in options["expected"].split(",") if name]
            result = session.serve(session.SendSpec.from_options(options))
        else:
            result = session.receive(session.ReceiveSpec.from_options(options))
    except session.SessionFailed as err:
        sys.stdout.write(json.dumps(dict(err.report, failed=True, msg=str(err))) + "\n")
        return 1
    except FleetcastError as err:
        sys.stdout.write(json.dumps({"failed": True, "msg": str(err)}) + "\n")
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
