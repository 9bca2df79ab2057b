# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File access below a root directory (``/`` or a mounted offline partition). Private to the collection.

Paths are absolute as seen from inside the root (``/etc/hostname``). Symbolic links inside an
offline root are resolved against that root, never against the machine running the engine.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from .._errors import IdentityError


def atomic_write(path: str, data: bytes, mode: int, uid: Optional[int] = None, gid: Optional[int] = None,
                 dir_mode: int = 0o755) -> None:
    """Write a file beside its final name, set mode and owner, then rename it into place."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fleetcast-")
    try:
        # mode first, so that a secret is never readable by others, not even for a moment
        os.fchmod(fd, mode & 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if uid is not None and gid is not None:
            os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class FileState:
    data: bytes
    mode: int
    uid: int
    gid: int
    symlink: Optional[str] = None


class Root:
    """A directory tree seen as a system root."""

    def __init__(self, path: str):
        if not os.path.isdir(path):
            raise IdentityError(f"The root {path} is not a directory.")
        self.path = os.path.abspath(path)

    def real(self, inner: str, follow: bool = True, depth: int = 0) -> str:
        """The host path for an inner path, resolving symlinks inside the root."""
        if depth > 16:
            raise IdentityError(f"Too many symbolic links below {self.path} resolving {inner}.")
        parts = [p for p in inner.split("/") if p and p != "."]
        current = ""
        for index, part in enumerate(parts):
            if part == "..":
                current = os.path.dirname(current)
                continue
            candidate = current + "/" + part
            host = self.path + candidate
            last = index == len(parts) - 1
            if os.path.islink(host) and (follow or not last):
                target = os.readlink(host)
                base = target if target.startswith("/") else os.path.dirname(candidate) + "/" + target
                candidate = self.inner(self.real(base, True, depth + 1))
            current = candidate
        return self.path + (current or "/") if self.path != "/" else (current or "/")

    def inner(self, host: str) -> str:
        if self.path == "/":
            return host
        return host[len(self.path):] or "/"

    def read(self, inner: str) -> Optional[FileState]:
        """A file's bytes, mode and owner; None when it does not exist."""
        link = self.real(inner, follow=False)
        try:
            info = os.lstat(link)
            symlink = os.readlink(link) if stat.S_ISLNK(info.st_mode) else None
            host = self.real(inner)
            info = os.stat(host)
            if not stat.S_ISREG(info.st_mode):
                return None
            with open(host, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise IdentityError(f"Cannot read {inner} below {self.path}: {err.strerror}.") from None
        return FileState(data, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, symlink)

    def glob(self, directory: str, suffix: Union[str, Tuple[str, ...]] = "", prefix: str = "") -> List[str]:
        """Regular files in an inner directory whose names match, sorted."""
        host = self.real(directory)
        try:
            names = sorted(os.listdir(host))
        except OSError:
            return []
        return [directory.rstrip("/") + "/" + name for name in names
                if name.endswith(suffix) and name.startswith(prefix)
                and os.path.isfile(os.path.join(host, name))]

    def write(self, inner: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        """Replace a file atomically with the given mode and owner (parents made 0755)."""
        try:
            atomic_write(self.real(inner), data, mode, uid, gid)
        except OSError as err:
            raise IdentityError(f"Cannot write {inner} below {self.path}: {err.strerror}.") from None

    def remove(self, inner: str) -> None:
        try:
            os.unlink(self.real(inner, follow=False))
        except FileNotFoundError:
            pass
        except OSError as err:
            raise IdentityError(f"Cannot remove {inner} below {self.path}: {err.strerror}.") from None

    def symlink(self, inner: str, target: str) -> None:
        host = self.real(inner, follow=False)
        try:
            if os.path.lexists(host):
                os.unlink(host)
            os.makedirs(os.path.dirname(host), mode=0o755, exist_ok=True)
            os.symlink(target, host)
        except OSError as err:
            raise IdentityError(f"Cannot link {inner} below {self.path}: {err.strerror}.") from None
