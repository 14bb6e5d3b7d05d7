"""Download, verify and extract the files a datamodule fetches on first use.

Nothing half-written ever carries a final name: a download goes to a hidden temporary file beside its
destination and is renamed only after its length (``Content-Length``) and its checksum matched; an archive is
extracted into a hidden temporary directory and renamed only after every entry was checked to stay inside it (when
two processes extract the same archive at once, the one that loses the race uses the winner's directory). A
failure leaves nothing behind,
so a file or directory with its final name in the cache is complete and verified (that is the cache hit).

Where files go: ``cache_dir`` when given, else ``$SEQSTAB_CACHE``, else ``~/.cache/seqstab``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from seqstab.core.errors import DataError
from seqstab.core.io import atomic_file

__all__ = ["CACHE_ENV", "Remote", "cache_root", "extract", "fetch", "file_digest"]

CACHE_ENV = "SEQSTAB_CACHE"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$SEQSTAB_CACHE``, else ``~/.cache/seqstab``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "seqstab"


@dataclass(frozen=True)
class Remote:
    """A published file and the checksum it must have.

    Args:
        url: Where to download it from (``http(s)://`` or ``file://``).
        sha256: Expected SHA-256 hex digest; None skips the check unless ``md5`` is given.
        md5: Expected MD5 hex digest, only for files whose publisher gives no SHA-256.
    """

    url: str
    sha256: str | None = None
    md5: str | None = None

    @property
    def filename(self) -> str:
        return PurePosixPath(urllib.request.urlparse(self.url).path).name or "download"


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def progress(total: int | None, what: str) -> tqdm:
    """A progress bar in bytes on stderr (size, rate, time left); silent when stderr is not a terminal."""
    return tqdm(
        total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024, disable=None, leave=False, file=sys.stderr
    )


def fetch(remote: Remote, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``remote`` to ``dest`` unless ``dest`` exists; verify its checksum before giving it that name.

    Raises:
        DataError: the download failed or the checksum did not match (nothing is left at ``dest``).
    """
    dest = Path(dest)
    if dest.is_file():
        return dest  # only verified downloads are ever renamed to a final name
    try:
        with atomic_file(dest, sweep=False) as out, urllib.request.urlopen(remote.url, timeout=timeout) as response:
            _receive(remote, response, out, dest)
    except DataError:
        raise
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(
            f"could not download {remote.url}: {reason}; place the file at {dest} yourself or use a local copy"
        ) from err
    return dest


def _receive(remote: Remote, response, out, dest: Path) -> None:
    """Copy the body of ``response`` to ``out``, then check its length and checksums (a :class:`DataError` if not:
    the file is not kept)."""
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    received = 0
    length = response.headers.get("Content-Length")
    total = int(length) if length is not None and length.isdigit() else None
    with progress(total, f"downloading {remote.filename}") as bar:
        for block in iter(lambda: response.read(1 << 16), b""):
            out.write(block)
            received += len(block)
            bar.update(len(block))
            for digest in digests.values():
                digest.update(block)
    if total is not None and received != total:
        raise DataError(
            f"could not download {remote.url}: the server announced {total:,} bytes and sent "
            f"{received:,} (the connection broke?); nothing was written to {dest.parent}"
        )
    for algorithm in ("sha256", "md5"):
        expected = getattr(remote, algorithm)
        got = digests[algorithm].hexdigest()
        if expected is not None and got != expected.lower():
            raise DataError(
                f"checksum mismatch for {remote.url}: {algorithm} is {got}, expected {expected}; "
                f"nothing was written to {dest.parent}"
            )


def extract(archive: Path, dest: Path) -> Path:
    """Extract a zip or tar archive into the directory ``dest`` unless it exists.

    Every entry is checked before anything is written: an absolute path, a ``..`` component, a link or a
    device entry is rejected and nothing is extracted.

    Raises:
        DataError: not an archive, or an unsafe entry (the message names it).
    """
    archive, dest = Path(archive), Path(dest)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    _check_entry(archive, name, dest)
                zf.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for member in members:
                    _check_entry(archive, member.name, dest)
                    if not (member.isfile() or member.isdir()):
                        raise DataError(
                            f"{archive.name}: entry {member.name!r} is a link or device; nothing was extracted"
                        )
                tf.extractall(tmp, members=members, filter="data")
        else:
            raise DataError(f"{archive}: not a zip or tar archive")
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not another process's finished extraction: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race: its result is the same archive's
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _check_entry(archive: Path, name: str, dest: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DataError(f"{archive.name}: entry {name!r} would extract outside {dest}; nothing was extracted")
