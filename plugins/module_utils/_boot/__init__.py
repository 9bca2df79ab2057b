# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot path: the imaging environment, serving it (dnsmasq, iPXE, HTTP), the UEFI boot entry a
clone needs, and the verification of a running clone. Private to the collection: not a public API."""
