"""Atomic writes: a file or a whole directory appears complete or not at all.

Directories are built in a hidden sibling `.<name>.tmp-<pid>-<rand>`, every file is fsynced, then
the directory is renamed into place. Replacing an existing directory moves the old one aside
first and deletes it only after the new one is in place, so a crash leaves the old version or the
new one (or, in the instant between two renames, neither) — never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below `root` (and `root` itself)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def stale_temp_dirs(target: str | Path) -> list[Path]:
    """Temp dirs left behind by killed writers of `target`."""
    target = Path(target)
    if not target.parent.exists():
        return []
    return sorted(target.parent.glob(f".{target.name}.tmp-*"))


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory; on clean exit it replaces `target` atomically, on error it is removed.

    Raises FileExistsError up front when `target` exists and `overwrite` is False, so no work is
    wasted and nothing already written is touched.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    # A crash between the two renames of a replacement leaves only `.<name>.old-*`: put it back.
    olds = sorted(target.parent.glob(f".{target.name}.old-*"))
    if olds and not target.exists():
        os.rename(olds[-1], target)
        olds = olds[:-1]
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=True / --overwrite to replace it)")
    for stale in stale_temp_dirs(target):  # leftovers of writers that were killed
        pid = stale.name.split(".tmp-")[-1].split("-")[0]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if target.exists():
            if not overwrite:  # appeared while we were writing: never clobber it
                raise FileExistsError(f"{target} was created by someone else while writing; not replacing it")
            old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
            os.rename(target, old)
            os.rename(tmp, target)
            _fsync_dir(target.parent)  # the new version is durable before the old one goes
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
            _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
