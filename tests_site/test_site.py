"""The browser's view of the built site (make test-site).

Serves site/ on 127.0.0.1 and opens every page in Debian's chromium through
Playwright. A page fails on a console error, an uncaught exception, a request to
any other host, an image that does not decode, math or a diagram left unrendered,
or an internal link that does not resolve. On a 390 px wide phone screen, each
page's diagrams must show text of at least 10 CSS px, its charts text of at least
9 px, and notebook code must scroll rather than wrap. (test_built_site.py checks
the built files: page weight, anchors, the 404 page, the sitemap.)
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
# Debian's chromium; GitHub's runners point MINIGPT_CHROMIUM at their Chrome.
CHROMIUM = os.environ.get("MINIGPT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Runs in the page: every problem a reader would see, as a list of strings.
AUDIT_JS = """
() => {
  const problems = [];
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) problems.push(`image did not decode: ${img.src.slice(0, 80)}`);
  }
  for (const el of document.querySelectorAll('.arithmatex')) {
    if (!el.querySelector('.katex')) problems.push(`math not rendered: ${el.textContent.slice(0, 60)}`);
  }
  for (const el of document.querySelectorAll('.katex-error')) {
    problems.push(`math error: ${el.getAttribute('title') || el.textContent}`);
  }
  for (const el of document.querySelectorAll('.mermaid')) {
    const svg = (el.shadowRoot && el.shadowRoot.querySelector('svg')) || el.querySelector('svg');
    if (!svg) problems.push(`diagram not rendered: ${el.textContent.slice(0, 60)}`);
    else if (/Syntax error|Parse error/i.test(svg.textContent)) problems.push('diagram has a syntax error');
  }
  // prose only: code may hold a backslash-bracket (a regex), and rendered math
  // keeps its TeX source; neither is a delimiter left unrendered
  const article = document.querySelector('article');
  const prose = article ? article.cloneNode(true) : null;
  if (prose) prose.querySelectorAll('pre, code, .katex, script, style').forEach((el) => el.remove());
  const text = prose ? prose.textContent : '';
  if (/\\$\\$|\\\\\\(|\\\\\\[/.test(text)) problems.push('raw TeX delimiters left in the text');
  return problems;
}
"""

# Material draws Mermaid diagrams into a closed shadow root; open it so the audit can
# see whether an SVG (and not mermaid's error picture) was drawn.
OPEN_SHADOW_JS = """
const attach = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (init) {
  return attach.call(this, Object.assign({}, init, { mode: "open" }));
};
"""

# A phone in portrait (an iPhone 12 to 15 is 390 x 844 CSS px).
PHONE = {"width": 390, "height": 844}
MIN_DIAGRAM_PX = 10.0
MIN_CHART_PX = 9.0

# Runs in the page at phone width: the smallest text of each visible diagram and
# chart, in CSS px as drawn, and notebook code blocks that wrap their lines.
# A chart is an <img> of an SVG drawn by matplotlib, whose text is glyph paths in
# groups scaled by (font size / 100): the SVG's own text is read with fetch().
PHONE_JS = r"""
async () => {
  const out = {diagrams: [], charts: [], wrapping: 0};
  const smallestIn = (svg, scale) => {
    let smallest = Infinity;
    for (const el of svg.querySelectorAll('text, tspan, foreignObject *')) {
      // elements holding text themselves (a label's <p> may also hold a <br>)
      if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
      const size = parseFloat(getComputedStyle(el).fontSize);
      if (size > 0) smallest = Math.min(smallest, size * scale);
    }
    return smallest;
  };
  for (const el of document.querySelectorAll('.mermaid')) {
    const svg = (el.shadowRoot && el.shadowRoot.querySelector('svg')) || el.querySelector('svg');
    if (!svg) continue;
    const box = svg.getBoundingClientRect();
    if (box.width === 0) continue;  // inside a closed admonition
    const view = svg.viewBox && svg.viewBox.baseVal && svg.viewBox.baseVal.width;
    const px = smallestIn(svg, view ? box.width / view : 1);
    out.diagrams.push({px, width: box.width, text: svg.textContent.trim().slice(0, 50)});
  }
  for (const img of document.images) {
    const src = img.currentSrc || img.src;
    if (!/\.svg($|\?)/.test(src) && !src.startsWith('data:image/svg')) continue;
    const width = img.getBoundingClientRect().width;
    if (width === 0) continue;
    const text = await (await fetch(src)).text();
    const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
    const svg = doc.documentElement;
    const view = svg.viewBox && svg.viewBox.baseVal && svg.viewBox.baseVal.width
      || parseFloat(svg.getAttribute('width'));
    const sizes = [...text.matchAll(/scale\(([\d.]+) -[\d.]+\)/g)].map(m => 100 * m[1]);
    for (const m of text.matchAll(/font(?:-size)?:\s*([\d.]+)px/g)) sizes.push(+m[1]);
    if (!sizes.length || !view) continue;
    out.charts.push({px: Math.min(...sizes) * width / view, width,
                     src: src.startsWith('data:') ? 'inline chart' : src.split('/').pop()});
  }
  for (const pre of document.querySelectorAll('.jupyter-wrapper pre')) {
    if (/wrap/.test(getComputedStyle(pre).whiteSpace)) out.wrapping += 1;
  }
  return out;
}
"""

LINKS_JS = """
() => Array.from(document.querySelectorAll('a[href]'))
  .map(a => a.href).filter(h => h.startsWith(location.origin))
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output readable
        pass


def serve(directory: Path):
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def pages() -> list[str]:
    """Site-relative URLs of every page of the built site."""
    if not (SITE / "index.html").exists():
        pytest.fail("site/ is not built: run `make test-site` (it builds first)",
                    pytrace=False)
    found = []
    for index in sorted(SITE.rglob("index.html")):
        rel = index.parent.relative_to(SITE).as_posix()
        if rel.startswith(("assets", "search")):
            continue
        found.append("" if rel == "." else rel + "/")
    return found


@pytest.fixture(scope="session")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def site_url():
    server = serve(SITE)
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


def visit(browser, url: str) -> tuple[list[str], list[str]]:
    """Open url; return (problems, internal links found on the page)."""
    origin = urllib.parse.urlsplit(url).netloc
    problems: list[str] = []
    page = browser.new_page()
    page.add_init_script(OPEN_SHADOW_JS)

    def on_request(request):
        parts = urllib.parse.urlsplit(request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != origin:
            problems.append(f"request to another host: {request.url}")

    page.on("request", on_request)
    page.on("console", lambda m: m.type == "error" and problems.append(
        f"console error: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"uncaught exception: {e}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(
        f"HTTP {r.status}: {r.url}"))
    page.goto(url, wait_until="networkidle")
    page.wait_for_timeout(300)  # let KaTeX and Mermaid finish after idle
    problems += page.evaluate(AUDIT_JS)
    links = page.evaluate(LINKS_JS)
    page.close()
    return problems, links


def phone_problems(browser, url: str) -> list[str]:
    """What is too small to read, or wraps, on the page at url at 390 px wide."""
    context = browser.new_context(viewport=PHONE, device_scale_factor=3,
                                  is_mobile=True, has_touch=True)
    page = context.new_page()
    page.add_init_script(OPEN_SHADOW_JS)
    try:
        page.goto(url, wait_until="networkidle")
        page.wait_for_timeout(300)
        found = page.evaluate(PHONE_JS)
    finally:
        context.close()
    problems = [f"diagram text {d['px']:.1f} px (< {MIN_DIAGRAM_PX:g}) in a "
                f"{d['width']:.0f} px wide diagram: {d['text']!r}"
                for d in found["diagrams"] if d["px"] < MIN_DIAGRAM_PX]
    problems += [f"chart text {c['px']:.1f} px (< {MIN_CHART_PX:g}) in {c['src']} "
                 f"drawn {c['width']:.0f} px wide"
                 for c in found["charts"] if c["px"] < MIN_CHART_PX]
    if found["wrapping"]:
        problems.append(f"{found['wrapping']} notebook code blocks wrap their lines")
    return problems


_links_seen: set[str] = set()


@pytest.mark.parametrize("path", pages())
def test_page_renders_cleanly(browser, site_url, path):
    problems, links = visit(browser, site_url + path)
    _links_seen.update(link.split("#")[0] for link in links)
    assert not problems, f"/{path}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", pages())
def test_page_reads_on_a_phone(browser, site_url, path):
    problems = phone_problems(browser, site_url + path)
    assert not problems, f"/{path} at {PHONE['width']} px:\n" + "\n".join(problems)


def test_every_internal_link_resolves(browser, site_url):
    # collected from every page by the tests above (and the home page, if run alone)
    if not _links_seen:
        _links_seen.update(link.split("#")[0] for link in visit(browser, site_url)[1])
    broken = []
    for link in sorted(_links_seen):
        try:
            urllib.request.urlopen(link, timeout=10).close()
        except urllib.error.HTTPError as exc:
            broken.append(f"{exc.code} {link}")
    unlinked = [p for p in pages() if site_url + p not in _links_seen]
    assert not unlinked, f"pages no link points to (is the nav complete?): {unlinked}"
    assert not broken, "\n".join(broken)


def test_the_audit_catches_what_it_should(browser, tmp_path):
    """The checks above can fail: a page with each fault reports each one."""
    (tmp_path / "index.html").write_text("""<!doctype html><html><body><article>
        <span class="arithmatex">\\(x^2\\)</span>
        <img src="missing.png">
        <pre class="mermaid"><code>graph LR; a--></code></pre>
        <script>console.error("boom")</script>
        <script src="http://203.0.113.1/cdn.js"></script>
        </article></body></html>""")
    server = serve(tmp_path)
    try:
        problems, _ = visit(browser, f"http://127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
    text = "\n".join(problems)
    for expected in ("console error: boom", "request to another host",
                     "image did not decode", "math not rendered", "HTTP 404",
                     "diagram not rendered"):
        assert expected in text, f"{expected!r} not reported in:\n{text}"


def test_the_phone_check_catches_small_chart_text(browser, tmp_path):
    """A chart whose 4-point text is drawn 390 px wide from 800 pt is reported."""
    (tmp_path / "chart.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="800pt" height="100pt" '
        'viewBox="0 0 800 100"><g transform="translate(10 50) scale(0.04 -0.04)">'
        '<path d="M 0 0 L 100 100"/></g></svg>')
    (tmp_path / "index.html").write_text(
        '<!doctype html><html><body><img src="chart.svg" alt="a chart" '
        'style="max-width: 100%"><div class="jupyter-wrapper"><pre '
        'style="white-space: pre-wrap">x = 1</pre></div></body></html>')
    server = serve(tmp_path)
    try:
        problems = phone_problems(browser, f"http://127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
    text = "\n".join(problems)
    assert "chart text" in text and "chart.svg" in text, text
    assert "notebook code blocks wrap" in text, text
