"""Fetch the site's JavaScript assets (KaTeX, Mermaid) from the npm registry.

The book must load nothing from another host, so these are served from the site.
Each tarball is pinned by version and checked against the registry's sha512
integrity hash before anything is unpacked. Usage: fetch_assets.py DEST_DIR
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
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
        ["dist/mermaid.min.js"],
    ),
]


def fetch(name: str, version: str, integrity: str) -> bytes:
    """Download one package tarball and verify its sha512 integrity hash."""
    url = f"{REGISTRY}/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != integrity:
        raise SystemExit(f"{name}@{version}: sha512 mismatch, refusing to unpack")
    return data


def unpack(data: bytes, keep: list[str], dest: Path) -> None:
    """Extract the kept paths of an npm tarball (rooted at package/) into dest."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            rel = member.name.removeprefix("package/")
            if not member.isfile() or not any(
                rel == k or rel.startswith(k + "/") for k in keep
            ):
                continue
            target = dest / rel.removeprefix("dist/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def main(dest: str) -> None:
    root = Path(dest)
    for name, version, integrity, keep in PACKAGES:
        target = root / name
        stamp = target / f".version-{version}"
        if stamp.exists():
            continue
        shutil.rmtree(target, ignore_errors=True)
        unpack(fetch(name, version, integrity.removeprefix("sha512-")), keep, target)
        stamp.touch()
        print(f"fetched {name}@{version} into {target}")
    (root / ".fetched").touch()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/assets/vendor")
