"""Reading files that a submission (or its run) could have made: regular files only, never past a size cap.

Everything a run leaves behind (the executed notebook, the runner's status, the exported manifest and arrays) and
every submission file is read through :func:`read_capped`: the file is opened without following a symbolic link
and without blocking (a FIFO or a device never stalls the grader), checked to be a regular file on the opened
descriptor (no race between the check and the read), and read up to a cap, so a bloated file costs the grader at
most the cap in memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafeFile(Exception):
    """The file is not a regular file, is a symbolic link, is missing, or is larger than allowed; says which."""


def read_capped(path: str | os.PathLike, cap: int, follow_symlinks: bool = False) -> bytes:
    """The bytes of the regular file ``path``, at most ``cap`` of them.

    Raises:
        UnsafeFile: missing or unreadable, a symbolic link (unless ``follow_symlinks``), not a regular file (a
            FIFO, a device, a folder, a socket), or larger than ``cap`` bytes (nothing is read then).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    name = Path(path).name
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnsafeFile(f"{name} does not exist") from None
    except OSError as e:
        if not follow_symlinks and os.path.islink(path):
            raise UnsafeFile(f"{name} is a symbolic link") from None
        raise UnsafeFile(f"{name} cannot be opened ({e.strerror or type(e).__name__})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{name} is not a regular file (a folder, pipe, device or socket)")
        if st.st_size > cap:
            raise UnsafeFile(f"{name} is {st.st_size / 2**20:.1f} MiB, more than the {cap / 2**20:g} MiB allowed")
        chunks, left = [], cap + 1  # one byte more than the cap: a file that grew while read is caught
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > cap:
            raise UnsafeFile(f"{name} grew past the {cap / 2**20:g} MiB allowed while it was read")
        return data
    finally:
        os.close(fd)


def regular_size(path: str | os.PathLike) -> int | None:
    """The size of ``path`` if it is a regular file (not through a symbolic link), else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def folder_bytes(folders: list[Path], max_entries: int = 20_000) -> tuple[int, bool]:
    """``(bytes, complete)``: the disk space the files under ``folders`` take (allocated blocks, so sparse files
    count what they use), walking at most ``max_entries`` entries (``complete`` is False past that)."""
    total, seen, todo = 0, 0, [str(f) for f in folders]
    while todo:
        try:
            with os.scandir(todo.pop()) as it:
                for entry in it:
                    seen += 1
                    if seen > max_entries:
                        return total, False
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        todo.append(entry.path)
                    else:
                        total += getattr(st, "st_blocks", 0) * 512 or st.st_size
        except OSError:
            continue
    return total, True
