# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record files: the controller's store (the source of truth) and the image-safe public copy.

Private to the collection. Store files are written atomically with mode 0600. With a vault
password, every secret value is encrypted in ansible-vault's format (readable with
``ansible-vault decrypt``), so the file may sit in a repository.
The public copy holds no secret at all and may live anywhere, for example on a small partition
that wipe and restore leave alone.
"""

from __future__ import annotations

import binascii
import json
import os
import traceback
from typing import Any, Dict, Optional, Tuple

from .._errors import IdentityError
from .record import IdentityRecord
from .rootfs import atomic_write

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, hmac, padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
except ImportError:
    CRYPTOGRAPHY_IMPORT_ERROR: Optional[str] = traceback.format_exc()
else:
    CRYPTOGRAPHY_IMPORT_ERROR = None


VAULT_HEADER = "$ANSIBLE_VAULT;1.1;AES256"
VAULT_MARK = "$ANSIBLE_VAULT;"
_PBKDF2_ROUNDS = 10000


class VaultCodec:
    """Encrypts and decrypts single values in ansible-vault's format 1.1 (AES256).

    Written against the published format with ``cryptography`` rather than importing ansible's
    VaultLib, so it works wherever the engine runs; ``ansible-vault`` reads what it writes and
    the reverse (the tests check both ways).
    """

    def __init__(self, password: str):
        if CRYPTOGRAPHY_IMPORT_ERROR:
            raise IdentityError("Encrypting identity secrets needs the cryptography library "
                                "(python3-cryptography).")
        self._password = password.encode("utf-8")

    def _keys(self, salt: bytes) -> Tuple[bytes, bytes, bytes]:
        derived = PBKDF2HMAC(algorithm=hashes.SHA256(), length=80, salt=salt,
                             iterations=_PBKDF2_ROUNDS).derive(self._password)
        return derived[:32], derived[32:64], derived[64:]

    def encrypt(self, text: str) -> str:
        salt = os.urandom(32)
        key, mac_key, iv = self._keys(salt)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(text.encode("utf-8")) + padder.finalize()
        encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        cipher_text = encryptor.update(padded) + encryptor.finalize()
        signer = hmac.HMAC(mac_key, hashes.SHA256())
        signer.update(cipher_text)
        body = b"\n".join(binascii.hexlify(part) for part in (salt, signer.finalize(), cipher_text))
        hexed = binascii.hexlify(body).decode("ascii")
        return "\n".join([VAULT_HEADER] + [hexed[i:i + 80] for i in range(0, len(hexed), 80)]) + "\n"

    def decrypt(self, text: str, where: str) -> str:
        lines = text.strip().splitlines()
        if not lines or not lines[0].startswith(VAULT_MARK) or lines[0].split(";")[2:3] != ["AES256"]:
            raise IdentityError(f"Cannot decrypt {where}: it is not an ansible-vault AES256 value.")
        try:
            salt, tag, cipher_text = (binascii.unhexlify(part) for part in
                                      binascii.unhexlify("".join(lines[1:])).split(b"\n"))
        except (ValueError, binascii.Error):
            raise IdentityError(f"Cannot decrypt {where}: the vault value is malformed.") from None
        key, mac_key, iv = self._keys(salt)
        verifier = hmac.HMAC(mac_key, hashes.SHA256())
        verifier.update(cipher_text)
        try:
            verifier.verify(tag)
        except InvalidSignature:
            raise IdentityError(f"Cannot decrypt {where}: wrong vault password or a damaged value.") from None
        decryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor()
        padded = decryptor.update(cipher_text) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            return (unpadder.update(padded) + unpadder.finalize()).decode("utf-8")
        except ValueError:
            raise IdentityError(f"Cannot decrypt {where}: the vault value is malformed.") from None


def _write(path: str, text: str, mode: int) -> None:
    try:
        atomic_write(path, text.encode("utf-8"), mode, dir_mode=0o700)
    except OSError as err:
        raise IdentityError(f"Cannot write the identity record {path}: {err.strerror}.") from None


def save_record(path: str, record: IdentityRecord, vault_password: Optional[str] = None) -> None:
    """Write the record with its secrets (vault-encrypted when a password is given), mode 0600."""
    data = record.to_dict()
    if vault_password:
        codec = VaultCodec(vault_password)
        data["secrets"] = {key: codec.encrypt(value) for key, value in data["secrets"].items()}
    _write(path, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)


def load_record(path: str, vault_password: Optional[str] = None) -> IdentityRecord:
    try:
        with open(path, encoding="utf-8") as handle:
            data: Dict[str, Any] = json.load(handle)
    except OSError as err:
        raise IdentityError(f"Cannot read the identity record {path}: {err.strerror}.") from None
    except ValueError:
        raise IdentityError(f"The identity record {path} is not valid JSON.") from None
    if isinstance(data, dict) and "format" not in data and isinstance(data.get("record"), dict):
        # the roles' layout: {"record": <record without secrets>, "secrets": {...}}
        data = dict(data["record"], secrets=dict(data["record"].get("secrets") or {}, **(data.get("secrets") or {})))
    record = IdentityRecord.from_dict(data, source=path)
    decrypt_secrets(record, vault_password, path)
    return record


def decrypt_secrets(record: IdentityRecord, vault_password: Optional[str], source: str) -> None:
    """Replace the record's vault-encrypted secret values by their clear text, in place."""
    encrypted = {key: value for key, value in record.secrets.items() if value.startswith(VAULT_MARK)}
    if encrypted and not vault_password:
        raise IdentityError(f"The identity record {source} has vault-encrypted secrets; give the vault password.")
    if encrypted:
        codec = VaultCodec(vault_password)
        for key, value in encrypted.items():
            record.secrets[key] = codec.decrypt(value, f"secret {key} of {source}")


def save_public_copy(path: str, record: IdentityRecord, check_mode: bool = False) -> Tuple[bool, str, str]:
    """Write the record without secrets (mode 0644), e.g. to an image-safe partition.

    Returns whether the file changed (or would, in check mode), its text before and after.
    """
    text = json.dumps(record.public_dict(), indent=2, sort_keys=True) + "\n"
    before = ""
    try:
        with open(path, encoding="utf-8") as handle:
            before = handle.read()
        if before == text and os.stat(path).st_mode & 0o7777 == 0o644:
            return False, before, text
    except (OSError, ValueError):
        pass
    if not check_mode:
        _write(path, text, 0o644)
    return True, before, text
