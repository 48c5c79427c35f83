"""Fetch the Multi30k task 1 raw files (train, val, test_2016_flickr) into data/multi30k/.

Two sources:

* default: download ``{split}.{lang}.gz`` from the public GitHub repository
  multi30k/dataset (data/task1/raw/) and decompress it;
* ``--from DIR``: copy plain-text ``{split}.{lang}`` files from a local mirror (a gzip
  ``{split}.{lang}.gz`` there is decompressed too), e.g. ``--from ../shared/data/multi30k``.

The result is one sentence per line in ``OUT/{split}.{lang}``. After fetching, all languages
of a split must have the same number of lines. Any error prints one line to stderr and
exits with code 2. Existing files are only overwritten with ``--force``.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

BASE_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw"
LANGS = ("en", "de", "fr", "cs")
SPLITS = ("train", "val", "test_2016_flickr")
DEFAULT_OUT = Path(__file__).resolve().parent / "multi30k"
TIMEOUT_S = 60


class FetchError(Exception):
    """A problem the user can fix; the message is one line naming the file and the fix."""


def _count_lines(path: Path) -> int:
    # Count newline bytes, plus one for a last line without "\n", so a missing final newline
    # does not make two parallel files look different.
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _copy_local(name: str, from_dir: Path, part: Path) -> None:
    plain, packed = from_dir / name, from_dir / f"{name}.gz"
    if plain.is_file():
        # copyfile, not copy: the mirror may be read-only and its mode must not follow.
        shutil.copyfile(plain, part)
    elif packed.is_file():
        with gzip.open(packed, "rb") as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        raise FetchError(f"{plain}: not found; check --from DIR (files must be named {name})")


def _download(name: str, part: Path) -> None:
    url = f"{BASE_URL}/{name}.gz"
    # GitHub redirects /raw/ to raw.githubusercontent.com; urllib follows the redirect.
    request = urllib.request.Request(url, headers={"User-Agent": "nmt-fetch-multi30k"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        with gzip.GzipFile(fileobj=response) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst)


def _fetch_one(name: str, dest: Path, from_dir: Path | None) -> None:
    # Write to a .part file and rename at the end, so an interrupted run never leaves a
    # truncated file that a later run (without --force) would take for a complete one.
    part = dest.with_name(dest.name + ".part")
    try:
        if from_dir is None:
            _download(name, part)
        else:
            _copy_local(name, from_dir, part)
        os.replace(part, dest)
    except FetchError:
        raise
    except urllib.error.HTTPError as e:
        raise FetchError(
            f"{BASE_URL}/{name}.gz: HTTP {e.code} {e.reason}; check the split/language name,"
            " or download it by hand and use --from DIR"
        ) from None
    except urllib.error.URLError as e:
        raise FetchError(
            f"{BASE_URL}/{name}.gz: network error ({e.reason}); retry, or use --from DIR"
            " with a local copy"
        ) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        source = f"{BASE_URL}/{name}.gz" if from_dir is None else str(from_dir / f"{name}.gz")
        raise FetchError(f"{source}: not a valid gzip file ({e}); replace it or retry") from None
    except OSError as e:  # includes timeouts and disk errors
        where = f"{BASE_URL}/{name}.gz" if from_dir is None else str(from_dir / name)
        raise FetchError(
            f"{where} -> {dest}: {e.strerror or e}; check the paths and retry"
        ) from None
    finally:
        part.unlink(missing_ok=True)


def fetch(
    out_dir: Path | str = DEFAULT_OUT,
    langs: list[str] | tuple[str, ...] = LANGS,
    splits: list[str] | tuple[str, ...] = SPLITS,
    from_dir: Path | str | None = None,
    force: bool = False,
) -> list[Path]:
    """Fetch Multi30k task 1 files into out_dir as ``{split}.{lang}``; return their paths.

    Downloads from GitHub unless from_dir (a local mirror of plain-text files) is given.
    Raises FetchError (one-line message) on a missing source, a network error, an existing
    destination without force, or languages of a split with different line counts.
    """
    out_dir = Path(out_dir)
    from_dir = None if from_dir is None else Path(from_dir)
    langs, splits = list(langs), list(splits)
    if not langs or not splits:
        raise FetchError("no languages or splits given; e.g. --langs en,de --splits train,val")
    for name in langs + splits:
        # Names become file names and URL parts, so keep them to plain identifiers.
        if not name.replace("_", "").isalnum():
            raise FetchError(f"{name!r}: not a valid language or split name")
    if from_dir is not None and not from_dir.is_dir():
        raise FetchError(f"{from_dir}: no such directory; check --from DIR")

    targets = [
        (f"{split}.{lang}", out_dir / f"{split}.{lang}") for split in splits for lang in langs
    ]
    # Check every destination before fetching anything, so a refusal changes nothing.
    existing = [dest for _, dest in targets if dest.exists()]
    if existing and not force:
        raise FetchError(
            f"{existing[0]} already exists ({len(existing)} of {len(targets)} files);"
            " pass --force to overwrite"
        )
    if from_dir is not None:
        # Same idea for a mirror: report a missing file before copying the others.
        for name, _ in targets:
            if not (from_dir / name).is_file() and not (from_dir / f"{name}.gz").is_file():
                raise FetchError(
                    f"{from_dir / name}: not found; check --from DIR (files must be named {name})"
                )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"{out_dir}: cannot create ({e.strerror or e}); check --out") from None

    for name, dest in targets:
        _fetch_one(name, dest, from_dir)

    for split in splits:
        counts = {lang: _count_lines(out_dir / f"{split}.{lang}") for lang in langs}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{split}.{lang}={n}" for lang, n in counts.items())
            raise FetchError(
                f"{out_dir}/{split}.*: languages have different line counts ({detail});"
                " the source files are damaged or mixed; fix them, then fetch again with --force"
            )
    return [dest for _, dest in targets]


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "--from",
        dest="from_dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="copy {split}.{lang} from this local mirror instead of downloading",
    )
    parser.add_argument("--langs", type=_csv, default=list(LANGS), help="e.g. en,de")
    parser.add_argument("--splits", type=_csv, default=list(SPLITS), help="e.g. train,val")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    try:
        paths = fetch(args.out, args.langs, args.splits, args.from_dir, args.force)
    except FetchError as e:
        print(f"fetch_multi30k: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "fetch_multi30k: interrupted; run again (add --force if files exist)", file=sys.stderr
        )
        sys.exit(2)
    source = args.from_dir if args.from_dir is not None else BASE_URL
    print(
        f"fetched {len(paths)} files ({','.join(args.splits)} x {','.join(args.langs)})"
        f" from {source} to {args.out}"
    )


if __name__ == "__main__":
    main()
