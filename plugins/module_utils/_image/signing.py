# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Detached Ed25519 signatures over an image's id and capture record. Private to the collection.

The image id is a SHA-256 over the layout and every chunk's place and digest, and every chunk is
checked against its digest before it is written; so a signature over the id vouches for every byte
a restore writes, and the controller can sign an image it never holds: it needs only the id and the
capture record (both from image_info) and its private key, which never leaves it.

The image id leaves out the layout's `origin` (capture time, host, source disks, description), so
that it names the content alone; the signature covers `origin` too, through its SHA-256. The
signature file (`<image>.sig`, JSON) names the image id, the origin digest, the algorithm and the
key's fingerprint; the signed message is ``b"fleetcast-image-signature-v1\\0"`` + the 32 bytes of the
image id + the 32 bytes of SHA-256(canonical JSON of `origin`, ``null`` when absent). Keys are
Ed25519, as PEM (PKCS#8 / SubjectPublicKeyInfo) or OpenSSH files (``ssh-keygen -t ed25519``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import traceback
from typing import Any, Dict, Optional

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
except ImportError:
    serialization = None
    CRYPTOGRAPHY_IMPORT_ERROR: Optional[str] = traceback.format_exc()
else:
    CRYPTOGRAPHY_IMPORT_ERROR = None

from .._errors import ValidationError

SIGNATURE_FORMAT = "fleetcast-image-signature"
SIGNATURE_VERSION = 1
CONTEXT = b"fleetcast-image-signature-v1\0"
SUFFIX = ".sig"


def _text(key: str, what: str) -> bytes:
    """A key given inline (PEM or an OpenSSH line) or as a path to a file holding it."""
    stripped = key.strip()
    if stripped.startswith(("-----BEGIN", "ssh-ed25519 ")):
        return stripped.encode("ascii") + b"\n"
    try:
        with open(os.path.expanduser(stripped), "rb") as handle:
            return handle.read()
    except OSError as err:
        raise ValidationError(f"The {what} {stripped} cannot be read: {err.strerror}.") from err


def _need_cryptography() -> None:
    if serialization is None:
        raise ValidationError("Image signatures need the Python cryptography library (apt: python3-cryptography).")


def load_private_key(key: str, password: Optional[str] = None) -> "Ed25519PrivateKey":
    _need_cryptography()
    data = _text(key, "private key")
    secret = password.encode("utf-8") if password else None
    try:
        if data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY"):
            loaded = serialization.load_ssh_private_key(data, secret)
        else:
            loaded = serialization.load_pem_private_key(data, secret)
    except (ValueError, TypeError) as err:
        raise ValidationError(f"The private key cannot be loaded ({err}); give an Ed25519 key in PEM or "
                              f"OpenSSH format, with its password if it has one.") from err
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValidationError("The private key is not an Ed25519 key; image signatures use Ed25519.")
    return loaded


def load_public_key(key: str) -> "Ed25519PublicKey":
    _need_cryptography()
    data = _text(key, "public key")
    try:
        if data.startswith(b"ssh-ed25519 "):
            loaded = serialization.load_ssh_public_key(data)
        else:
            loaded = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise ValidationError(f"The public key cannot be loaded ({err}); give an Ed25519 public key in PEM or "
                              f"OpenSSH format.") from err
    if not isinstance(loaded, Ed25519PublicKey):
        raise ValidationError("The public key is not an Ed25519 key; image signatures use Ed25519.")
    return loaded


def fingerprint(public_key: "Ed25519PublicKey") -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")


def origin_digest(origin: Optional[Dict[str, Any]]) -> str:
    """SHA-256 (hex) of the canonical JSON of an image's `origin` (None when it has none)."""
    from .format import canonical_json

    return hashlib.sha256(canonical_json(origin)).hexdigest()


def _message(image_id: str, origin_sha256: str) -> bytes:
    try:
        raw, extra = bytes.fromhex(image_id), bytes.fromhex(origin_sha256)
    except ValueError:
        raw, extra = b"", b""
    if len(raw) != 32 or len(extra) != 32:
        raise ValidationError(f"{image_id!r} is not an image id (64 hexadecimal digits).")
    return CONTEXT + raw + extra


def sign(image_id: str, origin: Optional[Dict[str, Any]], private_key: "Ed25519PrivateKey") -> Dict[str, Any]:
    """The signature document for an image id and its origin."""
    covered = origin_digest(origin)
    signature = private_key.sign(_message(image_id, covered))
    return {"format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": "ed25519",
            "image_id": image_id, "origin_sha256": covered, "key": fingerprint(private_key.public_key()),
            "signature": base64.b64encode(signature).decode("ascii")}


def write(document: Dict[str, Any], dest: str) -> None:
    partial = dest + ".partial"
    with open(partial, "w", encoding="ascii") as handle:
        json.dump(document, handle, sort_keys=True, indent=1)
        handle.write("\n")
    os.replace(partial, dest)


def verify(image: str, image_id: str, origin: Optional[Dict[str, Any]], public_key: str,
           signature_path: Optional[str] = None) -> Dict[str, Any]:
    """Raise ValidationError, in one sentence naming the image, unless `signature_path` (default
    `<image>.sig`) holds a valid signature of `image_id` and `origin` by `public_key`; return the
    document."""
    key = load_public_key(public_key)
    path = signature_path or image + SUFFIX
    try:
        with open(path, encoding="ascii") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        raise ValidationError(f"Image {image} is not signed (no {path}) and a public key was given, so it is "
                              f"refused; sign it on the controller with fleetcast.imaging.image_sign.") from None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ValidationError(f"Image {image} is refused: its signature file {path} cannot be read ({err}).") from None
    try:
        if document.get("format") != SIGNATURE_FORMAT or document.get("algorithm") != "ed25519":
            raise ValueError("not a fleetcast Ed25519 signature")
        signature = base64.b64decode(document["signature"], validate=True)
        signed_id, signed_origin = document["image_id"], document["origin_sha256"]
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValidationError(f"Image {image} is refused: {path} is not a fleetcast image signature ({err}).") from None
    if signed_id != image_id:
        raise ValidationError(f"Image {image} is refused: its signature {path} is for image {signed_id}, not for "
                              f"this image's id {image_id}.")
    if signed_origin != origin_digest(origin):
        raise ValidationError(f"Image {image} is refused: its signature {path} covers another capture record "
                              f"(time, host, source disks or description) than the one in the image.")
    try:
        key.verify(signature, _message(image_id, signed_origin))
    except InvalidSignature:
        raise ValidationError(f"Image {image} is refused: its signature {path} was not made with the given public "
                              f"key ({fingerprint(key)}) or was altered.") from None
    return document


def _valid(dest: str, wanted: Dict[str, Any], public_key: "Ed25519PublicKey") -> bool:
    """Whether `dest` already holds a valid signature of the same image id and origin by this key."""
    try:
        with open(dest, encoding="ascii") as handle:
            document = json.load(handle)
        if (document.get("image_id"), document.get("origin_sha256")) != (wanted["image_id"],
                                                                         wanted["origin_sha256"]):
            return False
        public_key.verify(base64.b64decode(document["signature"], validate=True),
                          _message(wanted["image_id"], wanted["origin_sha256"]))
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InvalidSignature):
        return False


def sign_image(image: Optional[str], image_id: Optional[str], private_key: str, passphrase: Optional[str] = None,
               dest: Optional[str] = None, check_mode: bool = False,
               origin: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What image_sign does: sign an image file's id and origin (or a given id and origin, as
    image_info reports them), write `dest` (default `<image>.sig`) unless it already holds a valid
    signature of them by this key; report the document."""
    key = load_private_key(private_key, passphrase)
    if image:
        from .format import ImageReader

        with ImageReader(image) as reader:
            image_id, origin = reader.manifest.image_id, reader.manifest.layout.get("origin")
        dest = dest or image + SUFFIX
    document = sign(str(image_id), origin, key)
    changed = bool(dest) and not _valid(dest, document, key.public_key())
    if changed and not check_mode:
        try:
            write(document, dest)
        except OSError as err:
            raise ValidationError(f"The signature of image {image or image_id} cannot be written to {dest}: "
                                  f"{err.strerror}.") from err
    return {"changed": changed, "image_id": document["image_id"], "dest": dest, "signature": document}
