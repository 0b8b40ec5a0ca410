"""``sldistill teachers list|download|verify`` against a local HTTP server on 127.0.0.1 serving
generated archives (tiny real teacher checkpoints): a good one, a truncated one, one whose member
escapes the target; plus the member checks and the verify step on generated CIFAR-100 files."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
from conftest import run_subcommand
from datagen import write_cifar100, write_published_teacher

from sldistill.models import teachers
from sldistill.models.teachers import ArchiveError, check_members

NAMES = ("resnet56", "wrn_40_2")


_run = run_subcommand


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """cifar_teachers.tar with two real (randomly initialised) published-format teachers."""
    src = tmp_path_factory.mktemp("src")
    members = {}
    for name in NAMES:
        path = write_published_teacher(src, name)
        members[path.relative_to(src).as_posix()] = path.read_bytes()
    return _tar(members)


@pytest.fixture
def server(archive: bytes) -> Iterator[str]:
    """A local HTTP server: /cifar_teachers.tar, /truncated.tar (half the bytes of its
    Content-Length), /escape.tar (a ../ member); stopped at the end."""
    evil = _tar({"cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth": b"x" * 10, "../evil.txt": b"owned"})
    files = {"/cifar_teachers.tar": (archive, len(archive)), "/truncated.tar": (archive[: len(archive) // 2],
                                                                                len(archive)),
             "/escape.tar": (evil, len(evil))}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            if self.path not in files:
                self.send_error(404)
                return
            body, length = files[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/x-tar")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_list_shows_every_published_teacher(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_published_teacher(tmp_path / "t", "resnet56")
    assert _run(["teachers", "list", "--root", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    for t in teachers.CIFAR_TEACHERS.values():
        line = next(ln for ln in out.splitlines() if ln.startswith(t.name + " "))
        assert f"{t.top1:.2f}" in line and (" yes " in line) == (t.name == "resnet56")
    assert "1 of 6 present" in out and "sldistill teachers download" in out
    # the root from DISTILLER.TEACHER_ROOT, as teacher_root() resolves it
    assert _run(["teachers", "list", "--json", "DISTILLER.TEACHER_ROOT", str(tmp_path / "t")]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert {r["name"]: r["present"] for r in rows} == {n: n == "resnet56" for n in teachers.CIFAR_TEACHERS}
    assert {r["name"]: r["top1"] for r in rows}["resnet32x4"] == 79.42


def test_download_unpacks_and_checks_size_and_hash(tmp_path: Path, server: str, archive: bytes) -> None:
    root = tmp_path / "teachers"
    good = hashlib.sha256(archive).hexdigest()
    with pytest.raises(ArchiveError, match="SHA-256"):
        _run(["teachers", "download", "--url", f"{server}/cifar_teachers.tar", "--root", str(root), "--sha256",
              "0" * 64, "--no-progress"])
    assert _all_files(root) == []  # a wrong hash leaves nothing behind
    assert _run(["teachers", "download", "--url", f"{server}/cifar_teachers.tar", "--root", str(root), "--sha256",
                 good.upper(), "--no-progress"]) == 0
    unpacked = [f"cifar_teachers/{n}_vanilla/ckpt_epoch_240.pth" for n in NAMES]
    assert _all_files(root) == [teachers.DOWNLOAD_RECORD, *unpacked]
    assert teachers.teacher_checkpoint_path("resnet56", root).is_file()
    # the record: what was fetched, the archive's size and hash, each file's hash
    record = json.loads((root / teachers.DOWNLOAD_RECORD).read_text())
    assert record["url"] == f"{server}/cifar_teachers.tar"
    assert (record["archive_bytes"], record["archive_sha256"]) == (len(archive), good)
    assert record["files"] == {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in unpacked}
    # without --sha256 (the size is still checked), keeping the archive
    root2 = tmp_path / "t2"
    assert _run(["teachers", "download", "--url", f"{server}/cifar_teachers.tar", "--root", str(root2),
                 "--keep-archive", "--no-progress"]) == 0
    assert (root2 / "cifar_teachers.tar").read_bytes() == archive
    assert len(_all_files(root2)) == 4  # two teachers, the archive, the record


def test_truncated_download_is_an_error_and_leaves_nothing(tmp_path: Path, server: str) -> None:
    root = tmp_path / "teachers"
    with pytest.raises(ArchiveError, match="incomplete|broke off"):
        _run(["teachers", "download", "--url", f"{server}/truncated.tar", "--root", str(root), "--no-progress"])
    assert _all_files(root) == []
    with pytest.raises(ArchiveError, match="cannot download .*404"):  # a one-line error, nothing written
        _run(["teachers", "download", "--url", f"{server}/missing.tar", "--root", str(root), "--no-progress"])
    assert _all_files(root) == []


def test_escaping_member_is_refused_and_nothing_written(tmp_path: Path, server: str) -> None:
    root = tmp_path / "a" / "teachers"
    with pytest.raises(ArchiveError, match=r"'\.\.'"):
        _run(["teachers", "download", "--url", f"{server}/escape.tar", "--root", str(root), "--no-progress"])
    assert _all_files(tmp_path) == []  # neither the good member nor ../evil.txt, nor a partial file


def _tar_with(info: tarfile.TarInfo) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(info, io.BytesIO(b"") if info.isfile() else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf)


@pytest.mark.parametrize("name,kind,link,ok", [
    ("cifar_teachers/a.pth", tarfile.REGTYPE, "", True),
    ("/etc/passwd", tarfile.REGTYPE, "", False),
    ("cifar_teachers/../../x", tarfile.REGTYPE, "", False),
    ("cifar_teachers/ln", tarfile.SYMTYPE, "a.pth", True),
    ("cifar_teachers/ln", tarfile.SYMTYPE, "../../outside", False),
    ("cifar_teachers/ln", tarfile.SYMTYPE, "/etc/passwd", False),
    ("cifar_teachers/hard", tarfile.LNKTYPE, "../x", False),
    ("cifar_teachers/fifo", tarfile.FIFOTYPE, "", False),
])
def test_member_checks(name: str, kind: bytes, link: str, ok: bool) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    tar = _tar_with(info)
    if ok:
        assert [m.name for m in check_members(tar)] == [name]
    else:
        with pytest.raises(ArchiveError, match="refused"):
            check_members(tar)


def test_verify_loads_files_and_compares_top1(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from sldistill.engine.config import load_config
    from sldistill.engine.run import evaluate_checkpoint

    root = tmp_path / "teachers"
    assert _run(["teachers", "verify", "--root", str(root)]) == 1  # nothing present
    assert "no published teacher present" in capsys.readouterr().out
    path = write_published_teacher(root, "resnet56")
    opts = ["DATASET.NUM_WORKERS", "0", "EXPERIMENT.DEVICE", "cpu", "DATASET.TEST.BATCH_SIZE", "20"]
    # no data: the file is checked to load, the accuracy is not
    assert _run(["teachers", "verify", "--root", str(root), "DATASET.ROOT", str(tmp_path / "none"), *opts]) == 0
    out = capsys.readouterr().out
    assert "resnet56     loads" in out and "top-1 not checked" in out and "vgg13        not present" in out
    data = write_cifar100(tmp_path / "data", n_train=10, n_test=20)
    verify = ["teachers", "verify", "--root", str(root), "DATASET.ROOT", str(data), *opts]
    assert _run(verify) == 1  # random weights: far from the published top-1
    assert "DIFFERS by more than 0.2" in capsys.readouterr().out
    cfg = load_config(None, ["DATASET.ROOT", str(data), "DATASET.TYPE", "cifar100", *opts])
    top1 = evaluate_checkpoint(cfg, "resnet56", path)["top1"]
    # pretend the published number is what this file scores + 0.15 (inside the 0.2 tolerance)
    monkeypatch.setitem(teachers.CIFAR_TEACHERS, "resnet56",
                        replace(teachers.CIFAR_TEACHERS["resnet56"], top1=top1 + 0.15))
    assert _run(verify) == 0
    out = capsys.readouterr().out
    assert "resnet56     loads; top-1" in out and "-0.15): ok" in out
    bad = write_published_teacher(root, "wrn_40_2")
    bad.write_bytes(b"not a checkpoint")
    assert _run(verify) == 1
    assert "wrn_40_2     FAILS to load" in capsys.readouterr().out


def test_verify_finds_a_file_changed_since_download(tmp_path: Path, server: str, archive: bytes,
                                                    capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "teachers"
    assert _run(["teachers", "download", "--url", f"{server}/cifar_teachers.tar", "--root", str(root),
                 "--no-progress"]) == 0
    assert f"archive SHA-256 {hashlib.sha256(archive).hexdigest()}" in capsys.readouterr().err
    verify = ["teachers", "verify", "--root", str(root), "DATASET.ROOT", str(tmp_path / "none")]
    assert _run(verify) == 0
    out = capsys.readouterr().out
    assert "resnet56     loads" in out and "wrn_40_2     loads" in out and hashlib.sha256(archive).hexdigest() in out
    path = teachers.teacher_checkpoint_path("wrn_40_2", root)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one bit flipped: the file may still load, its hash differs
    path.write_bytes(bytes(data))
    assert _run(verify) == 1
    out = capsys.readouterr().out
    assert "wrn_40_2     CHANGED" in out and "resnet56     loads" in out
    (root / teachers.DOWNLOAD_RECORD).write_text("{not json")
    with pytest.raises(ValueError, match="not a download record"):
        _run(verify)
