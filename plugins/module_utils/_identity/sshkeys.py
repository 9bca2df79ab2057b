# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SSH host keys of an identity: their fingerprints, and fresh ones for an assigned identity.

Private to the collection. ``fingerprint`` is what a record's summary lists for each public key,
whether the keys were gathered from a root (``linux``) or made for a new computer (``assigned``).
"""

from __future__ import annotations

import base64
import hashlib
from typing import List, Optional, Tuple

from .._errors import IdentityError

try:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
except ImportError:
    serialization = None        # generate() says so in one sentence; fingerprint() needs nothing


def fingerprint(public_key: bytes) -> Optional[str]:
    """OpenSSH's SHA256 fingerprint of a ``.pub`` line."""
    fields = public_key.split()
    if len(fields) < 2:
        return None
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except ValueError:
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def generate(short: str) -> List[Tuple[str, bytes, bytes]]:
    """Fresh host keys as a Debian install makes them: (kind, private OpenSSH, public line)."""
    if serialization is None:
        raise IdentityError("Generating SSH host keys needs the cryptography library (python3-cryptography).")
    keys = []
    for kind, key in (("ed25519", ed25519.Ed25519PrivateKey.generate()),
                      ("ecdsa", ec.generate_private_key(ec.SECP256R1())),
                      ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=3072))):
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        keys.append((kind, private, public + f" root@{short}\n".encode()))
    return keys
