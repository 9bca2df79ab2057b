# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Multicast sessions moving opaque objects (wire format, sender, receiver, loss repair, rate).

Private to the collection: not a public API. Knows nothing of disks: object 0 is the layout, the
others chunk records, and the sink decides what they mean.
"""
