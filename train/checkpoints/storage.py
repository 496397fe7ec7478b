"""The storage under a workdir's checkpoints: free space, sizes, and why a write failed, in words.

Orbax writes through TensorStore, whose errors are ValueErrors carrying the OS error code
as text (`... No space left on device [os_error_code='28']`); Python writes raise
OSError. Both become one short reason here, and a full disk is told apart from other
failures because its remedy differs.
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import shutil

_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_OS_CODE = re.compile(r"os_error_code='?(\d+)")


def free_bytes(path: pathlib.Path) -> int | None:
    """Bytes free to this user on the filesystem holding path, or None where that cannot be known."""
    try:
        return shutil.disk_usage(path).free
    except (OSError, AttributeError, NotImplementedError):
        return None


def tree_bytes(path: pathlib.Path) -> int:
    """Bytes of the files under path (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed while we walked
    return total


def write_failure(error: BaseException) -> tuple[str, bool]:
    """(a one-line reason, whether it is a full disk or quota) for an exception from a save."""
    for e in _chain(error):
        code = e.errno if isinstance(e, OSError) else None
        if code is None:
            match = _OS_CODE.search(str(e))
            code = int(match.group(1)) if match else None
        if code is not None:
            return os.strerror(code), code in _SPACE_ERRNOS
    text = str(error).strip().splitlines()
    return (f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__), False


def megabytes(num_bytes: int) -> str:
    """A size for a message: 2.7 MB, 310 MB, 12.4 GB."""
    if num_bytes >= 10e9:
        return f"{num_bytes / 1e9:.1f} GB"
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes < 100e6 else f"{num_bytes / 1e6:.0f} MB"


def _chain(error: BaseException):
    """The error and its causes, outermost first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__
