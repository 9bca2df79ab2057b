# AES-256-GCM of objects: both implementations (libcrypto through ctypes, the cryptography package)
# give the same bytes as AES-GCM itself, on every kind of buffer the sender and the receiver hand
# them; a changed byte, nonce, key or associated data is refused.
import os

import numpy as np
import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import gcm, wire

cryptography = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead")

SIZES = [0, 1, 1448, 4 * 1024 * 1024 + 8]


def _buffers(data):
    """The object as bytes, bytearray, a writable numpy view and a read-only view."""
    return (data, bytearray(data), memoryview(np.frombuffer(data, dtype=np.uint8).copy()), memoryview(data))


def test_libcrypto_is_found_on_this_machine():
    # the fast path must be the one in use here, not silently the copying fallback
    assert gcm.ObjectMac(bytes(32)).implementation == "libcrypto"
    assert gcm.ObjectCipher(bytes(32)).implementation == "libcrypto"


@pytest.mark.parametrize("size", SIZES)
def test_tag_is_aes_gcm_over_the_object_as_associated_data(size):
    key, nonce = os.urandom(32), wire.object_nonce(size)
    data = os.urandom(size)
    expected = cryptography.AESGCM(key).encrypt(nonce, b"", data)
    fast, copying = gcm.ObjectMac(key), gcm.ObjectMac(key, prefer_libcrypto=False)
    assert copying.implementation == "cryptography"
    for buffer in _buffers(data):
        assert fast.tag(nonce, buffer) == expected
        assert copying.tag(nonce, buffer) == expected


def test_a_changed_byte_nonce_or_key_changes_the_tag():
    key = os.urandom(32)
    data = bytearray(os.urandom(10000))
    mac = gcm.ObjectMac(key)
    tag = mac.tag(wire.object_nonce(3), data)
    assert mac.tag(wire.object_nonce(4), data) != tag
    assert gcm.ObjectMac(os.urandom(32)).tag(wire.object_nonce(3), data) != tag
    data[9999] ^= 1
    assert mac.tag(wire.object_nonce(3), data) != tag


@pytest.mark.parametrize("size", SIZES)
def test_sealing_is_aes_gcm_and_opens_in_place(size):
    key, nonce, aad = os.urandom(32), wire.object_nonce(7), b"session!"
    data = os.urandom(size)
    expected = cryptography.AESGCM(key).encrypt(nonce, data, aad)
    fast, copying = gcm.ObjectCipher(key), gcm.ObjectCipher(key, prefer_libcrypto=False)
    for buffer in _buffers(data):
        assert bytes(fast.seal(nonce, buffer, aad)) == expected
        assert bytes(copying.seal(nonce, buffer, aad)) == expected
    for cipher in (fast, copying):
        rows = np.frombuffer(expected, dtype=np.uint8).copy()
        plain = cipher.open(nonce, memoryview(rows), aad)
        assert bytes(plain) == data
        assert bytes(cipher.open(nonce, expected, aad)) == data
    # in place: the plaintext is a view of the reassembly buffer itself
    rows = np.frombuffer(expected, dtype=np.uint8).copy()
    fast.open(nonce, memoryview(rows), aad)
    assert rows[:size].tobytes() == data


def test_opening_refuses_any_change():
    key, nonce, aad = os.urandom(32), wire.object_nonce(1), b"aad"
    sealed = bytes(gcm.ObjectCipher(key).seal(nonce, os.urandom(5000), aad))
    for cipher in (gcm.ObjectCipher(key), gcm.ObjectCipher(key, prefer_libcrypto=False)):
        for position in (0, 2500, len(sealed) - 1):          # ciphertext and tag
            damaged = bytearray(sealed)
            damaged[position] ^= 0x40
            assert cipher.open(nonce, damaged, aad) is None
        assert cipher.open(wire.object_nonce(2), bytearray(sealed), aad) is None
        assert cipher.open(nonce, bytearray(sealed), b"other") is None
        assert cipher.open(nonce, b"short", aad) is None
    assert gcm.ObjectCipher(os.urandom(32)).open(nonce, bytearray(sealed), aad) is None


def test_session_keys_give_objects_their_own_key():
    keys = wire.SessionKeys.derive(b"k", 1)
    assert len({keys.mac, keys.enc, keys.auth}) == 3 and len(keys.auth) == 32
