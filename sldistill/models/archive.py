"""Downloading and unpacking archives safely (the published teacher archive).

:func:`fetch` downloads into a temporary file, checking the size against ``Content-Length``
and, when given, the SHA-256; :func:`check_members` refuses any tar member that would land
outside the target (absolute paths, ``..``, links pointing out, devices); :func:`extract_archive`
checks every member before unpacking anything. Failures raise :class:`ArchiveError`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

__all__ = ["ArchiveError", "fetch", "check_members", "extract_archive", "file_sha256"]


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of the file at ``path`` (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArchiveError(ValueError):
    """A download or archive that is incomplete, does not match its hash, or is unsafe to unpack."""


def fetch(url: str, folder: str | os.PathLike, *, sha256: str | None = None, progress: bool = True,
          timeout: float = 60.0) -> Path:
    """Download ``url`` into a new temporary file in ``folder`` and return its path.

    The size is checked against ``Content-Length`` when the server sends one and the SHA-256
    against ``sha256`` when given. On any failure the partial file is removed; network and
    integrity failures raise :class:`ArchiveError` (errors writing the file, e.g. a full disk,
    propagate as they are). The caller renames or removes the file."""
    import urllib.request

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    digest, got = hashlib.sha256(), 0
    out = os.fdopen(fd, "wb")
    try:
        try:
            resp = urllib.request.urlopen(url, timeout=timeout)
        except OSError as exc:  # HTTP errors, no route, DNS, timeouts
            raise ArchiveError(f"cannot download {url}: {exc}") from exc
        with out, resp:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            from tqdm import tqdm

            with tqdm(total=expected, unit="B", unit_scale=True, desc=os.path.basename(urlparse(url).path) or url,
                      disable=not progress, leave=False) as bar:
                while True:
                    try:
                        chunk = resp.read(1 << 20)
                    except Exception as exc:  # http.client.IncompleteRead, connection reset, ...
                        raise ArchiveError(f"{url}: download broke off after {got} bytes "
                                           f"({type(exc).__name__}: {exc})") from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and got != expected:
            raise ArchiveError(f"{url}: incomplete download, {got} of {expected} bytes")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise ArchiveError(f"{url}: SHA-256 {digest.hexdigest()} differs from the expected {sha256.lower()}")
    except BaseException:
        out.close()
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _inside(base: PurePosixPath, rel: PurePosixPath) -> bool:
    parts: list[str] = []
    for part in (base / rel).parts:
        if part == "..":
            if not parts:
                return False
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return parts[: len(base.parts)] == list(base.parts) and len(parts) >= len(base.parts)


def check_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members of ``tar`` if every one stays inside the target folder; else :class:`ArchiveError`
    naming the first that does not: an absolute path, a ``..`` component, a link whose target
    lies outside, or anything but files, folders and links (devices, FIFOs)."""
    members = tar.getmembers()
    for m in members:
        name = PurePosixPath(m.name.replace("\\", "/"))
        if name.is_absolute() or m.name.startswith(("/", "\\")) or (len(m.name) > 1 and m.name[1] == ":"):
            raise ArchiveError(f"archive member {m.name!r} has an absolute path: refused")
        if ".." in name.parts:
            raise ArchiveError(f"archive member {m.name!r} has a '..' component: refused")
        if m.issym() or m.islnk():
            target = PurePosixPath(m.linkname.replace("\\", "/"))
            base = name.parent if m.issym() else PurePosixPath()
            if target.is_absolute() or not _inside(PurePosixPath("root"), PurePosixPath(*base.parts, *target.parts)):
                raise ArchiveError(f"archive member {m.name!r} links to {m.linkname!r}, outside the target: refused")
        elif not (m.isfile() or m.isdir()):
            raise ArchiveError(f"archive member {m.name!r} is not a file, folder or link: refused")
    return members


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Unpack a tar archive into ``dest`` safely and return the files written.

    Every member is checked first (:func:`check_members`; nothing is written if one fails),
    then unpacked (with tarfile's ``data`` filter where Python has it) into a staging folder
    inside ``dest`` and moved into place file by file."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        tar = tarfile.open(archive)
    except tarfile.TarError as exc:
        raise ArchiveError(f"{archive}: not a readable tar archive ({exc})") from exc
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    written: list[Path] = []
    try:
        with tar:
            members = check_members(tar)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, members=members, filter="data")
            else:  # Python without extraction filters: the checks above are the guard
                tar.extractall(staging, members=members)
        for path in sorted(staging.rglob("*")):
            target = dest / path.relative_to(staging)
            if path.is_dir() and not path.is_symlink():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                written.append(target)
    except tarfile.TarError as exc:
        raise ArchiveError(f"{archive}: cannot unpack ({exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
