# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image <-> transport bridge. Private to the collection: not a public API.

``_transport`` moves opaque objects and knows nothing of images; ``_image`` knows chunks, files
and disks and nothing of the network. This package is the one place that joins them: sources (an
image file, a live master captured and spooled), sinks (a RestoreSession onto disks, an
ImageWriter into a file), resume from what an interrupted receive already verified, the library
check, cancellation, and the one-sentence failures. ``multicast_send`` and ``multicast_receive``
are a spec and one call into ``session``.
"""
