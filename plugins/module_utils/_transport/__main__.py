# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``python3 -m ...module_utils._transport``: the engine's command line. Private to the collection."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
