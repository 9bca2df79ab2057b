# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""AES-256-GCM for a session's objects (NIST SP 800-38D). Private to the collection: not a public API.

* ``ObjectMac``: every object's authenticator, a GMAC tag (AES-GCM over the object as associated
  data, nothing encrypted). Why not SHA-256: every byte of the image is authenticated on the sender
  and on every receiver, which made the hash the hottest loop of a session. With AES-NI and
  carry-less multiply GMAC runs at about 5 GB/s against about 1.3 GB/s for SHA-256 (SHA-NI) on the
  same core. The tag is keyed per session (HKDF from the session key) and reaches receivers inside
  an HMAC-authenticated META message.
* ``ObjectCipher``: with ``encrypt``, objects are sealed with AES-GCM; its tag is then the
  object's authenticator. Receivers open objects in place, in their reassembly buffer.

OpenSSL's libcrypto is called through ctypes on the objects' own buffers: no copies, and ctypes
lets go of the GIL during the call, so the network thread keeps running. The ``cryptography``
package produces the same bytes (with copies) where libcrypto cannot be loaded that way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Optional

from .._errors import TransportError

TAG_SIZE = 16
_EVP_CTRL_GCM_GET_TAG = 0x10
_EVP_CTRL_GCM_SET_TAG = 0x11
# EVP_*Update take an int length: feed very large buffers in slices
_SLICE = 1 << 30


def _load_libcrypto():
    """libcrypto with the EVP functions typed, or None. Python's own hashlib is linked against it,
    so the library already mapped into this process is preferred."""
    candidates = []
    try:
        import _hashlib  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            candidates += sorted({line.split()[-1] for line in maps if "/libcrypto.so" in line})
    except (ImportError, OSError):
        pass
    found = ctypes.util.find_library("crypto")
    if found:
        candidates.append(found)
    pointer, integer = ctypes.c_void_p, ctypes.c_int
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            lib.EVP_CIPHER_CTX_new.restype = pointer
            lib.EVP_CIPHER_CTX_new.argtypes = []
            lib.EVP_CIPHER_CTX_free.restype = None
            lib.EVP_CIPHER_CTX_free.argtypes = [pointer]
            lib.EVP_aes_256_gcm.restype = pointer
            lib.EVP_aes_256_gcm.argtypes = []
            lib.EVP_CIPHER_CTX_ctrl.argtypes = [pointer, integer, integer, pointer]
            written = ctypes.POINTER(integer)
            for direction in ("Encrypt", "Decrypt"):
                init = [pointer, pointer, pointer, ctypes.c_char_p, ctypes.c_char_p]
                getattr(lib, f"EVP_{direction}Init_ex").argtypes = init
                getattr(lib, f"EVP_{direction}Update").argtypes = [pointer, pointer, written, pointer, integer]
                getattr(lib, f"EVP_{direction}Final_ex").argtypes = [pointer, pointer, written]
            return lib
        except (OSError, AttributeError):
            continue
    return None


_LIBCRYPTO = _load_libcrypto()


def _address(data, writable: bool = False):
    """(address, length, keep-alive) of a bytes-like object's memory, without copying it (read-only
    buffers other than bytes are copied; `writable` refuses them)."""
    if isinstance(data, bytes) and not writable:
        holder = ctypes.c_char_p(data)
        return ctypes.cast(holder, ctypes.c_void_p).value or 0, len(data), holder
    view = memoryview(data).cast("B")
    if view.readonly:
        if writable:
            raise ValueError("a writable buffer is needed")
        copy = bytes(view)
        holder = ctypes.c_char_p(copy)
        return ctypes.cast(holder, ctypes.c_void_p).value or 0, len(copy), (holder, copy)
    if not len(view):
        return 0, 0, view
    array = (ctypes.c_char * len(view)).from_buffer(view)
    return ctypes.addressof(array), len(view), array


def _cryptography_aesgcm(key: bytes):
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise TransportError("AES-GCM needs OpenSSL's libcrypto or the cryptography package "
                             "(apt: python3-cryptography); neither can be loaded here.") from None
    return AESGCM(key)


class _Evp:
    """One AES-256-GCM operation on libcrypto (a context per call: thread-safe, and its cost is
    microseconds against milliseconds of data)."""

    def __init__(self, direction: str, key: bytes, nonce: bytes):
        self.lib = _LIBCRYPTO
        self.direction = direction
        self.ctx = self.lib.EVP_CIPHER_CTX_new()
        if not self.ctx:
            raise TransportError("OpenSSL could not allocate a cipher context (out of memory).")
        self.written = ctypes.c_int()
        self.ok = getattr(self.lib, f"EVP_{direction}Init_ex")(self.ctx, self.lib.EVP_aes_256_gcm(), None,
                                                               key, nonce) == 1

    def update(self, out: int, source: int, length: int) -> None:
        update = getattr(self.lib, f"EVP_{self.direction}Update")
        offset = 0
        while self.ok and offset < length:
            size = min(_SLICE, length - offset)
            target = out + offset if out else None
            self.ok = update(self.ctx, target, ctypes.byref(self.written), source + offset, size) == 1
            offset += size

    def ctrl(self, kind: int, tag) -> None:
        self.ok = self.ok and self.lib.EVP_CIPHER_CTX_ctrl(self.ctx, kind, TAG_SIZE, tag) == 1

    def final(self) -> None:
        final = getattr(self.lib, f"EVP_{self.direction}Final_ex")
        self.ok = self.ok and final(self.ctx, None, ctypes.byref(self.written)) == 1

    def close(self) -> None:
        self.lib.EVP_CIPHER_CTX_free(self.ctx)


class _Aes256Gcm:
    """A 32-byte key, and libcrypto if it loaded (else the cryptography package's AESGCM)."""

    def __init__(self, key: bytes, prefer_libcrypto: bool = True):
        if len(key) != 32:
            raise ValueError("AES-256-GCM key must be 32 bytes")
        self.key = key
        self.fallback = None
        if prefer_libcrypto and _LIBCRYPTO is not None:
            self.implementation = "libcrypto"
        else:
            self.fallback = _cryptography_aesgcm(key)
            self.implementation = "cryptography"


class ObjectMac(_Aes256Gcm):
    """GMAC tags of a session's objects: ``tag(nonce, data)`` -> 16 bytes."""

    def tag(self, nonce: bytes, data) -> bytes:
        if self.fallback is not None:
            return self.fallback.encrypt(nonce, b"", bytes(data))
        address, length, keep = _address(data)
        evp = _Evp("Encrypt", self.key, nonce)
        try:
            tag = ctypes.create_string_buffer(TAG_SIZE)
            evp.update(0, address, length)
            evp.final()
            evp.ctrl(_EVP_CTRL_GCM_GET_TAG, tag)
            if not evp.ok:
                raise TransportError("OpenSSL refused to compute an object's GMAC tag.")
            return tag.raw
        finally:
            evp.close()
            del keep


class ObjectCipher(_Aes256Gcm):
    """AES-256-GCM sealing of objects: ``seal`` -> ciphertext + 16-byte tag; ``open`` -> the
    plaintext (in place where it can) or None when the tag does not verify."""

    def __init__(self, key: bytes, prefer_libcrypto: bool = True):
        super().__init__(key, prefer_libcrypto)
        # the sealing scratch buffer of each thread: a fresh 4 MiB buffer per object would cost a
        # page fault per 4 KiB every time
        self._scratch = threading.local()

    def seal(self, nonce: bytes, data, aad: bytes):
        """Ciphertext and tag of `data`. With libcrypto the result is a view of this thread's
        scratch buffer, valid until the thread's next call."""
        if self.fallback is not None:
            return self.fallback.encrypt(nonce, bytes(data), aad)
        address, length, keep = _address(data)
        scratch = getattr(self._scratch, "buffer", None)
        if scratch is None or len(scratch) < length + TAG_SIZE:
            scratch = self._scratch.buffer = bytearray(length + TAG_SIZE)
        out, _size, out_keep = _address(scratch, writable=True)
        extra, extra_length, extra_keep = _address(aad)
        evp = _Evp("Encrypt", self.key, nonce)
        try:
            evp.update(0, extra, extra_length)
            evp.update(out, address, length)
            evp.final()
            evp.ctrl(_EVP_CTRL_GCM_GET_TAG, out + length)
            if not evp.ok:
                raise TransportError("OpenSSL refused to encrypt an object.")
            return memoryview(scratch)[:length + TAG_SIZE]
        finally:
            evp.close()
            del keep, out_keep, extra_keep

    def open(self, nonce: bytes, sealed, aad: bytes) -> Optional[object]:
        """The plaintext of `sealed` (ciphertext + tag), decrypted in place when `sealed` is a
        writable buffer; None if the tag does not verify (then `sealed` holds garbage)."""
        if self.fallback is not None:
            from cryptography.exceptions import InvalidTag  # pylint: disable=import-outside-toplevel
            try:
                return self.fallback.decrypt(nonce, bytes(sealed), aad)
            except InvalidTag:         # forged or damaged
                return None
        view = memoryview(sealed).cast("B")
        if view.readonly:
            view = memoryview(bytearray(view))
        if len(view) < TAG_SIZE:
            return None
        length = len(view) - TAG_SIZE
        address, _size, keep = _address(view, writable=True)
        extra, extra_length, extra_keep = _address(aad)
        evp = _Evp("Decrypt", self.key, nonce)
        try:
            evp.update(0, extra, extra_length)
            evp.update(address, address, length)
            evp.ctrl(_EVP_CTRL_GCM_SET_TAG, address + length)
            evp.final()
            return view[:length] if evp.ok else None
        finally:
            evp.close()
            del keep, extra_keep
