# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Disks: discovery and selection, write safety, partition tables, wipe, zeroing.

Private to the collection: not a public API. Plain Python with no Ansible imports; see the `_disk`
contract in docs/architecture.md.
"""
