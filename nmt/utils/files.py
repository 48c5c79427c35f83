"""Reading UTF-8 text line by line, and writing files so that a failure never leaves half a file.

`read_lines` names the file (or stream) and line of any byte that is not UTF-8; `atomic_write`
writes to a temporary file beside the target, flushes it to disk and renames it into place, so
the previous version survives a crash, a full disk or Ctrl-C; `atomic_folder` does the same for
a folder of files (an exported or imported model).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from nmt.errors import NmtError


def read_lines(source: Path | BinaryIO, name: str | None = None) -> Iterator[str]:
    """The lines of a UTF-8 file or binary stream, without their line endings (LF or CRLF).

    `name` says what the stream is in error messages (default: the path)."""
    if isinstance(source, (str, Path)):
        try:
            stream = open(source, "rb")  # noqa: SIM115 - closed below; binary to name bad lines
        except FileNotFoundError:
            raise NmtError(f"file not found: {source}") from None
        except IsADirectoryError:
            raise NmtError(f"expected a text file, found a folder: {source}") from None
        except PermissionError:
            raise NmtError(f"cannot read {source}: permission denied") from None
        name = name or str(source)
    else:
        stream = contextlib.nullcontext(source)
        name = name or "input"
    with stream as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise NmtError(
                    f"{name}, line {number}: not valid UTF-8 (byte {e.start + 1} of the line); "
                    "convert the file to UTF-8"
                ) from None
            yield line.rstrip("\r\n")


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file object whose content replaces `path` only when the block completes (mode "w"
    for UTF-8 text, "wb" for bytes); on any failure the temporary file is removed and `path`
    is left as it was."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file private (0600); give it the mode open() would have given it.
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    tmp = Path(tmp_name)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A new folder beside `path` to fill; when the block completes it replaces `path` (and its
    parent folders are made), on any failure it is removed and `path` is left as it was. An
    OSError becomes one NmtError naming `path`."""
    building = path.parent / f".{path.name}.partial"
    try:
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        yield building
        if path.is_dir():
            shutil.rmtree(path)
        building.rename(path)
    except OSError as e:
        raise NmtError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)


def write_lines(path: Path, lines: Iterable[str]) -> None:
    """Write lines (each followed by a newline) atomically."""
    with atomic_write(path) as f:
        for line in lines:
            f.write(line + "\n")
