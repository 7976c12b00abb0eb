"""The built site read as files (make test-site): weight, links, anchors, charts.

No browser: these read site/ as a web server would serve it. test_site.py opens the
same pages in chromium.
"""

from __future__ import annotations

import base64
import gzip
import re
import urllib.parse
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
# What one page may cost a reader on a first visit, everything it loads counted.
BUDGET = 1_500_000
# Text is sent compressed (GitHub Pages gzips HTML, CSS, JS, JSON and SVG); fonts
# and raster images are sent as they are.
COMPRESSED = {".html", ".css", ".js", ".mjs", ".json", ".svg", ".xml", ".txt"}
# The text column of a 390 px phone: Material keeps 0.8rem (16 px) on each side.
PHONE_COLUMN_PX = 390 - 2 * 16
MIN_CHART_TEXT_PX = 9.0
# Which of Mermaid's lazily loaded chunks a diagram kind needs (with the layout).
MERMAID_CHUNKS = {"flowchart": ("flowDiagram", "dagre"), "graph": ("flowDiagram", "dagre"),
                  "sequenceDiagram": ("sequenceDiagram",), "pie": ("pieDiagram",),
                  "stateDiagram-v2": ("stateDiagram-v2", "dagre"),
                  "classDiagram": ("classDiagram", "dagre")}


def site_config() -> dict:
    class Loader(yaml.SafeLoader):
        """Reads mkdocs.yml without importing the objects it names."""

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)
    Loader.add_multi_constructor("!", lambda *_: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader)


def html_pages() -> list[Path]:
    if not (SITE / "index.html").exists():
        pytest.fail("site/ is not built: run `make test-site` (it builds first)",
                    pytrace=False)
    return sorted(p for p in SITE.rglob("*.html")
                  if p.relative_to(SITE).parts[0] not in ("assets", "search"))


def page_id(path: Path) -> str:
    return path.relative_to(SITE).as_posix()


@cache
def sent_bytes(path: Path) -> int:
    """Bytes a compressing web server sends for path."""
    data = path.read_bytes()
    return len(gzip.compress(data, 6)) if path.suffix in COMPRESSED else len(data)


def local_file(base: Path, url: str) -> Path | None:
    """The file of site/ that a URL on the page at base names (None: another host)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    prefix = urllib.parse.urlsplit(site_config().get("site_url") or "/").path
    path = urllib.parse.unquote(parts.path)
    if path.startswith("/"):
        target = SITE / path[len(prefix):] if path.startswith(prefix) else SITE / path[1:]
    else:
        target = base.parent / path
    target = Path(target)
    if target.is_dir() or path.endswith("/"):
        target = target / "index.html"
    return target.resolve()


def module_closure(entry: Path, kinds: set[str]) -> set[Path]:
    """An ES module with its static imports, and the lazy chunks that kinds need."""
    seen, todo = set(), [entry]
    wanted = {c for k in kinds for c in MERMAID_CHUNKS.get(k, ("",))}
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        text = path.read_text(encoding="utf-8", errors="replace")
        static = re.findall(r'(?:import|export)[^"\'();]*?from\s*"(\.[^"]+)"', text)
        static += re.findall(r'import\s*"(\.[^"]+)"', text)
        lazy = re.findall(r'import\(\s*"(\.[^"]+)"\s*\)', text)
        todo += [(path.parent / s).resolve() for s in static]
        todo += [(path.parent / s).resolve() for s in lazy
                 if any(Path(s).name.startswith(w + "-") for w in wanted)]
    return seen


def loaded_files(page: Path) -> set[Path]:
    """Every local file the page loads on a first visit."""
    html = page.read_text(encoding="utf-8", errors="replace")
    files: set[Path] = set()
    for tag in re.finditer(r"<(script|img|link|source|iframe)\b[^>]*>", html):
        text = tag.group(0)
        if tag.group(1) == "link" and "stylesheet" not in text and "modulepreload" \
                not in text:
            continue
        url = re.search(r'\b(?:src|href)="([^"]+)"', text)
        target = url and local_file(page, url.group(1))
        if target and target.is_file():
            files.add(target)
    kinds = set(re.findall(r'<pre class="mermaid"><code>\s*([\w-]+)', html))
    for spec in re.findall(r'<script type="module">\s*import \w+ from "([^"]+)"', html):
        target = local_file(page, spec)
        if target:
            files |= module_closure(target, kinds)
    for css in [f for f in files if f.suffix == ".css"]:
        # fonts a stylesheet names: counted whole, though a page may need fewer
        for url in re.findall(r"url\(([^)]+\.woff2)\)", css.read_text(errors="replace")):
            font = (css.parent / url.strip("'\"")).resolve()
            if font.is_file():
                files.add(font)
    if 'name="search"' in html or "md-search" in html:
        # Material's search worker downloads the index as soon as the page opens
        files |= {p.resolve() for p in (SITE / "search").glob("search_index.json")}
        files |= {p.resolve() for p in (SITE / "assets/javascripts/workers").glob(
            "search.*.min.js")}
    return files


@pytest.mark.parametrize("page", html_pages(), ids=page_id)
def test_page_weight_is_within_budget(page):
    files = loaded_files(page)
    total = sent_bytes(page) + sum(sent_bytes(f) for f in files)
    if total > BUDGET:
        biggest = sorted(files | {page}, key=sent_bytes, reverse=True)[:6]
        detail = "\n".join(f"  {sent_bytes(f):>9,} {f.relative_to(SITE.resolve())}"
                           for f in biggest)
        pytest.fail(f"{page_id(page)} loads {total:,} bytes (budget {BUDGET:,}):\n"
                    f"{detail}", pytrace=False)


def test_the_weight_counts_what_a_diagram_page_loads():
    """A page with a diagram counts Mermaid's core and flowchart chunks."""
    pages = [p for p in html_pages() if 'class="mermaid"' in p.read_text()]
    if not pages:
        pytest.skip("no page draws a diagram")
    names = {f.name for f in loaded_files(pages[0])}
    assert "mermaid.esm.min.mjs" in names
    assert any(n.startswith("flowDiagram-") for n in names), names
    assert "search_index.json" in names


def test_only_pages_with_a_diagram_load_mermaid():
    wrong = []
    for page in html_pages():
        html = page.read_text(encoding="utf-8", errors="replace")
        drawn = 'class="mermaid"' in html
        loads = any(f.name.startswith("mermaid") for f in loaded_files(page))
        if drawn != loads:
            wrong.append(f"{page_id(page)}: diagram {drawn}, loads Mermaid {loads}")
    assert not wrong, "\n".join(wrong)


def test_notebook_pages_carry_no_unused_jupyter_css():
    """mkdocs-jupyter inlines JupyterLab's 575 KB stylesheet; the hook prunes it."""
    for page in html_pages():
        html = page.read_text(encoding="utf-8", errors="replace")
        if '<div class="jupyter-wrapper">' not in html:
            continue
        styles = re.findall(r"<style[^>]*>(.*?)</style>", html, re.S)
        assert sum(map(len, styles)) < 250_000, f"{page_id(page)}: Jupyter CSS kept"
        assert "cdnjs" not in html and "mathjax" not in html.lower(), page_id(page)


# --- links and anchors -------------------------------------------------------


@cache
def ids_of(path: Path) -> frozenset[str]:
    html = path.read_text(encoding="utf-8", errors="replace")
    return frozenset(re.findall(r'\b(?:id|name)="([^"]+)"', html))


def hrefs(html: str) -> list[str]:
    return re.findall(r'<a\b[^>]*?\bhref="([^"]*)"', html)


def test_every_internal_link_and_anchor_resolves():
    """Every link of every page, table of contents included, reaches its target."""
    broken = []
    for page in html_pages():
        for href in hrefs(page.read_text(encoding="utf-8", errors="replace")):
            href = href.replace("&amp;", "&")
            if href.startswith(("mailto:", "javascript:")):
                continue
            parts = urllib.parse.urlsplit(href)
            if parts.scheme or parts.netloc:
                continue
            target = page.resolve() if not parts.path else local_file(page, href)
            if target is None or not target.is_file():
                broken.append(f"{page_id(page)}: {href} (no such file)")
                continue
            fragment = urllib.parse.unquote(parts.fragment)
            if fragment and target.suffix == ".html" and fragment not in ids_of(target):
                broken.append(f"{page_id(page)}: {href} (no anchor #{fragment})")
    assert not broken, f"{len(broken)} broken:\n" + "\n".join(broken[:50])


def test_the_404_page_works_under_a_project_path():
    """404.html is served for any missing path, so it may not use relative URLs."""
    page = SITE / "404.html"
    assert page.is_file()
    html = page.read_text(encoding="utf-8")
    prefix = urllib.parse.urlsplit(site_config()["site_url"]).path
    assert prefix.startswith("/") and prefix.endswith("/")
    relative = [u for u in re.findall(r'\b(?:src|href)="([^"#][^"]*)"', html)
                if not urllib.parse.urlsplit(u).scheme and not u.startswith("/")]
    assert not relative, f"404.html has relative URLs: {relative[:5]}"
    missing = [u for u in re.findall(r'\b(?:src|href)="(/[^"]*)"', html)
               if not (local_file(page, u) or Path("/nonexistent")).exists()]
    assert not missing, f"404.html links to missing files: {missing[:5]}"


def test_the_sitemap_lists_every_page():
    site_url = site_config()["site_url"]
    sitemap = (SITE / "sitemap.xml").read_text(encoding="utf-8")
    listed = set(re.findall(r"<loc>([^<]+)</loc>", sitemap))
    for page in html_pages():
        if page.name != "index.html":
            continue
        rel = page.parent.relative_to(SITE).as_posix()
        url = site_url + ("" if rel == "." else rel + "/")
        assert url in listed, f"{url} is not in sitemap.xml"


def test_the_site_links_to_its_repository():
    repo = site_config()["repo_url"]
    assert f'href="{repo}"' in (SITE / "index.html").read_text(encoding="utf-8")


# --- chart text on a phone ---------------------------------------------------


def svg_text_sizes(svg: str) -> tuple[float, float, list[float]]:
    """(natural width in CSS px, viewBox width, font sizes in user units) of an SVG
    drawn by matplotlib (text as glyph paths, each group scaled by size / 100)."""
    head = re.search(r"<svg\b[^>]*>", svg).group(0)
    width = re.search(r'\bwidth="([\d.]+)(pt|px)?"', head)
    natural = float(width.group(1)) * (4 / 3 if width.group(2) == "pt" else 1)
    box = re.search(r'viewBox="[\d.-]+ [\d.-]+ ([\d.]+) [\d.]+"', head)
    view = float(box.group(1)) if box else float(width.group(1))
    sizes = [float(s) * 100 for s in re.findall(r"scale\(([\d.]+) -[\d.]+\)", svg)]
    sizes += [float(s) for s in re.findall(r"font(?:-size)?:\s*([\d.]+)px", svg)]
    return natural, view, sizes


def chart_sources(page: Path):
    html = page.read_text(encoding="utf-8", errors="replace")
    for src in re.findall(r'<img\b[^>]*?\bsrc="([^"]+)"', html):
        if src.startswith("data:image/svg+xml;base64,"):
            yield "inline chart", base64.b64decode(src.split(",", 1)[1]).decode()
        elif src.split("?")[0].endswith(".svg"):
            path = local_file(page, src)
            if path and path.is_file():
                yield path.name, path.read_text(encoding="utf-8")


def test_chart_text_is_readable_on_a_phone():
    """Each chart's smallest text, scaled to a 390 px phone's column, is >= 9 px."""
    small = []
    for page in html_pages():
        for name, svg in chart_sources(page):
            natural, view, sizes = svg_text_sizes(svg)
            if not sizes:
                continue
            shown = min(natural, PHONE_COLUMN_PX)
            px = min(sizes) * shown / view
            if px < MIN_CHART_TEXT_PX:
                small.append(f"{page_id(page)}: {name}: {px:.1f} px")
    assert not small, "chart text below 9 px at 390 px:\n" + "\n".join(sorted(set(small)))


@pytest.mark.parametrize("chapter", sorted((ROOT / "docs" / "chapters").glob(
    "[0-9][0-9]-*.*")), ids=lambda p: p.name)
def test_every_chapter_links_its_notebook_and_script(chapter):
    """Under its title, each chapter offers its code; both links reach a file."""
    page = SITE / "chapters" / chapter.stem / "index.html"
    if not page.exists():
        pytest.fail(f"{page} is missing: run `make test-site` (it builds first)")
    html = page.read_text(encoding="utf-8")
    links = re.findall(r'<p class="downloads">.*?</p>', html, re.S)
    assert links, f"{page_id(page)} links no downloads"
    hrefs = re.findall(r'href="([^"]+)"', links[0])
    assert sorted(Path(h).suffix for h in hrefs) == [".ipynb", ".py"], hrefs
    for href in hrefs:
        assert (page.parent / href).resolve().is_file(), f"{page_id(page)}: {href}"
