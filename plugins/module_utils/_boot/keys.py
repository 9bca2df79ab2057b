# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SSH keys of the boot path: the environment's host keys, made on the controller so that their
fingerprints are known before first contact, and the known_hosts files the controller uses.

Private to the collection. No trust on first use: the controller connects with
``StrictHostKeyChecking=yes`` and a known_hosts file written from keys it already holds.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
from typing import Dict, Iterable, List, Tuple

from .._errors import ValidationError

HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")
PUBLIC_KEY_RE = re.compile(r"^(?:(?P<opts>\S+)\s+)?(?P<type>ssh-[a-z0-9-]+|ecdsa-sha2-nistp\d+|sk-\S+)\s+"
                           r"(?P<blob>[A-Za-z0-9+/=]+)(?:\s+(?P<comment>.*))?$")
PRIVATE_MARKER = re.compile(rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----")
# A whole key block (marker, base64 body, end marker): ssh-keygen and friends hold the marker
# alone as a string constant, which is not a key.
PRIVATE_BLOCK = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n(?:[A-Za-z0-9+/=:, -]*\r?\n){1,400}"
                           rb"-----END [A-Z0-9 ]*PRIVATE KEY-----")


def fingerprint(public_line: str) -> str:
    """The SHA256 fingerprint of an OpenSSH public key line, as ``ssh-keygen -l`` prints it."""
    match = PUBLIC_KEY_RE.match(public_line.strip())
    if not match:
        raise ValidationError(f"{public_line[:40]!r} is not an OpenSSH public key line.")
    try:
        blob = base64.b64decode(match.group("blob"), validate=True)
    except ValueError:
        raise ValidationError(f"{public_line[:40]!r} is not an OpenSSH public key line.") from None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def check_authorized_keys(text: str, source: str = "authorized_keys") -> List[str]:
    """The public key lines of ``text``; refuses anything that is or holds a private key."""
    if PRIVATE_MARKER.search(text.encode("utf-8", "replace")):
        raise ValidationError(f"{source} holds a PRIVATE key; give the controller's public key "
                              "(the .pub file) instead.")
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fingerprint(line)           # raises on anything that is not a public key
        lines.append(line)
    if not lines:
        raise ValidationError(f"{source} holds no public key, so the controller could not log in.")
    return lines


def ensure_host_keys(directory: str, types: Iterable[str] = ("ed25519",)) -> Tuple[Dict[str, str], bool]:
    """Make the environment's SSH host keys under ``directory`` unless they exist (idempotent).

    Returns ({type: public key line}, changed).
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    changed = False
    public = {}
    for key_type in types:
        if key_type not in HOST_KEY_TYPES:
            raise ValidationError(f"SSH host key type {key_type!r} is not one of {', '.join(HOST_KEY_TYPES)}.")
        path = os.path.join(directory, f"ssh_host_{key_type}_key")
        if not os.path.exists(path):
            subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "fleetcast-imaging-environment",
                            "-f", path], check=True, capture_output=True)
            changed = True
        with open(path + ".pub", encoding="ascii") as handle:
            public[key_type] = handle.read().strip()
    return public, changed


def known_hosts(entries: Dict[str, List[str]]) -> str:
    """known_hosts text: ``{host pattern (name or address): [public key lines]}``, sorted."""
    lines = []
    for pattern in sorted(entries):
        for key in sorted(entries[pattern]):
            match = PUBLIC_KEY_RE.match(key.strip())
            if not match:
                raise ValidationError(f"{pattern}: {key[:40]!r} is not an OpenSSH public key line.")
            lines.append(f"{pattern} {match.group('type')} {match.group('blob')}")
    return "\n".join(lines) + ("\n" if lines else "")


def private_keys_in_tree(root: str) -> List[str]:
    """Every file below ``root`` that holds a PEM/OpenSSH private key block (relative paths)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if not os.path.islink(os.path.join(dirpath, name))]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > 1 << 20:
                continue
            try:
                with open(path, "rb") as handle:
                    if PRIVATE_BLOCK.search(handle.read()):
                        found.append(os.path.relpath(path, root))
            except OSError:
                continue
    return sorted(found)
