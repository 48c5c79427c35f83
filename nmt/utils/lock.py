"""One nmt process at a time writes into a run folder.

`nmt train` holds `RUN_DIR/.lock` for the whole run; `nmt preprocess` into the run, and
`nmt average` / `nmt translate -o` writing into a run folder, hold it while they write. The lock
is an `fcntl.flock` on that file: the kernel releases it when its process ends in any way
(SIGKILL included), so a lock left behind by a killed run never blocks the next one. The file
says who holds it, so the refusal can name the other process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from nmt.errors import NmtError

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(info["since"]))
        return f"pid {info['pid']}, `{info['command']}`, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def hold(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder`'s lock for the duration, or refuse with one line naming the holder.

    `what` says what this process is doing there ("train", "preprocess", ...).
    """
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise NmtError(f"cannot create the lock file in {folder}: {e.strerror}") from None
    succeeded = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NmtError(
                f"{folder} is in use by another nmt process ({_holder(folder / LOCK_NAME)}); "
                f"wait for it to end before you {what} there, or use another folder"
            ) from None
        record = {"pid": os.getpid(), "command": _command(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        try:
            yield
            succeeded = True
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock
        if created and not succeeded:
            _remove_if_only_the_lock(folder)


def _remove_if_only_the_lock(folder: Path) -> None:
    """A failure before anything was written leaves no folder behind. Quietly, whatever the
    folder's state (even removed meanwhile): the failure being raised is the one to report."""
    with contextlib.suppress(OSError):
        if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            (folder / LOCK_NAME).unlink()
            folder.rmdir()


def hold_if_run_folder(folder: Path, what: str) -> contextlib.AbstractContextManager:
    """`hold(folder)` when `folder` is a run folder (it has a lock file), else nothing: output
    written elsewhere needs no lock."""
    if (folder / LOCK_NAME).is_file():
        return hold(folder, what)
    return contextlib.nullcontext()


def _command() -> str:
    args = [Path(sys.argv[0]).name] + sys.argv[1:] if sys.argv else ["python"]
    if args[0] in ("__main__.py", "-m"):
        args[0] = "nmt"
    return " ".join(args)[:200]
