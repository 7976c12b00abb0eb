"""`download`: against a local HTTP server on 127.0.0.1 that imitates the hub.

The server serves tiny checkpoints the way huggingface.co serves models: small
files straight from git (ETag = git blob id), the weights as LFS files (HEAD
answers 302 with X-Linked-Etag = SHA-256 and X-Linked-Size, GET redirects to a
storage URL that honours Range). It can cut a transfer short, serve corrupted
bytes, or answer 404. Every model `download` offers is served under its own
repository, in its own layout, scaled down (tests/llama_layouts.py): GPT-2's
files, SmolLM2's byte-level tokenizer.json with tied BF16 weights, TinyLlama's
SentencePiece-style tokenizer.json with its weights in shards. Expected hashes
are computed here with hashlib and git's blob format; nothing touches the
internet, so the real hub's answers are only imitated.
"""

from __future__ import annotations

import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import minigpt
from minigpt.__main__ import DOWNLOADS, main
from minigpt.download import (
    MODELS,
    DownloadError,
    download_model,
    file_digest,
    progress_bar,
    remote_file,
)
from tests.llama_layouts import write_llama
from tests.test_cli import write_checkpoint

REPO = "/openai-community/gpt2/resolve/main/"


class Hub(BaseHTTPRequestHandler):
    repos: dict[str, dict[str, bytes]] = {}  # "org/name" -> file name -> bytes
    files: dict[str, bytes] = {}  # GPT-2's, the repository most tests use
    cut_after: int | None = None  # close the next weights transfer after N bytes
    corrupt = False  # serve the weights with one byte flipped
    ignore_range = False  # answer a Range request with the whole file (200)
    missing: set[str] = set()
    ranges: list[str | None] = []

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_HEAD(self):
        self.answer(head=True)

    def do_GET(self):
        self.answer(head=False)

    def answer(self, head: bool):
        if self.path.startswith("/cdn/"):
            repo, _, name = self.path.removeprefix("/cdn/").rpartition("/")
            return self.send_lfs(self.repos[repo][name], head)
        if self.path.startswith("/gpt2/"):  # an old name: the hub redirects
            self.send_response(307)
            self.send_header("Location", self.path.replace("/gpt2/", REPO[:-13]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        repo, _, name = self.path.removeprefix("/").partition("/resolve/main/")
        files = self.repos.get(repo, {})
        if name not in files or name in self.missing:
            self.send_error(404, "Entry not found")
            return
        data = files[name]
        if name.endswith(".safetensors"):  # weights live in LFS
            self.send_response(302)
            self.send_header("Location", f"/cdn/{repo}/{name}")
            self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        self.send_response(200)
        self.send_header("ETag", f'"{blob}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def send_lfs(self, original: bytes, head: bool):
        data = bytearray(original)
        if Hub.corrupt:
            data[len(data) // 2] ^= 0xFF
        start, asked = 0, self.headers.get("Range")
        Hub.ranges.append(asked)
        if asked and not Hub.ignore_range:
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/"
                                              f"{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if head:
            return
        body = bytes(data[start:])
        if Hub.cut_after is not None:
            body, Hub.cut_after = body[:Hub.cut_after], None  # then hang up
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("source"), seed=4)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """A scaled-down checkpoint in the layout of every model `download` offers."""
    made = tmp_path_factory.mktemp("layouts")
    return {
        "gpt2-medium": write_checkpoint(made / "gpt2-medium", seed=5),
        "smollm2-135m": write_llama(made / "smollm2", "byte-level"),
        "smollm2-135m-instruct": write_llama(made / "smollm2-instruct", "byte-level",
                                             chat=True, seed=1),
        "tinyllama-1.1b-chat": write_llama(made / "tinyllama", "sentencepiece",
                                           chat=True, shards=3, seed=2),
    }


def read_folder(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def hub(tiny, layouts, monkeypatch):
    Hub.files = read_folder(tiny)
    Hub.repos = {MODELS["gpt2"].repo: Hub.files}
    Hub.repos.update({MODELS[name].repo: read_folder(folder)
                      for name, folder in layouts.items()})
    Hub.cut_after, Hub.corrupt, Hub.missing, Hub.ranges = None, False, set(), []
    Hub.ignore_range = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("MINIGPT_HUB_URL", url)
    yield url
    server.shutdown()
    server.server_close()


def same_files(a: Path, b: Path) -> None:
    names = ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
    assert sorted(p.name for p in b.iterdir()) == names  # no .part left behind
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_download_fetches_verifies_and_loads(hub, tiny, tmp_path):
    progress = io.StringIO()
    folder = download_model("gpt2", tmp_path / "gpt2", progress=progress)
    same_files(tiny, folder)
    assert "100.0%" in progress.getvalue()
    ids = [1, 2, 3]
    assert (minigpt.load_model(folder).forward(ids)
            == minigpt.load_model(tiny).forward(ids)).all()


def test_remote_file_reads_the_hub_headers(hub, tiny):
    data = (tiny / "model.safetensors").read_bytes()
    lfs = remote_file(f"{hub}{REPO}model.safetensors")
    assert (lfs.kind, lfs.size) == ("sha256", len(data))
    assert lfs.digest == hashlib.sha256(data).hexdigest()
    cfg = remote_file(f"{hub}{REPO}config.json")
    assert cfg.kind == "git-sha1"
    assert cfg.digest == file_digest(tiny / "config.json", "git-sha1")


def test_relative_redirect_of_a_renamed_repo_is_followed(hub, tiny):
    old = remote_file(f"{hub}/gpt2/resolve/main/config.json")
    assert old.url == f"{hub}{REPO}config.json"
    assert old.digest == file_digest(tiny / "config.json", "git-sha1")


def test_interrupted_transfer_resumes_with_range(hub, tiny, tmp_path):
    size = len(Hub.files["model.safetensors"])
    Hub.cut_after = size // 3
    dest = tmp_path / "gpt2"
    with pytest.raises(DownloadError, match=f"after {size // 3} of {size} bytes"):
        download_model("gpt2", dest, progress=None)
    assert not (dest / "model.safetensors").exists()  # never a half file
    assert (dest / "model.safetensors.part").stat().st_size == size // 3
    download_model("gpt2", dest, progress=None)
    assert Hub.ranges == [None, f"bytes={size // 3}-"]  # the second run resumed
    same_files(tiny, dest)


def test_a_server_that_ignores_range_is_read_from_the_start(hub, tiny, tmp_path):
    size = len(Hub.files["model.safetensors"])
    Hub.cut_after, Hub.ignore_range = size // 3, True
    dest = tmp_path / "gpt2"
    with pytest.raises(DownloadError, match="transfer failed"):
        download_model("gpt2", dest, progress=None)
    download_model("gpt2", dest, progress=None)  # asks for a range, gets it all
    assert Hub.ranges == [None, f"bytes={size // 3}-"]
    same_files(tiny, dest)  # the whole file once, not a prefix appended twice


def test_hash_mismatch_is_refused_and_deleted(hub, tmp_path):
    Hub.corrupt = True
    dest = tmp_path / "gpt2"
    with pytest.raises(DownloadError, match="sha256 is [0-9a-f]{64}, expected"):
        download_model("gpt2", dest, progress=None)
    assert not (dest / "model.safetensors").exists()
    assert not (dest / "model.safetensors.part").exists()
    Hub.corrupt = False
    download_model("gpt2", dest, progress=None)  # a clean run afterwards works
    assert Hub.ranges[-1] is None  # from the start, not resuming bad bytes


def test_complete_files_are_not_fetched_again(hub, tmp_path):
    dest = download_model("gpt2", tmp_path / "gpt2", progress=None)
    Hub.ranges.clear()
    (dest / "config.json").write_text("{}")  # damaged: fetched again
    download_model("gpt2", dest, progress=None)
    assert Hub.ranges == []  # the weights were whole: no transfer
    assert (dest / "config.json").read_bytes() == Hub.files["config.json"]


def test_404_is_a_clear_error(hub, tmp_path):
    Hub.missing = {"merges.txt"}
    with pytest.raises(DownloadError, match=r"merges.txt: HTTP 404"):
        download_model("gpt2", tmp_path / "gpt2", progress=None)
    assert not (tmp_path / "gpt2" / "merges.txt").exists()


def test_unreachable_hub(tmp_path):
    with pytest.raises(DownloadError, match="cannot connect"):
        download_model("gpt2", tmp_path, base_url="http://127.0.0.1:9",
                       progress=None)


def test_cli_download(hub, tiny, tmp_path, capsys):
    assert main(["download", "gpt2", "--dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr()
    assert f"saved to {tmp_path / 'm'}" in out.out and "100.0%" in out.err
    same_files(tiny, tmp_path / "m")
    Hub.missing = {"config.json"}
    assert main(["download", "gpt2", "--dir", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "HTTP 404" in err


def test_progress_bar():
    assert progress_bar("model", 50, 200, width=8) == (
        "model              [##      ]  25.0%     0.0 / 0.0 MB")


def test_the_cli_offers_every_model():
    assert DOWNLOADS == list(MODELS)


@pytest.mark.parametrize("name", ["gpt2-medium", "smollm2-135m",
                                  "smollm2-135m-instruct", "tinyllama-1.1b-chat"])
def test_every_model_downloads_and_runs(hub, layouts, tmp_path, name, capsys):
    source = layouts[name]
    assert main(["download", name, "--dir", str(tmp_path / name)]) == 0
    assert "100.0%" in capsys.readouterr().err
    got = tmp_path / name
    assert read_folder(got) == read_folder(source)  # every file, shards included
    model, tok = minigpt.load_model(got), minigpt.load_tokenizer(got)
    ids = tok.encode("the user")
    np.testing.assert_array_equal(model.forward(ids),
                                  minigpt.load_model(source).forward(ids))
    assert main(["generate", "the", "--model", str(got), "--max-new-tokens", "5",
                 "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("the")


def test_shards_resume_and_are_each_verified(hub, tmp_path):
    repo = Hub.repos[MODELS["tinyllama-1.1b-chat"].repo]
    shard = sorted(n for n in repo if n.startswith("model-"))[0]
    size = len(repo[shard])
    Hub.cut_after = size // 2
    dest = tmp_path / "tl"
    with pytest.raises(DownloadError, match=f"{shard}: transfer failed after "
                                            f"{size // 2} of {size}"):
        download_model("tinyllama-1.1b-chat", dest, progress=None)
    assert (dest / "model.safetensors.index.json").is_file()
    download_model("tinyllama-1.1b-chat", dest, progress=None)
    assert Hub.ranges[-3:][0] == f"bytes={size // 2}-"  # the first shard resumed
    assert read_folder(dest) == repo


def test_a_bad_index_is_refused(hub, tmp_path):
    repo = Hub.repos[MODELS["tinyllama-1.1b-chat"].repo]
    repo["model.safetensors.index.json"] = b'{"weight_map": {"x": "../evil"}}'
    with pytest.raises(DownloadError, match="shard '../evil' is not a file name"):
        download_model("tinyllama-1.1b-chat", tmp_path / "tl", progress=None)
