"""Atomic file writes: a temporary name in the same folder, then ``os.replace``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile

from ..errors import D3HFError

CHECKED_MAGIC = b"d3hf-checked-v1\n"
TEMPORARY_PREFIXES = (".tmp-", ".old-")


class CorruptFileError(D3HFError, ValueError):
    """A file failed its checksum or is not in the expected format."""


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _with_user_mode(path: str, directory: bool = False) -> None:
    """``tempfile`` makes private files (0600) and folders (0700); what d3hf leaves behind gets
    the modes any other program would give it under the user's umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path; it replaces ``path`` only if the block finishes."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    _with_user_mode(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str, data) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, allow_nan=False)


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yield a temporary folder that becomes ``path`` (replacing it) when the block finishes."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    _with_user_mode(tmp, directory=True)
    try:
        yield tmp
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.replace(path, os.path.join(old, "x"))
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(directory: str) -> None:
    """Delete the temporary files and folders a killed process left under ``directory``."""
    if not os.path.isdir(directory):
        return
    for root, dirs, files in os.walk(directory):
        for name in [d for d in dirs if d.startswith(TEMPORARY_PREFIXES)]:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            dirs.remove(name)
        for name in files:
            if name.startswith(TEMPORARY_PREFIXES):
                os.remove(os.path.join(root, name))


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checked(path: str, payload: bytes) -> None:
    """Write ``payload`` atomically behind a header carrying its SHA-256."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(CHECKED_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def read_checked(path: str) -> bytes:
    """The payload written by ``write_checked``; ``CorruptFileError`` if it does not match its checksum."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(CHECKED_MAGIC):
        raise CorruptFileError(f"{path} is not a d3hf checked file")
    digest, _, payload = data[len(CHECKED_MAGIC):].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptFileError(f"{path} does not match its checksum (truncated or altered)")
    return payload


def looks_like_local_path(name: str) -> bool:
    """True when ``name`` can only mean a local path, never a Hub id ``NAMESPACE/NAME``:
    it starts with ``.``, ``/`` or ``~``, ends with a separator, has more than one ``/``, or
    its first part is a folder here (``outputs/run``)."""
    name = str(name)
    if name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or name.count("/") > 1:
        return True
    head, sep, _ = name.partition("/")
    return bool(sep) and os.path.isdir(head)
