"""Fetch open models from the Hugging Face hub: progress, verification, resume.

`MODELS` lists what `python -m minigpt download NAME` fetches: GPT-2 124M and
355M, SmolLM2-135M (base and instruct) and 360M-Instruct, TinyLlama-1.1B-Chat,
Qwen2.5-0.5B-Instruct and Qwen3-0.6B, each with its config, its tokenizer files
and its weights: one `model.safetensors`, or the shards named by
`model.safetensors.index.json`; and GGUF files (one file each: model, tokenizer
and chat template) from their publishers' repositories.

Follows the hub's public HTTP interface, as `huggingface_hub` uses it: a HEAD
request on `{hub}/{repo}/resolve/{revision}/{file}` (redirects not followed)
returns the file's identity. For a large file kept in Git LFS the answer names
its SHA-256 (`X-Linked-Etag`) and size (`X-Linked-Size`); for a small file kept
in git itself, the `ETag` is git's blob id, SHA-1 of `b"blob <size>\\0" + data`.
We check whichever the hub gives, so nothing is pinned here that could go stale.

Bytes go to `<file>.part`; an interrupted transfer resumes with an HTTP Range
request; only a file whose size and hash match is renamed (atomically) to its
real name, so a half file is never mistaken for a whole one.

Only urllib from the standard library. The hub's address can be changed with
the MINIGPT_HUB_URL environment variable (the tests use a local server).

Left out on purpose: authentication, parallel downloads, and mirrors.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

__all__ = ["DownloadError", "HubModel", "MODELS", "NotOnHub", "download_model",
           "hub_url"]

CHUNK = 1 << 20  # read 1 MiB at a time
TIMEOUT = 30  # seconds without a byte before we give up (and can resume)


# --8<-- [start:download-errors]
class DownloadError(RuntimeError):
    """A download that failed; the message says why and what to do."""


class NotOnHub(DownloadError):
    """The hub answered 404: the repository has no such file."""
# --8<-- [end:download-errors]


# --8<-- [start:hub-models]
@dataclass(frozen=True)
class HubModel:
    """A model `download` knows: its hub repository and the files it needs."""

    repo: str
    files: tuple[str, ...]  # config and tokenizer; the weights are found apart
    optional: tuple[str, ...] = ("generation_config.json",)  # fetched if present
    gguf: str | None = None  # one .gguf file: model and tokenizer in one


GPT2_FILES = ("config.json", "vocab.json", "merges.txt")
JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
MODELS = {  # what `download NAME` accepts
    "gpt2": HubModel("openai-community/gpt2", GPT2_FILES),
    "gpt2-medium": HubModel("openai-community/gpt2-medium", GPT2_FILES),
    "smollm2-135m": HubModel("HuggingFaceTB/SmolLM2-135M", JSON_FILES),
    "smollm2-135m-instruct": HubModel("HuggingFaceTB/SmolLM2-135M-Instruct",
                                      JSON_FILES),
    "tinyllama-1.1b-chat": HubModel("TinyLlama/TinyLlama-1.1B-Chat-v1.0",
                                    JSON_FILES),
    "smollm2-360m-instruct": HubModel("HuggingFaceTB/SmolLM2-360M-Instruct",
                                      JSON_FILES),
    "qwen2.5-0.5b-instruct": HubModel("Qwen/Qwen2.5-0.5B-Instruct", JSON_FILES),
    "qwen3-0.6b": HubModel("Qwen/Qwen3-0.6B", JSON_FILES),
    # GGUF files (chapter 33), from their publishers' own repositories
    "qwen2.5-0.5b-instruct-q4_k_m": HubModel(
        "Qwen/Qwen2.5-0.5B-Instruct-GGUF", (), (),
        "qwen2.5-0.5b-instruct-q4_k_m.gguf"),
    "qwen3-0.6b-q8_0": HubModel("Qwen/Qwen3-0.6B-GGUF", (), (),
                                "Qwen3-0.6B-Q8_0.gguf"),
    "smollm2-360m-instruct-q8_0": HubModel(
        "HuggingFaceTB/SmolLM2-360M-Instruct-GGUF", (), (),
        "smollm2-360m-instruct-q8_0.gguf"),
}
INDEX = "model.safetensors.index.json"  # a sharded checkpoint's table of shards
# --8<-- [end:hub-models]


# --8<-- [start:hub-url]
def hub_url() -> str:
    """The hub's base address: MINIGPT_HUB_URL, or huggingface.co."""
    return os.environ.get("MINIGPT_HUB_URL", "https://huggingface.co").rstrip("/")
# --8<-- [end:hub-url]


# --8<-- [start:remote-file]
@dataclass(frozen=True)
class RemoteFile:
    """What the hub says a file is, before we fetch it."""

    url: str
    size: int
    digest: str  # hex digest the finished file must have
    kind: str  # "sha256" (an LFS file) or "git-sha1" (a file kept in git)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # the 302 itself has the headers
        return None


def remote_file(url: str) -> RemoteFile:
    """HEAD the file's URL and read its size and hash from the headers."""
    try:
        with urllib.request.build_opener(_NoRedirect).open(
                urllib.request.Request(url, method="HEAD"), timeout=TIMEOUT) as r:
            headers = r.headers
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise NotOnHub(f"{url}: HTTP 404 {exc.reason}") from None
        if exc.code not in (301, 302, 303, 307, 308):
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        headers = exc.headers  # an LFS file: a redirect to the storage server
        where = headers.get("Location", "")
        if where.startswith("/") and "X-Linked-Etag" not in headers:
            return remote_file(urllib.parse.urljoin(url, where))  # a renamed repo
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: cannot connect ({exc})") from None
    lfs = headers.get("X-Linked-Etag")
    tag = (lfs or headers.get("ETag") or "").removeprefix("W/").strip('"')
    size = headers.get("X-Linked-Size") if lfs else headers.get("Content-Length")
    if not tag or size is None:
        raise DownloadError(f"{url}: the server sent no size or hash to check")
    return RemoteFile(url, int(size), tag.lower(), "sha256" if lfs else "git-sha1")
# --8<-- [end:remote-file]


# --8<-- [start:verify-file]
def file_digest(path: Path, kind: str) -> str:
    """The file's SHA-256, or its git blob id (SHA-1 of a header and the bytes)."""
    h = hashlib.sha256() if kind == "sha256" else hashlib.sha1()
    if kind == "git-sha1":
        h.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, remote: RemoteFile) -> None:
    """Raise unless the file has the size and hash the server announced."""
    size = path.stat().st_size
    if size != remote.size:
        raise DownloadError(f"{path.name}: {size} bytes, expected {remote.size}")
    digest = file_digest(path, remote.kind)
    if digest != remote.digest:
        raise DownloadError(f"{path.name}: {remote.kind} is {digest}, expected "
                            f"{remote.digest}; the file was deleted, run again")
# --8<-- [end:verify-file]


# --8<-- [start:fetch-resume]
def fetch(remote: RemoteFile, dest: Path, progress: TextIO | None) -> None:
    """Download to dest.part (resuming it), verify, then rename to dest."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > remote.size:  # not a prefix of this file: start again
        part.unlink()
        have = 0
    if have < remote.size:
        request = urllib.request.Request(remote.url)
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as r:
                if have and r.status != 206:  # the server ignored Range
                    have = 0
                with part.open("ab" if have else "wb") as f:
                    have = _copy(r, f, have, remote.size, dest.name, progress)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            have = part.stat().st_size if part.exists() else 0
            raise DownloadError(f"{dest.name}: transfer failed after {have} of "
                                f"{remote.size} bytes ({exc}); run again to "
                                f"resume") from None
    try:
        verify(part, remote)
    except DownloadError:
        part.unlink()  # a wrong file is never resumed
        raise
    os.replace(part, dest)  # atomic: dest is either absent or whole
# --8<-- [end:fetch-resume]


# --8<-- [start:copy-with-progress]
def _copy(r, f, have: int, total: int, name: str, progress: TextIO | None) -> int:
    """Copy the response to f, drawing the progress bar; return bytes held."""
    while block := r.read(CHUNK):
        f.write(block)
        have += len(block)
        if progress:
            progress.write("\r" + progress_bar(name, have, total))
    if progress:
        progress.write("\n")
    if have < total:
        raise OSError(f"connection closed at byte {have}")
    return have
# --8<-- [end:copy-with-progress]


# --8<-- [start:progress-bar]
def progress_bar(name: str, done: int, total: int, width: int = 30) -> str:
    """One line of text: name, a bar, percent and megabytes."""
    frac = done / total if total else 1.0
    bar = "#" * int(frac * width)
    return (f"{name:<18} [{bar:<{width}}] {frac:6.1%} "
            f"{done / 1e6:7.1f} / {total / 1e6:.1f} MB")
# --8<-- [end:progress-bar]


# --8<-- [start:download-model]
def download_model(name: str, folder: str | Path, base_url: str | None = None,
                   revision: str = "main", progress: TextIO | None = sys.stderr
                   ) -> Path:
    """Fetch a model's config, tokenizer and weights into folder; return it
    (or the .gguf file, for a model that is one file)."""
    if name not in MODELS:
        raise DownloadError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    model, folder = MODELS[name], Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = f"{(base_url or hub_url()).rstrip('/')}/{model.repo}/resolve/{revision}"
    if model.gguf:  # everything is in the one file
        get(base, model.gguf, folder, progress)
        return folder / model.gguf
    for file in model.files:
        get(base, file, folder, progress)
    for file in model.optional:
        try:
            get(base, file, folder, progress)
        except NotOnHub:
            pass  # this checkpoint does without it
    for file in weight_files(base, folder, progress):
        get(base, file, folder, progress)
    return folder


def get(base: str, file: str, folder: Path, progress: TextIO | None) -> None:
    """One file: kept if already whole, else fetched (resuming) and verified."""
    remote = remote_file(f"{base}/{file}")
    dest = folder / file
    if dest.exists():
        try:
            return verify(dest, remote)  # already here and whole
        except DownloadError:
            dest.unlink()  # stale or damaged: fetch it again
    fetch(remote, dest, progress)


def weight_files(base: str, folder: Path, progress: TextIO | None) -> list[str]:
    """["model.safetensors"], or the shards listed by the index (fetched first)."""
    try:
        remote_file(f"{base}/model.safetensors")
        return ["model.safetensors"]
    except NotOnHub:
        get(base, INDEX, folder, progress)  # no single file: a sharded checkpoint
    try:
        shards = set(json.loads((folder / INDEX).read_text())["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DownloadError(f"{INDEX}: not an index of shards (no weight_map)") \
            from None
    bad = [s for s in shards if not isinstance(s, str) or Path(s).name != s]
    if bad:
        raise DownloadError(f"{INDEX}: shard {bad[0]!r} is not a file name")
    return sorted(shards)
# --8<-- [end:download-model]
