"""Writing files safely: atomic replace, a one-job lock on a directory, a full disk as a user error."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from migmcut.errors import UserError, arg

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
PACKAGE_DIR = Path(__file__).resolve().parent


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(write, tmp: Path) -> None:
    """`write(tmp)`; a library's own error for a failed write (torch.save's RuntimeError "unexpected
    pos", safetensors' SafetensorError) becomes the OSError behind it (a full disk: ENOSPC)."""
    try:
        write(tmp)
    except OSError:
        raise
    except Exception as err:
        cause = _write_error(tmp)
        if cause is not None:
            raise cause from err
        raise


def _write_error(tmp: Path) -> OSError | None:
    """Why writing `tmp` fails, if it does: append 1 MiB to it and sync (the caller removes it)."""
    try:
        with open(tmp, "ab") as f:
            f.write(bytes(1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return err
    return None


def atomic_write(path: Path, write) -> None:
    """`write(tmp)`, then rename it onto `path` (mode 0666 less the umask, like any new file).

    On any failure (a full disk, Ctrl-C) the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write(write, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create files 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_all(writes: dict) -> None:
    """`atomic_write` for files that belong together ({path: write}): every temporary file is written
    first, then all are renamed in a row, so a failure while writing leaves every `path` untouched
    and the files are never seen one save apart (but for a kill -9 between two renames)."""
    tmps = {Path(path): Path(path).with_name(f".{Path(path).name}.tmp") for path in writes}
    try:
        for path, write in writes.items():
            tmp = tmps[Path(path)]
            _write(write, tmp)
            os.chmod(tmp, 0o666 & ~_umask())
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`data` written to `path` atomically (`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def writable_dir(path: Path, name: str = "out") -> Path:
    """Create directory `path` (parameter `name`) if needed and make sure files can be written there."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".migmcut-write-test-")  # its own name: runs side by side
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{arg(name, path)}: cannot write there ({err.strerror or err}); choose another directory") from None
    return path


def is_shipped(path: Path) -> bool:
    """True for files under the installed package (shipped weights): never written at run time."""
    try:
        Path(path).expanduser().resolve().relative_to(PACKAGE_DIR)
        return True
    except ValueError:
        return False


@contextmanager
def dir_lock(path: Path, busy: str, name: str = "out", error: type[UserError] = UserError):
    """Hold an exclusive `flock` on directory `path` (created if missing) while the block runs.

    The kernel drops the lock when the process ends, kill -9 included, so a dead run never leaves
    a stale lock. A directory created here is removed again if it is still empty on the way out
    (a refused or failed job leaves nothing behind). `busy`: the message when another process holds it.
    """

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"{arg(name, path)}: exists and is not a directory; choose another {arg(name)}")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as err:
        raise error(f"{arg(name, path)}: cannot write there ({err.strerror or err}); choose another location") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise error(busy) from None
        yield
    finally:
        if created:
            try:
                path.rmdir()  # only succeeds while empty
            except OSError:
                pass
        os.close(fd)


def check_writable_dir(path: Path, name: str = "out") -> Path:
    """`writable_dir`'s refusals without creating anything (for before the input is validated).

    `path` is a directory, or can be made one: its nearest existing ancestor is a directory this
    process may write. `writable_dir` creates it later (and catches what cannot be known before).
    """
    path = Path(path).expanduser()
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    why = None
    if not probe.is_dir():
        why = "exists and is not a directory" if probe == path.absolute() else f"{probe} is not a directory"
    elif not os.access(probe, os.W_OK | os.X_OK):
        why = "permission denied" if probe == path.absolute() else f"{probe} is not writable"
    if why:
        raise UserError(f"{arg(name, path)}: cannot write there ({why}); choose another directory")
    return path


NUMBERED = re.compile(r"(\d{4,})-")  # NNNN-name.ext: the files `write_numbered` makes


def write_numbered(directory: Path, name: str, write) -> Path:
    """Write a new file `NNNN-name` in `directory` and return its path: `write(tmp)` writes it, then it
    takes the number after the highest one there. It never replaces a file, also while other
    processes write numbered files into the same directory (the number is claimed under an `flock`
    on the directory, and the file appears under it whole, by a hard link that cannot overwrite).
    On any failure nothing is left behind.
    """

    directory = Path(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        lock = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            _claim(lock, directory, fcntl)
            with os.scandir(directory) as entries:
                n = 1 + max((int(m.group(1)) for e in entries if (m := NUMBERED.match(e.name))), default=-1)
            while True:
                path = directory / f"{n:04d}-{name}"
                try:
                    _link(tmp, path)
                    return path
                except FileExistsError:  # written by something that does not take the lock
                    n += 1
        finally:
            os.close(lock)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _claim(fd: int, directory: Path, fcntl, wait_s: float = 10.0) -> None:
    """An exclusive `flock` on `directory` (open as `fd`), released when `fd` is closed or the process
    dies. Numbering holds it for a moment; a job lock (`dir_lock`: record, train, bench writing
    there) holds it for the whole job: refused after `wait_s` rather than waiting for that."""

    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            raise UserError(f"{arg('out', directory)}: another migmcut job holds this folder (record, train or "
                            f"bench writing there): choose another {arg('out')}")
        time.sleep(0.005)


def _link(src: str, dst: Path) -> None:
    """`dst` made from `src`, failing with FileExistsError if `dst` exists (hard link; where the
    file system has none, an exclusive create then a rename over it)."""
    try:
        os.link(src, dst)
    except OSError as err:
        if isinstance(err, FileExistsError) or err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        os.close(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(src, dst)
