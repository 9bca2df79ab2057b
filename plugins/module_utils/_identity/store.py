# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record files: the controller's store (the source of truth) and the image-safe public copy.

Private to the collection. Store files are written atomically with mode 0600. With a vault
password, every secret value is encrypted with ansible-vault (ansible's VaultLib, present on the
controller; imported only when encryption is asked for), so the file may sit in a repository.
The public copy holds no secret at all and may live anywhere, for example on a small partition
that wipe and restore leave alone.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from .._errors import IdentityError
from .record import IdentityRecord
from .rootfs import atomic_write

VAULT_MARK = "$ANSIBLE_VAULT;"


class VaultCodec:
    """Encrypts and decrypts single values with ansible-vault."""

    def __init__(self, password: str):
        try:
            from ansible.constants import DEFAULT_VAULT_ID_MATCH
            from ansible.parsing.vault import VaultLib, VaultSecret
        except ImportError:
            raise IdentityError("Encrypting identity secrets needs ansible-core (ansible-vault) on the "
                                "controller.") from None
        self._vault = VaultLib([(DEFAULT_VAULT_ID_MATCH, VaultSecret(password.encode("utf-8")))])

    def encrypt(self, text: str) -> str:
        return self._vault.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, text: str, where: str) -> str:
        try:
            return self._vault.decrypt(text.encode("ascii")).decode("utf-8")
        except Exception as err:  # VaultLib raises AnsibleError subclasses
            raise IdentityError(f"Cannot decrypt {where}: {str(err).splitlines()[0]}") from None


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
    record = IdentityRecord.from_dict(data, source=path)
    encrypted = {key: value for key, value in record.secrets.items() if value.startswith(VAULT_MARK)}
    if encrypted and not vault_password:
        raise IdentityError(f"The identity record {path} has vault-encrypted secrets; give the vault password.")
    if encrypted:
        codec = VaultCodec(vault_password)
        for key, value in encrypted.items():
            record.secrets[key] = codec.decrypt(value, f"secret {key} of {path}")
    return record


def save_public_copy(path: str, record: IdentityRecord) -> None:
    """Write the record without secrets (mode 0644), e.g. to an image-safe partition."""
    _write(path, json.dumps(record.public_dict(), indent=2, sort_keys=True) + "\n", 0o644)
