# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The built-in lab: loop-device disks and network namespaces. Private to the collection.

Used by the tests, the benchmarks and the ``imaging_lab`` role. Everything here only ever creates,
touches and removes objects it made itself (its own backing files, loop devices attached to them,
namespaces carrying its own prefix).
"""
