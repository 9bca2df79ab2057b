# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    """Options of a multicast session that the sender and every receiver share; use as
    ``fleetcast.imaging.multicast_session`` in ``extends_documentation_fragment``."""

    DOCUMENTATION = r"""
options:
  session_key:
    description:
      - The session's secret key, the same on the sender and on every receiver. Use a fresh random
        one per session (the C(fleetcast.imaging.multicast_image) role makes one per run).
      - Control messages are authenticated, and chunks tagged (or encrypted), with keys derived
        from it for this session only; a host without it can neither join nor change a byte.
    type: str
    required: true
  interface:
    description:
      - Network interface on the imaging LAN; its IPv4 address is used.
      - If it has no IPv4 address, or vanishes while the session runs, the module fails with one
        sentence naming the host and the interface.
    type: str
    default: eth0
  group:
    description: IPv4 multicast group of the session.
    type: str
    default: 239.255.42.1
  port:
    description: UDP port of the session (the sender receives the receivers' reports on it, and on O(port) + 1 of the group too; open both in firewalls).
    type: int
    default: 9000
  offload:
    description:
      - Use UDP segmentation and receive offload (GSO on the sender, GRO on the receivers) where the
        kernel offers it. V(false) handles each datagram on its own (still many per C(sendmmsg) or
        C(recvmmsg) call); the environment variable E(FLEETCAST_NO_OFFLOAD=1) does the same.
    type: bool
    default: true
  dscp:
    description:
      - DSCP class (RFC 2474) marked on every datagram of the session that this end sends (the
        sender's data and control, each receiver's reports), so that the network's QoS policy can
        tell imaging traffic apart; for example V(8) (CS1, lower effort) keeps a session from
        crowding other traffic where the switches honour it. V(0) leaves the datagrams unmarked.
      - Give the same value to the sender and the receivers.
    type: int
    default: 0
notes:
  - While the session runs, SIGTERM (for example M(fleetcast.imaging.progress) cancelling, or the
    job being stopped) ends it at once; a sender that stops tells every receiver, which fail within
    a second saying the sender aborted, instead of waiting for O(fleetcast.imaging.multicast_receive#module:timeout).
requirements:
  - python3-numpy, python3-zstandard and OpenSSL's libcrypto (or python3-cryptography) on the host;
    python3-parted to receive onto disks (Debian packages).
"""
