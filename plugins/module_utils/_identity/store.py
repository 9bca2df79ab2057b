# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record files: the controller's store (the source of truth) and the image-safe public copy.

Private to the collection. One store format, written by the roles and read here alike:
``<store>/<inventory name>.json`` (mode 0600, directory 0700) holds the JSON object
``{"record": <the record without secrets>, "secrets": {path: base64}}``. With a vault password
the *whole file* is an ansible-vault file of that JSON (``ansible-vault view`` shows it), made
by ansible-core's own vault library: the roles' ``ansible.builtin.vault`` filter, or
``ansible.parsing.vault.VaultLib`` here. Nothing of a record, not even the host name, is then
readable without the password.

Older stores are still read: a flat record whose secret values were vault-encrypted one by one
(the engine's earlier format) is decrypted value by value with the same library.

ansible-core is needed only to encrypt or decrypt; it is there on the controller (and in an AWX
execution environment), not on the targets, so a vault store is handled on the controller.
The public copy holds no secret at all and may live anywhere, for example on a small partition
that wipe and restore leave alone.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Optional, Tuple

from .._errors import IdentityError
from .record import IdentityRecord
from .rootfs import atomic_write

VAULT_MARK = "$ANSIBLE_VAULT;"


def _vault_library(what: str):
    """(VaultLib, VaultSecret, AnsibleError) of ansible-core, loaded when first needed.

    Loaded at use rather than imported at the top: module_utils travel to targets, where only
    ansible.module_utils exists; the vault library is there on the controller (and in an AWX
    execution environment), which is where the store is encrypted and decrypted.
    """
    try:
        vault = importlib.import_module("ansible.parsing.vault")
        errors = importlib.import_module("ansible.errors")
    except ImportError:
        raise IdentityError(f"Decrypting or encrypting {what} needs ansible-core's vault library, which this "
                            "host lacks; handle the vault-encrypted store on the controller.") from None
    return vault.VaultLib, vault.VaultSecret, errors.AnsibleError


def _vault(password: str, what: str):
    vault_lib, vault_secret, dummy_error = _vault_library(what)
    return vault_lib([("default", vault_secret(password.encode("utf-8")))])


def _decrypt(text: str, password: Optional[str], what: str) -> str:
    if not password:
        raise IdentityError(f"{what[:1].upper() + what[1:]} is vault-encrypted; give the vault password.")
    vault_lib, vault_secret, ansible_error = _vault_library(what)
    try:
        return vault_lib([("default", vault_secret(password.encode("utf-8")))]).decrypt(
            text.encode("utf-8")).decode("utf-8")
    except ansible_error:
        raise IdentityError(f"Cannot decrypt {what}: wrong vault password or a damaged vault file.") from None


def dumps(record: IdentityRecord, vault_password: Optional[str] = None) -> str:
    """The store file's text for ``record``: its JSON, as one ansible-vault file when a password is given."""
    text = json.dumps({"record": record.public_dict(), "secrets": record.secrets}, indent=2, sort_keys=True) + "\n"
    if vault_password:
        text = _vault(vault_password, f"the identity record of {record.inventory_name}").encrypt(
            text.encode("utf-8")).decode("ascii")
    return text


def loads(text: str, vault_password: Optional[str], source: str) -> IdentityRecord:
    """A record from a store file's text (either layout, clear or vault-encrypted)."""
    if text.lstrip().startswith(VAULT_MARK):
        text = _decrypt(text.strip(), vault_password, f"the identity record {source}")
    try:
        data: Any = json.loads(text)
    except ValueError:
        raise IdentityError(f"The identity record {source} is not valid JSON.") from None
    if isinstance(data, dict) and "format" not in data and isinstance(data.get("record"), dict):
        data = dict(data["record"], secrets=dict(data["record"].get("secrets") or {}, **(data.get("secrets") or {})))
    record = IdentityRecord.from_dict(data, source=source)
    decrypt_secrets(record, vault_password, source)
    return record


def save_record(path: str, record: IdentityRecord, vault_password: Optional[str] = None) -> None:
    """Write the record with its secrets (the whole file vault-encrypted when a password is given), 0600."""
    text = dumps(record, vault_password)
    try:
        atomic_write(path, text.encode("utf-8"), 0o600, dir_mode=0o700)
    except OSError as err:
        raise IdentityError(f"Cannot write the identity record {path}: {err.strerror}.") from None


def load_record(path: str, vault_password: Optional[str] = None) -> IdentityRecord:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise IdentityError(f"Cannot read the identity record {path}: {err.strerror}.") from None
    return loads(text, vault_password, path)


def decrypt_secrets(record: IdentityRecord, vault_password: Optional[str], source: str) -> None:
    """Replace secret values encrypted one by one (the older store format) by their clear text, in place."""
    for key, value in list(record.secrets.items()):
        if value.startswith(VAULT_MARK):
            record.secrets[key] = _decrypt(value, vault_password, f"secret {key} of {source}")


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
        try:
            atomic_write(path, text.encode("utf-8"), 0o644, dir_mode=0o700)
        except OSError as err:
            raise IdentityError(f"Cannot write the identity record {path}: {err.strerror}.") from None
    return True, before, text
