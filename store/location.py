"""Where a store lives: a local directory (a path or a `file://` URL) or any fsspec URL.

Local stores use zarr's `LocalStore` (atomic file writes, and we fsync finished blocks);
other URLs (`memory://`, `s3://`, `gs://` ... whatever fsspec has installed) use `FsspecStore`.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import fsspec
from zarr.storage import FsspecStore, LocalStore

from migmcut.errors import StoreError
from migmcut.files import dir_lock

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Location:
    url: str  # as given
    path: Path | None  # local directory, or None for an fsspec URL

    @property
    def local(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        return str(self.path) if self.local else self.url


def resolve(url: str | os.PathLike) -> Location:
    text = os.fspath(url)
    if not text:
        raise StoreError("the store location is empty: give a directory or an fsspec URL")
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"{text}: file:// URLs must name a local path (file:///abs/path)")
        return Location(text, Path(unquote(parsed.path)).expanduser())
    if _URL.match(text):
        return Location(text, None)
    return Location(text, Path(text).expanduser())


def zarr_store(loc: Location, read_only: bool):

    if loc.local:
        return LocalStore(loc.path, read_only=read_only)
    try:
        return FsspecStore.from_url(loc.url, read_only=read_only)
    except (ImportError, ValueError) as err:
        raise StoreError(f"{loc.url}: cannot open this URL ({err}); install the fsspec backend for it") from None


def _fs(loc: Location):

    try:
        fs, path = fsspec.core.url_to_fs(loc.url)
    except (ImportError, ValueError) as err:
        raise StoreError(f"{loc.url}: cannot open this URL ({err}); install the fsspec backend for it") from None
    return fs, path


def exists(loc: Location) -> bool:
    if loc.local:
        return loc.path.exists()
    fs, path = _fs(loc)
    return fs.exists(path)


def is_empty_dir(loc: Location) -> bool:
    if loc.local:
        return loc.path.is_dir() and not any(loc.path.iterdir())
    fs, path = _fs(loc)
    return not fs.exists(path) or (fs.isdir(path) and not fs.ls(path))


def size_bytes(loc: Location) -> int:
    """Bytes the store occupies (every file under it)."""
    if loc.local:
        total = 0
        for root, _, files in os.walk(loc.path):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except OSError:
                    pass
        return total
    fs, path = _fs(loc)
    return int(fs.du(path, total=True)) if fs.exists(path) else 0


@contextmanager
def writer_lock(loc: Location):
    """Hold the one-writer-job lock of a local store (`migmcut.files.dir_lock`) for the duration of the block.

    fsspec URLs have no lock: coordinate writers with torchrun.
    """
    if not loc.local:
        yield
        return
    busy = (f"{loc} is being recorded by another migmcut process; wait for it to finish or stop it "
            "(to record one store with many processes, launch them together under torchrun)")
    with dir_lock(loc.path, busy, error=StoreError):
        yield


def remove_partials(loc: Location) -> int:
    """Delete temporary `*.partial` files a killed writer left behind (local stores only)."""
    if not loc.local or not loc.path.is_dir():
        return 0
    removed = 0
    for root, _, files in os.walk(loc.path):
        for f in files:
            if f.endswith(".partial"):
                try:
                    os.unlink(os.path.join(root, f))
                    removed += 1
                except OSError:
                    pass
    return removed


def fsync_tree(paths: list[Path]) -> None:
    """fsync files (and, for directories, everything under them plus the directories)."""
    dirs = set()
    for p in paths:
        if p.is_dir():
            for root, _, files in os.walk(p):
                for f in files:
                    _fsync(os.path.join(root, f))
                dirs.add(root)
            dirs.add(str(p.parent))
        elif p.exists():
            _fsync(str(p))
            dirs.add(str(p.parent))
    for d in dirs:
        _fsync(d, directory=True)


def _fsync(path: str, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
