"""Readers: files, folders and datasets in; Documents out, with a Skip in place of every input,
or row, that could not be read (one module per family of formats)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bonito.errors import BonitoError
from bonito.read.sources.document import Document, Skip, Unreadable
from bonito.read.sources.hub import is_saved_dataset, read_hub_dataset, read_saved_dataset
from bonito.read.sources.pdf import read_pdf
from bonito.read.sources.tables import TABLE_SUFFIXES, read_table
from bonito.read.sources.text import TEXT_SUFFIXES, read_text, text_by_name
from bonito.read.sources.web import HTML_SUFFIXES, read_html
from bonito.read.sources.word import read_docx

READERS: dict[str, Callable[[Path], Iterable[Document | Skip]]] = {
    **dict.fromkeys(TEXT_SUFFIXES, read_text),
    **dict.fromkeys(HTML_SUFFIXES, read_html),
    ".pdf": read_pdf,
    ".docx": read_docx,
}
SUFFIXES = (*TABLE_SUFFIXES, *READERS)
KNOWN_SUFFIXES = (*SUFFIXES, ".arrow", ".epub", ".gz", ".odt", ".pptx", ".rtf", ".xlsx", ".zip")
"""Suffixes of files, never the end of a hub id: a missing input with one is a mistyped path."""


def read_documents(
    inputs: Sequence[str | Path],
    text_field: str = "text",
    *,
    split: str = "train",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Iterator[Document | Skip]:
    """Documents, read lazily in the order given, from files, folders, folders written by
    `datasets.save_to_disk` and hub dataset ids (`owner/name`). Folders are read recursively,
    hidden entries left out; `include` and `exclude` are glob patterns on the path inside the
    folder. A file given twice, or also inside a folder given, is read once. Whatever cannot be
    read becomes a Skip in its place; check_inputs runs before anything is read."""
    items = [str(item) for item in inputs]
    check_inputs(items, include, exclude)
    return _read(items, text_field, split, include, exclude)


def check_inputs(
    inputs: Sequence[str | Path], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> None:
    """Raise BonitoError for an input that is neither a local path that exists nor a hub id,
    and for `include`/`exclude` patterns when no input is a folder they could apply to."""
    for item in inputs:
        check_input(str(item))
    if (include or exclude) and not any(Path(item).expanduser().is_dir() for item in inputs):
        name = "include" if include else "exclude"
        raise BonitoError(
            f"{name} (--{name}) picks files inside folders, and no input is a folder; give a "
            f"folder, or leave {name} out."
        )


def check_input(item: str) -> None:
    """Raise BonitoError unless `item` exists here or reads as a hub dataset id (`owner/name`,
    looked up later). A missing path that starts with `.`, `~` or `/`, ends in `/`, has a known
    file suffix, or whose first folder exists here was meant as a local path: it is an error,
    never a hub lookup."""
    path = Path(item).expanduser()
    if path.exists():
        return
    local = (
        item.startswith((".", "~", "/"))
        or item.endswith("/")
        or path.suffix.lower() in KNOWN_SUFFIXES
        or (len(path.parts) > 1 and Path(path.parts[0]).exists())
    )
    if local or not is_hub_id(item):
        raise BonitoError(
            f"The input '{item}' does not exist; give a file, a folder or a hub dataset id "
            "(owner/name)."
        )


def is_hub_id(item: str) -> bool:
    """Whether `item` reads as a hub id (`owner/name`) rather than a local path."""
    return item.count("/") == 1 and not item.startswith((".", "~", "/")) and not item.endswith("/")


def _read(
    inputs: list[str], text_field: str, split: str, include: Sequence[str], exclude: Sequence[str]
) -> Iterator[Document | Skip]:
    seen: set[Path | str] = set()  # what was read, so that nothing is read twice
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            if item not in seen:
                seen.add(item)
                yield from _guarded(partial(read_hub_dataset, item, text_field, split), item)
        elif path.is_dir() and not is_saved_dataset(path):
            yield from _read_folder(path, text_field, split, include, exclude, seen)
        elif _first_time(path, seen):
            if path.is_dir():
                yield from _guarded(partial(read_saved_dataset, path, text_field, split), item)
            else:
                yield from _read_file(path, text_field)


def _read_folder(
    folder: Path,
    text_field: str,
    split: str,
    include: Sequence[str],
    exclude: Sequence[str],
    seen: set[Path | str],
) -> Iterator[Document | Skip]:
    found_any = False
    for found in _walk(folder, include, exclude):
        found_any = True
        if isinstance(found, Skip):
            yield found
            continue
        if not _first_time(found, seen):
            continue
        if found.is_dir():
            yield from _guarded(partial(read_saved_dataset, found, text_field, split), str(found))
        else:
            yield from _read_file(found, text_field)
    if not found_any:
        yield _nothing_found(folder, include, exclude)


def _first_time(path: Path, seen: set[Path | str]) -> bool:
    """Whether the file or saved dataset at `path` is not read yet (and from now on, it is)."""
    resolved = path.resolve()
    if resolved in seen:
        return False
    seen.add(resolved)
    return True


def _nothing_found(folder: Path, include: Sequence[str], exclude: Sequence[str]) -> Skip:
    """The Skip for a folder in which no file is left to read."""
    if include:
        patterns = " ".join(f"'{p}'" for p in include)
        return Skip(
            str(folder),
            "no_match",
            f"has no file that matches include (--include) {patterns} (case counts)",
        )
    if exclude:
        patterns = " ".join(f"'{p}'" for p in exclude)
        return Skip(str(folder), "no_match", f"has no file left by exclude (--exclude) {patterns}")
    return Skip(str(folder), "empty", "has no files (hidden ones are not read)")


def _read_file(path: Path, text_field: str) -> Iterator[Document | Skip]:
    """A file read by its suffix; one without a suffix, or named like README or LICENSE, is read
    as text when its content is text."""
    if special := _special_kind(path):
        detail = f"is {special}, not a regular file; only files are read"
        return iter([Skip(str(path), "unsupported_type", detail)])
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return _guarded(partial(read_table, path, text_field), str(path))
    plain = suffix not in KNOWN_SUFFIXES and text_by_name(path)
    reader = READERS.get(suffix) or (read_text if plain else None)
    if reader:
        return _guarded(partial(reader, path), str(path))
    readable = ", ".join(SUFFIXES)
    detail = f"is not one of {readable} (name a plain text file .txt to read it)"
    return iter([Skip(str(path), "unsupported_type", detail)])


def _special_kind(path: Path) -> str | None:
    """What `path` is when it is neither a regular file nor a folder (a pipe, device or socket,
    which reading could hang on or never finish); None for a file, a folder, or what cannot be
    looked at (reading it says why)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    kinds = {
        stat.S_ISFIFO: "a named pipe",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), None)


def _guarded(
    read: Callable[[], Iterable[Document | Skip]], source: str
) -> Iterator[Document | Skip]:
    """What `read` yields, ending in a Skip with the reason if it fails part way."""
    try:
        yield from read()
    except Unreadable as error:
        yield Skip(source, error.reason, error.detail)
    except OSError as error:
        yield Skip(source, "unreadable", f"cannot be read ({error.strerror or error})")
    except Exception as error:  # a parser failing on a damaged file must not end the run
        yield Skip(source, "corrupt", f"could not be parsed ({type(error).__name__}: {error})")


def _walk(folder: Path, include: Sequence[str], exclude: Sequence[str]) -> Iterator[Path | Skip]:
    """Files under `folder` in name order, and saved datasets as folders, not their files."""
    errors: list[OSError] = []
    for root, dirs, files in os.walk(folder, onerror=errors.append):
        yield from _listing_errors(errors)
        here = Path(root)
        if here != folder and is_saved_dataset(here):
            dirs.clear()
            if _wanted(here.relative_to(folder).as_posix(), include, exclude):
                yield here
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            if _wanted((here / name).relative_to(folder).as_posix(), include, exclude):
                yield here / name
    yield from _listing_errors(errors)


def _listing_errors(errors: list[OSError]) -> Iterator[Skip]:
    while errors:
        error = errors.pop(0)
        yield Skip(str(error.filename), "unreadable", f"cannot be listed ({error.strerror})")


def _wanted(relative: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a path inside a folder matches an `include` pattern (if any) and no `exclude`
    pattern; a pattern matches the path or the file name, and `*` crosses folders."""
    name = relative.rsplit("/", 1)[-1]
    matches = [fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p) for p in include]
    excluded = any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p) for p in exclude)
    return (not include or any(matches)) and not excluded


@dataclass(frozen=True)
class InputPrint:
    """What an input is now: a hub dataset id (`files` None), or the files of a local file or
    folder that reading sees, each by its path inside the input (a file: its name) as
    [size, blake2b of its bytes]. Two prints of the same files are equal however the input's
    path is spelled."""

    input: str
    files: dict[str, list] | None = None

    def to_dict(self) -> dict[str, object]:
        """The input, its size and one hash of all its files (a hub id: the id alone)."""
        if self.files is None:
            return {"input": self.input, "hub": True}
        digest = hashlib.blake2b(json.dumps(self.files, sort_keys=True).encode(), digest_size=16)
        size = sum(size for size, _ in self.files.values())
        return {"input": self.input, "bytes": size, "blake2b": digest.hexdigest()}

    def changes(self, before: InputPrint) -> list[str]:
        """What changed since `before`, one line per file: `corpus/b.md was added`."""
        if self.files is None or before.files is None:
            same = (self.input, self.files) == (before.input, before.files)
            return [] if same else [f"inputs: {before.input} -> {self.input}"]
        old, new = before.files, self.files
        changed = {
            **{name: "removed" for name in old.keys() - new.keys()},
            **{name: "added" for name in new.keys() - old.keys()},
            **{name: "modified" for name in old.keys() & new.keys() if old[name] != new[name]},
        }
        return [f"{Path(self.input) / name} was {how}" for name, how in sorted(changed.items())]


def fingerprint(
    inputs: Sequence[str | Path], *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[dict[str, object]]:
    """What each input is now, compactly (see InputPrint.to_dict)."""
    return [found.to_dict() for found in input_prints(inputs, include=include, exclude=exclude)]


def input_prints(
    inputs: Sequence[str | Path], *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[InputPrint]:
    """What each input is now: the files `read_documents` would read with the same `include`
    and `exclude` (hidden and excluded ones left out), each hashed, or a hub id as itself."""
    prints = []
    for item in map(str, inputs):
        path = Path(item).expanduser()
        if not path.exists():
            prints.append(InputPrint(item))
        elif path.is_dir() and not is_saved_dataset(path):
            files = [
                file
                for found in _walk(path, include, exclude)
                if not isinstance(found, Skip)  # the reading reports it
                for file in ([found] if found.is_file() else _visible_files(found))
            ]
            prints.append(InputPrint(item, _hashed(path, files)))
        elif path.is_dir():
            prints.append(InputPrint(item, _hashed(path, _visible_files(path))))
        else:
            prints.append(InputPrint(item, _hashed(path, [path])))
    return prints


def _hashed(folder: Path, files: Iterable[Path]) -> dict[str, list]:
    """Each file by its path inside `folder` ("." for the file `folder` itself), as [size,
    blake2b of its bytes]."""
    return {file.relative_to(folder).as_posix(): _file_print(file) for file in files}


def _file_print(file: Path) -> list:
    """[size, blake2b of its bytes] of a file; a pipe, device or socket is never opened."""
    digest, size = hashlib.blake2b(digest_size=16), 0
    if special := _special_kind(file):  # the reading skips it
        digest.update(special.encode())
        return [size, digest.hexdigest()]
    try:
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
                size += len(block)
    except OSError as error:  # the reading reports it; the print still changes
        digest.update(f"unreadable: {error.strerror}".encode())
    return [size, digest.hexdigest()]


def _visible_files(folder: Path) -> Iterator[Path]:
    """Files under `folder` that reading could see: none hidden, none in a hidden folder."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if path.is_file() and not any(part.startswith(".") for part in relative):
            yield path


__all__ = [
    "SUFFIXES",
    "Document",
    "InputPrint",
    "Skip",
    "check_input",
    "check_inputs",
    "fingerprint",
    "input_prints",
    "is_hub_id",
    "read_documents",
]
