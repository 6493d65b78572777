"""``elastic-lab download-coco``: fetch, verify and unpack COCO 2017 into the layout we read.

Result, for ``--root ROOT --split val2017``::

    ROOT/images/val2017/000000000139.jpg ...
    ROOT/annotations/instances_val2017.json   (+ the other json files of the archive)
    ROOT/downloads/                           (partial downloads and, with --keep-archives, zips)

so that ``elastic-lab train --data ROOT`` finds the split by name.

Downloads use ``urllib`` with a tqdm bar. A download goes to ``NAME.part`` and resumes from its
size with an HTTP ``Range`` request; a server that ignores ``Range`` (answers 200) makes the file
restart from zero. A finished file is checked before it is renamed to its final name:

- size: against the official size (table below) or, when none is known, the server's
  Content-Length / Content-Range;
- MD5: against the official value (table below), or the value given through ``checksums``
  (CLI ``--md5 NAME=HEX``) for files served by a mirror or a test server; ``NAME=skip``
  checks the size only. A mismatch deletes the download and raises ``ChecksumError``.

The official sizes and MD5s below (the S3 ETags of ``images.cocodataset.org``) agree across
several independent public download scripts; ``image_info_test2017.zip`` has no size here.
Offline? Download the two zips by hand, put them in ``ROOT/downloads/`` and run the command
again: it verifies and unpacks them without touching the network.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import re
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

__all__ = [
    "DEFAULT_BASE_URL",
    "OFFICIAL_FILES",
    "SPLITS",
    "ChecksumError",
    "CocoLayout",
    "DownloadError",
    "add_arguments",
    "coco_layout",
    "download_coco",
    "download_file",
    "run",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://images.cocodataset.org"
SPLITS = ("train2017", "val2017", "test2017")
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class KnownFile:
    """Official size in bytes (None if unknown) and MD5 hex digest (None: check size only)."""

    size: int | None
    md5: str | None


OFFICIAL_FILES: dict[str, KnownFile] = {
    "train2017.zip": KnownFile(19_336_861_798, "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val2017.zip": KnownFile(815_585_330, "442b8da7639aecaf257c1dceb8ba8c80"),
    "test2017.zip": KnownFile(6_646_970_404, "77ad2c53ac5d0aea611d422c0938fb35"),
    "annotations_trainval2017.zip": KnownFile(252_907_541, "f4bbac642086de4f52a3fdda2de5fa2c"),
    "image_info_test2017.zip": KnownFile(None, "85da7065e5e600ebfee8af1edb634eb5"),
}


class DownloadError(RuntimeError):
    """A file could not be downloaded or unpacked; the message says what to do by hand."""


class ChecksumError(DownloadError):
    """A downloaded (or hand-placed) file has the wrong size or MD5."""


@dataclass(frozen=True)
class CocoLayout:
    """Where one split lives under ROOT (``annotation_file`` is None for test2017)."""

    images_dir: Path
    annotation_file: Path | None


def coco_layout(root: str | os.PathLike, split: str) -> CocoLayout:
    """Paths of a split under ``root``: ``images/{split}/`` and ``annotations/instances_{split}.json``."""
    root = Path(root)
    annotation = (
        None if split.startswith("test") else root / "annotations" / f"instances_{split}.json"
    )
    return CocoLayout(root / "images" / split, annotation)


def _urls(base_url: str, split: str) -> tuple[str, str]:
    """(images zip URL, annotations zip URL) of a split."""
    base = base_url.rstrip("/")
    ann = "image_info_test2017.zip" if split.startswith("test") else "annotations_trainval2017.zip"
    return f"{base}/zips/{split}.zip", f"{base}/annotations/{ann}"


# --------------------------------------------------------------------------- one file
def _md5(path: Path) -> str:
    """MD5 hex digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, name: str, size: int | None, md5: str | None) -> None:
    """Raise ``ChecksumError`` if ``path`` does not have the expected size / MD5."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ChecksumError(f"{path}: size {actual} bytes, expected {size} for {name}")
    if md5 is not None:
        got = _md5(path)
        if got != md5.lower():
            raise ChecksumError(f"{path}: MD5 {got}, expected {md5.lower()} for {name}")


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Full file size from Content-Range (206) or Content-Length (200); None if not sent."""
    content_range = response.headers.get("Content-Range")
    if content_range:
        match = re.fullmatch(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", content_range.strip())
        if not match or int(match.group(1)) != offset:
            raise DownloadError(f"unexpected Content-Range {content_range!r} for offset {offset}")
        return None if match.group(3) == "*" else int(match.group(3))
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _unreachable(url: str, dest: Path, reason: object) -> DownloadError:
    """The offline error: which host failed and how to place the file by hand."""
    host = urlparse(url).netloc or url
    return DownloadError(
        f"could not reach {host}: {reason}; download manually from {url} and place the file at "
        f"{dest}, then run the command again (it verifies and unpacks files already there)"
    )


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    size: int | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` with resume, verify size/MD5, then rename into place.

    Bytes go to ``dest + ".part"``; an existing part is resumed with ``Range: bytes=N-``. A 200
    answer to a range request restarts from zero. ``size`` (else the server's length) and
    ``md5`` are checked before ``os.replace``; on a mismatch the part is deleted and
    ``ChecksumError`` raised. A dropped connection keeps the part for the next attempt.
    An existing ``dest`` is verified and kept without any network access.
    """
    dest = Path(dest)
    name = dest.name
    if dest.exists():
        _verify(dest, name, size, md5)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "elastic-lab"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the part may be complete already
            match = re.fullmatch(
                r"bytes\s+\*/(\d+)", (e.headers.get("Content-Range") or "").strip()
            )
            e.close()
            if match and int(match.group(1)) == offset:
                return _finish(part, dest, name, size if size is not None else offset, md5)
            log.warning("%s refused to resume %s; restarting from zero", url, name)
            part.unlink()
            return download_file(url, dest, size=size, md5=md5, timeout=timeout, progress=progress)
        raise DownloadError(f"server answered HTTP {e.code} {e.reason} for {url}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _unreachable(url, dest, getattr(e, "reason", e)) from e

    with response:
        if offset and response.status != 206:
            log.warning("%s ignored the range request; restarting %s from zero", url, name)
            offset = 0
        total = _total_size(response, offset)
        if size is not None and total is not None and total != size:
            raise ChecksumError(
                f"{url} has {total} bytes but {name} should have {size}; a different file? "
                "(give its MD5 with --md5/checksums to accept a mirror's copy)"
            )
        mode = "ab" if offset else "wb"
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            disable=not progress,
            leave=False,
        )
        try:
            with part.open(mode) as f, bar:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            got = part.stat().st_size
            raise DownloadError(
                f"download of {url} stopped after {got} bytes ({e!r}); run again to resume from "
                f"{part}"
            ) from e
    got = part.stat().st_size
    if total is not None and got != total:
        raise DownloadError(
            f"download of {url} stopped after {got} of {total} bytes; run again to resume from {part}"
        )
    return _finish(part, dest, name, size if size is not None else total, md5)


def _finish(part: Path, dest: Path, name: str, size: int | None, md5: str | None) -> Path:
    """Verify a complete part file, then rename it to ``dest``; delete it if it is bad."""
    try:
        _verify(part, name, size, md5)
    except ChecksumError as e:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{e}; the download was deleted, run again to fetch it anew") from e
    if md5 is None:
        log.warning("no MD5 known for %s: checked its size only", name)
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------- COCO
def _extract(archive: Path, target: Path, progress: bool) -> None:
    """Unpack a zip into ``target`` (zipfile drops absolute and '..' member paths)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in tqdm(
                zf.infolist(),
                desc=f"unpack {archive.name}",
                unit="file",
                disable=not progress,
                leave=False,
            ):
                zf.extract(member, target)
    except zipfile.BadZipFile as e:
        raise DownloadError(
            f"{archive} is not a valid zip archive ({e}); delete it and run again"
        ) from e


def download_coco(
    root: str | os.PathLike,
    split: str = "val2017",
    *,
    base_url: str = DEFAULT_BASE_URL,
    annotations: bool = True,
    checksums: Mapping[str, str | None] | None = None,
    keep_archives: bool = False,
    timeout: float = 60.0,
    progress: bool = True,
) -> CocoLayout:
    """Download and unpack COCO ``split`` (and its annotations) under ``root``; return the layout.

    ``checksums`` maps an archive name (``"val2017.zip"``, ``"annotations_trainval2017.zip"``)
    to an MD5 that replaces the official entry (then the size comes from the server), or to
    None to check the size only. Archives are deleted after unpacking unless
    ``keep_archives``. An archive already unpacked (marker in ``root/downloads`` and its
    files present) is skipped. ``annotation_file`` of the result is None when the split has
    no instances file (test2017) or it was neither requested nor already there.
    """
    if split not in SPLITS:
        raise ValueError(f"download_coco: unknown split {split!r}; choose one of {SPLITS}")
    root = Path(root)
    downloads = root / "downloads"
    checksums = dict(checksums or {})
    images_url, annotations_url = _urls(base_url, split)
    layout = coco_layout(root, split)
    # (archive URL, folder it unpacks into, a path that exists once it is unpacked)
    jobs = [(images_url, root / "images", layout.images_dir)]
    if annotations:
        unpacked = layout.annotation_file or root / "annotations" / "image_info_test2017.json"
        jobs.append((annotations_url, root, unpacked))
    for url, target, unpacked in jobs:
        name = url.rsplit("/", 1)[-1]
        marker = downloads / f".{name}.unpacked"
        if marker.exists() and unpacked.exists():
            log.info("%s already unpacked to %s", name, unpacked)
            continue
        if name in checksums:
            known = KnownFile(None, checksums[name])
        else:
            known = OFFICIAL_FILES.get(name, KnownFile(None, None))
        archive = download_file(
            url,
            downloads / name,
            size=known.size,
            md5=known.md5,
            timeout=timeout,
            progress=progress,
        )
        _extract(archive, target, progress)
        if not unpacked.exists():
            raise DownloadError(
                f"{archive} did not unpack to {unpacked}: not the expected archive?"
            )
        marker.touch()
        if not keep_archives:
            archive.unlink()

    if layout.annotation_file is not None and not layout.annotation_file.is_file():
        layout = CocoLayout(layout.images_dir, None)  # annotations not requested, not there
    return layout


# --------------------------------------------------------------------------- CLI
def _md5_option(text: str) -> tuple[str, str | None]:
    """Parse ``NAME=HEX`` or ``NAME=skip`` of ``--md5``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--md5 expects NAME=HEX or NAME=skip, got {text!r}")
    if value.lower() == "skip":
        return name, None
    if not re.fullmatch(r"[0-9a-fA-F]{32}", value):
        raise argparse.ArgumentTypeError(f"--md5 {name}: {value!r} is not a 32-digit hex MD5")
    return name, value.lower()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``elastic-lab download-coco``."""
    parser.add_argument(
        "--root", required=True, type=Path, help="data root (ROOT/images, ROOT/annotations)"
    )
    parser.add_argument("--split", default="val2017", choices=SPLITS)
    parser.add_argument(
        "--annotations",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also fetch the annotations archive (default: yes)",
    )
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="server or mirror root")
    parser.add_argument(
        "--md5",
        type=_md5_option,
        action="append",
        default=[],
        metavar="NAME=HEX",
        help="expected MD5 of an archive (e.g. a mirror's copy); NAME=skip checks size only",
    )
    parser.add_argument(
        "--keep-archives", action="store_true", help="keep the zips in ROOT/downloads"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")


def run(args: argparse.Namespace) -> int:
    """Run ``download-coco``; return 0 on success, 1 with the reason on stderr otherwise."""
    try:
        layout = download_coco(
            args.root,
            args.split,
            base_url=args.base_url,
            annotations=args.annotations,
            checksums=dict(args.md5),
            keep_archives=args.keep_archives,
            timeout=args.timeout,
        )
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"images: {layout.images_dir}")
    if layout.annotation_file is not None:
        print(f"annotations: {layout.annotation_file}")
    return 0
