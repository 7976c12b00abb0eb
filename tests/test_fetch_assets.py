"""tools/fetch_assets.py against a fake npm registry on 127.0.0.1 (no network)."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tools import fetch_assets


def tarball(files: dict[str, bytes]) -> bytes:
    """An npm-style .tgz: every file under package/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def integrity(data: bytes) -> str:
    return base64.b64encode(hashlib.sha512(data).digest()).decode()


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def registry(tmp_path):
    """A folder served over HTTP on 127.0.0.1: (folder, base URL)."""
    root = tmp_path / "registry"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def publish(root: Path, name: str, version: str, data: bytes) -> None:
    folder = root / name / "-"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-{version}.tgz").write_bytes(data)


FILES = {"encoder.json": b'{"a": 0}', "vocab.bpe": b"#version: 0.2\n",
         "LICENSE": b"MIT", "index.js": b"// not kept"}


def test_fetch_checks_the_hash(registry):
    root, url = registry
    data = tarball(FILES)
    publish(root, "fake", "1.0.0", data)
    assert fetch_assets.fetch("fake", "1.0.0", integrity(data), url) == data
    assert fetch_assets.fetch("fake", "1.0.0", "sha512-" + integrity(data), url) == data
    with pytest.raises(SystemExit, match="fake@1.0.0: sha512 mismatch"):
        fetch_assets.fetch("fake", "1.0.0", integrity(b"other bytes"), url)


def test_install_unpacks_only_the_kept_files_once(registry, tmp_path, capsys):
    root, url = registry
    data = tarball(FILES)
    publish(root, "fake", "1.0.0", data)
    keep = ["encoder.json", "vocab.bpe", "LICENSE"]
    package = ("fake", "1.0.0", integrity(data), keep)
    target = tmp_path / "gpt2"
    assert fetch_assets.install(package, target, url)
    assert sorted(p.name for p in target.iterdir()) == [
        ".version-1.0.0", "LICENSE", "encoder.json", "vocab.bpe"]
    assert (target / "vocab.bpe").read_bytes() == FILES["vocab.bpe"]
    assert not fetch_assets.install(package, target, url)  # already there
    assert "fetched fake@1.0.0" in capsys.readouterr().out


def test_a_tampered_tarball_leaves_the_folder_alone(registry, tmp_path):
    root, url = registry
    good = tarball(FILES)
    publish(root, "fake", "1.0.0", tarball({**FILES, "vocab.bpe": b"evil"}))
    target = tmp_path / "gpt2"
    target.mkdir()
    (target / "vocab.bpe").write_bytes(b"old")
    package = ("fake", "1.0.0", integrity(good), ["vocab.bpe"])
    with pytest.raises(SystemExit, match="sha512 mismatch, refusing to unpack"):
        fetch_assets.install(package, target, url)
    assert (target / "vocab.bpe").read_bytes() == b"old"
    assert not (target / ".version-1.0.0").exists()


def test_main_fetches_site_assets_and_the_vocabulary(registry, tmp_path, monkeypatch):
    root, url = registry
    site_data = tarball({"dist/site.min.js": b"js", "README.md": b"no"})
    vocab_data = tarball(FILES)
    publish(root, "site", "2.0.0", site_data)
    publish(root, "vocab", "1.1.4", vocab_data)
    monkeypatch.setattr(fetch_assets, "PACKAGES",
                        [("site", "2.0.0", integrity(site_data), ["dist/site.min.js"])])
    monkeypatch.setattr(fetch_assets, "VOCABULARY",
                        ("vocab", "1.1.4", integrity(vocab_data), ["encoder.json"]))
    fetch_assets.main(tmp_path / "vendor", tmp_path / "gpt2", url)
    assert (tmp_path / "vendor" / "site" / "site.min.js").read_bytes() == b"js"
    assert (tmp_path / "vendor" / ".fetched").exists()
    assert (tmp_path / "gpt2" / "encoder.json").read_bytes() == FILES["encoder.json"]


def test_the_pins_are_sha512_hashes():
    pins = [*fetch_assets.PACKAGES, fetch_assets.VOCABULARY]
    for name, version, digest, keep in pins:
        assert len(base64.b64decode(digest)) == 64, name
        assert version.count(".") == 2 and keep, name
    assert fetch_assets.VOCAB_DIR == fetch_assets.ROOT / "data" / "gpt2"
