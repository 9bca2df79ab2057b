# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors the engine raises. Private to the collection: not a public API.

Every message is one sentence a user can act on and names the host, device or chunk concerned.
Modules turn any FleetcastError into ``fail_json(msg=str(err))`` unchanged.
"""

from __future__ import annotations


class FleetcastError(Exception):
    """Base of every error the engine reports to a user."""


class ValidationError(FleetcastError):
    """Input refused before anything was written (bad image, wrong target, unsafe selection)."""


class UnsafeTargetError(ValidationError):
    """A device that must never be written: the boot medium, a mounted or busy disk."""


class ImageError(FleetcastError):
    """An image file or stream is malformed, truncated, of an unknown version, or corrupt."""


class ChunkCorruptError(ImageError):
    """One chunk failed its digest or could not be decompressed."""


class TransportError(FleetcastError):
    """A multicast session failed (timeout, sender gone, authentication)."""


class IdentityError(FleetcastError):
    """An identity record cannot be gathered, stored or applied."""
