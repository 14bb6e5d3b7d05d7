"""Download, verify, extract: end to end against a local HTTP server on 127.0.0.1 (never the network)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import stat
import tarfile
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from datamodules.download import Remote, cache_root, extract, fetch
from datamodules.text import WikiText2
from seqstab.core.errors import DataError

SPLIT_TEXT = {
    "train": " the cat sat on the mat \n a dog sat \n",
    "valid": " the dog sat \n",
    "test": " a cat \n",
}


class _Server:
    """Serves a directory on 127.0.0.1 and records every requested path."""

    def __init__(self, root: Path):
        requests = self.requests = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 must not go through a proxy
    root = tmp_path / "www"
    root.mkdir()
    srv = _Server(root)
    srv.root = root
    yield srv
    srv.close()


def _tar_gz(path: Path, entries: dict[str, str]) -> str:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in entries.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*")] if folder.exists() else []


def test_fetch_verifies_then_hits_the_cache_without_a_request(server, tmp_path):
    (server.root / "data.txt").write_bytes(b"hello\n")
    remote = Remote(server.url("data.txt"), sha256=hashlib.sha256(b"hello\n").hexdigest())
    dest = tmp_path / "cache" / "data.txt"
    assert fetch(remote, dest) == dest and dest.read_bytes() == b"hello\n"
    assert server.requests == ["/data.txt"]
    assert fetch(remote, dest) == dest
    assert server.requests == ["/data.txt"]  # second call: cache hit, no request
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data.txt"]  # no temporary file left


def test_checksum_mismatch_is_one_line_and_leaves_nothing(server, tmp_path):
    (server.root / "data.txt").write_bytes(b"tampered\n")
    remote = Remote(server.url("data.txt"), sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch(remote, cache / "data.txt")
    message = str(err.value)
    assert "\n" not in message and "checksum mismatch" in message and remote.url in message and "0" * 64 in message
    assert _leftovers(cache) == []


def test_md5_checked_when_no_sha256(server, tmp_path):
    (server.root / "a.txt").write_bytes(b"x")
    good = Remote(server.url("a.txt"), md5=hashlib.md5(b"x").hexdigest())
    assert fetch(good, tmp_path / "ok" / "a.txt").read_bytes() == b"x"
    with pytest.raises(DataError, match="md5"):
        fetch(Remote(server.url("a.txt"), md5="f" * 32), tmp_path / "bad" / "a.txt")
    assert _leftovers(tmp_path / "bad") == []


def test_http_error_is_one_line_data_error(server, tmp_path):
    with pytest.raises(DataError) as err:
        fetch(Remote(server.url("missing.txt")), tmp_path / "c" / "missing.txt")
    assert "could not download" in str(err.value) and "missing.txt" in str(err.value) and "\n" not in str(err.value)
    assert _leftovers(tmp_path / "c") == []


def test_extract_tar_and_zip(tmp_path):
    tar = tmp_path / "a.tar.gz"
    _tar_gz(tar, {"corpus/train.txt": "x\n"})
    assert (extract(tar, tmp_path / "out_tar") / "corpus" / "train.txt").read_text() == "x\n"
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("corpus/valid.txt", "y\n")
    assert (extract(zpath, tmp_path / "out_zip") / "corpus" / "valid.txt").read_text() == "y\n"


@pytest.mark.parametrize("bad_name", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_path_traversal_entry_rejected_nothing_extracted(tmp_path, bad_name, kind):
    archive = tmp_path / f"bad.{kind}"
    if kind == "tar":
        _tar_gz(archive, {"train.txt": "x\n", bad_name: "boom\n"})
    else:
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("train.txt", "x\n")
            zf.writestr(bad_name, "boom\n")
    target = tmp_path / "sub" / "out"
    with pytest.raises(DataError) as err:
        extract(archive, target)
    message = str(err.value)
    assert "\n" not in message and bad_name in message and "outside" in message
    assert not target.exists() and _leftovers(tmp_path / "sub") == []
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "sub" / "evil.txt").exists()


def test_tar_symlink_rejected(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("train.txt")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DataError, match="link"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQSTAB_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("SEQSTAB_CACHE")
    assert cache_root() == Path.home() / ".cache" / "seqstab"


def test_wikitext2_downloads_published_files_into_the_cache_once(server, tmp_path, monkeypatch):
    """The default path: no data_dir, files fetched into $SEQSTAB_CACHE/wikitext-2, verified, reused."""
    remotes = {}
    for split, text in SPLIT_TEXT.items():
        (server.root / f"{split}.txt").write_text(text)
        remotes[split] = Remote(server.url(f"{split}.txt"), sha256=hashlib.sha256(text.encode()).hexdigest())
    monkeypatch.setattr(WikiText2, "remotes", remotes)
    monkeypatch.setenv("SEQSTAB_CACHE", str(tmp_path / "cache"))
    dm = WikiText2(batch_size=2, eval_batch_size=1, seq_len=3)
    assert dm.spec.vocab_size == 2 + 7  # <unk> <eos> + the cat sat on mat a dog
    assert sorted(p.name for p in (tmp_path / "cache" / "wikitext-2").iterdir()) == [
        "test.txt",
        "train.txt",
        "valid.txt",
    ]
    assert len(server.requests) == 3
    assert WikiText2(batch_size=2).spec.vocab_size == 9
    assert len(server.requests) == 3  # cache hit: files and tokens


def test_wikitext2_from_an_archive_url(server, tmp_path):
    sha = _tar_gz(server.root / "wt2.tar.gz", {f"wikitext-2/wiki.{s}.tokens": t for s, t in SPLIT_TEXT.items()})
    dm = WikiText2(data_dir=str(tmp_path / "wt2"), url=server.url("wt2.tar.gz"), sha256=sha, cache_dir=str(tmp_path))
    assert dm.vocab.itos[:4] == ["<unk>", "<eos>", "the", "sat"]  # by count, ties by first appearance
    assert server.requests == ["/wt2.tar.gz"]
    with pytest.raises(DataError, match="checksum mismatch"):
        WikiText2(data_dir=str(tmp_path / "other"), url=server.url("wt2.tar.gz"), sha256="1" * 64).prepare_data()
    assert _leftovers(tmp_path / "other") == [tmp_path / "other" / "downloads"]  # the folder, no file in it


def test_a_body_shorter_than_its_content_length_is_an_error_and_caches_nothing(tmp_path, monkeypatch):
    """Without a checksum to catch it: a server that announces 1,000 bytes and sends 5, then closes."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"hello")
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Short)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/data.bin"
        with pytest.raises(DataError) as err:
            fetch(Remote(url), tmp_path / "cache" / "data.bin")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "could not download" in str(err.value) and "\n" not in str(err.value)
    assert _leftovers(tmp_path / "cache") == []


def test_the_process_that_loses_an_extraction_race_uses_the_winners_result(tmp_path, monkeypatch):
    """Two processes extract one archive into one cache at once: the second rename finds the first's directory.
    The race is replayed in order: the winner's directory appears just before this process renames its own."""
    import os

    from datamodules import download

    archive = tmp_path / "a.tar.gz"
    _tar_gz(archive, {"corpus/train.txt": "x\n"})
    dest = tmp_path / "cache" / "corpus"
    real_replace, raced = os.replace, []

    def the_other_process_won(src, dst):
        if Path(dst) == dest and not raced:
            raced.append(True)
            extract(archive, dest)  # the winner finishes first
        return real_replace(src, dst)

    monkeypatch.setattr(download.os, "replace", the_other_process_won)
    assert (extract(archive, dest) / "corpus" / "train.txt").read_text() == "x\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["corpus"]  # the loser's copy is gone


def _plain_mode() -> int:
    umask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def test_a_download_is_written_like_any_seqstab_file_and_spares_another_writers_part(server, tmp_path):
    """Through core.io.atomic_file: the mode a plain open gives (a shared cache stays readable, not mkstemp's 0o600),
    and a download of the same file under way in another process keeps its temporary file."""
    (server.root / "data.txt").write_bytes(b"hello\n")
    dest = tmp_path / "cache" / "data.txt"
    dest.parent.mkdir()
    other = dest.parent / ".data.txt.x1y2z3.part"  # another process, mid-download
    other.write_bytes(b"hel")
    fetch(Remote(server.url("data.txt")), dest)
    assert dest.read_bytes() == b"hello\n" and stat.S_IMODE(dest.stat().st_mode) == _plain_mode()
    assert other.read_bytes() == b"hel"
