"""Where a command writes: its output folder or file checked before any work, one sentence
for each way writing there fails (a file in the way, no permission, a read-only or full disk),
and files written whole (a kill leaves the earlier file or the new one, never part of one)."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from bonito.errors import BonitoError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
FILE_IN_THE_WAY = (errno.EEXIST, errno.ENOTDIR)
REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}


OUTPUT = "output (--output)"
"""How a command's output is named: the parameter, then the CLI flag."""


def output_error(
    path: str | Path, error: OSError, name: str = OUTPUT, *, resumable: bool = False
) -> BonitoError:
    """The sentence for `error`, raised while writing `path` (the caller's parameter `name`,
    its CLI flag in parentheses; "" for a positional path): which path is in the way or not
    writable, and what to do; free disk space is advised only when the disk is full (with
    `resumable`, running the command again then continues)."""
    path = Path(path)
    named = f"{name} {path}" if name else str(path)
    choose = f"choose a writable {name or 'path'}"
    if error.errno in DISK_FULL:
        then = ", then run the same command again to continue" if resumable else ""
        return BonitoError(
            f"Cannot write {path}: the disk is full; free some disk space{then}, "
            f"or choose another {name or 'path'}."
        )
    blocker = file_in_the_way(path) if error.errno in FILE_IN_THE_WAY else None
    if blocker == path:
        return BonitoError(f"{named} is a file; give a folder.")
    if blocker is not None:
        return BonitoError(f"Cannot write in {blocker}: it is a file, not a folder; {choose}.")
    reason = REASONS.get(error.errno or 0, (error.strerror or type(error).__name__).lower())
    return BonitoError(f"Cannot write in {existing(path)}: {reason}; {choose}.")


def file_in_the_way(path: Path) -> Path | None:
    """The first of `path`'s parents (or `path` itself) that exists and is not a folder."""
    for candidate in [*reversed(path.parents), path]:
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists: where a write into `path` was refused."""
    return next((p for p in (path, *path.parents) if p.exists()), path)


@contextmanager
def writable(path: str | Path, name: str = OUTPUT, *, resumable: bool = False) -> Iterator:
    """Turn an OSError raised inside into `output_error`'s sentence."""
    try:
        yield
    except OSError as error:
        raise output_error(path, error, name, resumable=resumable) from error


def output_folder(path: str | Path, name: str = OUTPUT) -> Path:
    """Create the folder `path` (and its parents) and make sure files can be written in it,
    before any work is done; `output_error`'s sentence when not."""
    path = Path(path)
    with writable(path, name):
        make_folder(path)
    return path


def output_file(path: str | Path, name: str = OUTPUT) -> Path:
    """Make sure the file `path` can be written (its folder created) before any work is done:
    a folder there, or a folder that cannot be written, is one sentence."""
    path = Path(path)
    if path.is_dir():
        raise BonitoError(f"{name or 'The path'} {path} is a folder; give a file to write.")
    with writable(path, name):
        make_folder(path.parent)
    return path


def make_folder(folder: Path) -> None:
    """Create `folder` and write (and remove) a file in it: an OSError if either fails."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".bonito-write-check"):
        pass


@contextmanager
def written_whole(path: str | Path, binary: bool = False) -> Iterator[IO]:
    """A new file beside `path`, hidden (not an input when the folder is read), synced to disk
    and renamed to `path` once the block ends without error: a kill at any moment leaves the
    earlier `path` or the new one, never part of one, and a symlink at `path` is replaced, not
    written through."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)  # "x" below then refuses a link planted in its place
    try:
        with partial.open("xb" if binary else "x", encoding=None if binary else "utf-8") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
