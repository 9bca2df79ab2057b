# The per-object GMAC: both implementations agree with each other and with AES-GCM itself, on every
# kind of buffer the sender and the receiver hand it, and a changed byte changes the tag.
import os

import numpy as np
import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import objectmac, wire

cryptography = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead")


def test_libcrypto_is_found_on_this_machine():
    # the fast path must be the one in use here, not silently the copying fallback
    assert objectmac.ObjectMac(bytes(32)).implementation == "libcrypto"


@pytest.mark.parametrize("size", [0, 1, 1448, 4 * 1024 * 1024 + 8])
def test_tag_is_aes_gcm_over_the_object_as_associated_data(size):
    key, nonce = os.urandom(32), wire.object_nonce(size)
    data = os.urandom(size)
    expected = cryptography.AESGCM(key).encrypt(nonce, b"", data)
    fast, copying = objectmac.ObjectMac(key), objectmac.ObjectMac(key, prefer_libcrypto=False)
    assert copying.implementation == "cryptography"
    rows = np.frombuffer(data, dtype=np.uint8).copy()
    for buffer in (data, bytearray(data), memoryview(rows), memoryview(data)):
        assert fast.tag(nonce, buffer) == expected
        assert copying.tag(nonce, buffer) == expected


def test_a_changed_byte_nonce_or_key_changes_the_tag():
    key = os.urandom(32)
    data = bytearray(os.urandom(10000))
    mac = objectmac.ObjectMac(key)
    tag = mac.tag(wire.object_nonce(3), data)
    assert mac.tag(wire.object_nonce(4), data) != tag
    assert objectmac.ObjectMac(os.urandom(32)).tag(wire.object_nonce(3), data) != tag
    data[9999] ^= 1
    assert mac.tag(wire.object_nonce(3), data) != tag


def test_session_keys_give_objects_their_own_key():
    keys = wire.SessionKeys.derive(b"k", 1)
    assert len({keys.mac, keys.enc, keys.auth}) == 3 and len(keys.auth) == 32
