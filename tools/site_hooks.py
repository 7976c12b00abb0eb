"""MkDocs hooks (mkdocs.yml `hooks:`): lighter pages and linked prose.

* Mermaid is loaded only by pages that hold a diagram, as ES modules: its core and
  the flowchart chunks (0.7 MB), not the whole bundle (2.7 MB). Material draws the
  diagrams with the global `mermaid`, which the module sets before the page's
  DOMContentLoaded (module scripts run first), so Material never fetches its own.
* A notebook page (mkdocs-jupyter) carries JupyterLab's whole stylesheet inline,
  575 KB on each page: only the rules whose classes the page uses are kept, and
  nbconvert's MathJax and Mermaid loaders (the site draws math with KaTeX, and the
  Mermaid loader names another host) are dropped.
* Every plain-text "chapter N" of a page's prose becomes a link to that chapter,
  found from the file names docs/chapters/NN-*.md|py, so new chapters need nothing.
* The glossary's terms get anchors, and each page links the first use of each term.
* A notebook page's links to pages' source files (`20-kv-cache.md`) point to the
  pages, as MkDocs does for Markdown pages and mkdocs-jupyter does not.
* The search index keeps prose and drops code listings, which are most of its
  weight and which every page downloads.

Text is linked only outside code, headings, links, math, scripts and summaries.
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)

MERMAID = "assets/vendor/mermaid/mermaid.esm.min.mjs"
GLOSSARY = "appendix/glossary.md"
# Elements whose text is never linked: a link there would be wrong or nested.
SKIP = {"a", "code", "pre", "kbd", "samp", "script", "style", "svg", "math", "h1",
        "h2", "h3", "h4", "h5", "h6", "summary", "button", "label", "title",
        "textarea", "select", "option"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
        "source", "track", "wbr"}
TOKEN = re.compile(r"(<!--.*?-->|<(script|style)\b.*?</\2\s*>|<[^>]*>)", re.S | re.I)
TAG = re.compile(r"<\s*(/)?\s*([a-zA-Z][\w-]*)([^>]*?)(/)?\s*>", re.S)
CHAPTER = re.compile(r"\b([Cc]hapter)(\s+)(\d{1,2})\b(?![.,]\d)")
CHAPTERS = re.compile(r"\b([Cc]hapters)((?:(?:\s*,\s*|\s+(?:and|or|to)\s+|\s*[–-]\s*|"
                      r"\s+)\d{1,2}\b(?![.,]\d))+)")
NUMBER = re.compile(r"\d{1,2}")


# --- walking the text of an HTML fragment -------------------------------------


def map_text(html: str, replace) -> str:
    """html with replace(text) applied to each text run outside SKIP elements.

    A class "arithmatex" element (math) is skipped too. replace returns HTML.
    """
    out, stack, pos = [], [], 0
    for match in TOKEN.finditer(html):
        text = html[pos:match.start()]
        out.append(replace(text) if text and not stack else text)
        token, pos = match.group(0), match.end()
        out.append(token)
        tag = TAG.fullmatch(token)
        if not tag or token.startswith(("<!", "<?")):
            continue
        closing, name, attrs, selfclosing = tag.groups()
        name = name.lower()
        if name in VOID or selfclosing or name in ("script", "style"):
            continue
        if closing:
            if stack and stack[-1][0] == name:
                stack.pop()
            elif any(n == name for n, _ in stack):
                while stack and stack.pop()[0] != name:
                    pass
            continue
        if stack or name in SKIP or re.search(r'class="[^"]*\barithmatex\b', attrs):
            stack.append((name, attrs))
    text = html[pos:]
    out.append(replace(text) if text and not stack else text)
    return "".join(out)


def relative(target_url: str, page_url: str) -> str:
    """The URL of target_url (site-relative) as seen from page_url."""
    from mkdocs.utils import get_relative_url

    return get_relative_url(target_url, page_url)


# --- "chapter N" links ------------------------------------------------------


def chapter_urls(files) -> dict[int, str]:
    """Chapter number -> site URL of its page, from docs/chapters/NN-*.md|py."""
    urls = {}
    for f in files:
        m = re.fullmatch(r"chapters/(\d\d)-[^/]+\.(md|py)", f.src_uri)
        # a page, not a chapter's downloadable script (tools/downloads.py)
        if m and f.is_documentation_page():
            urls[int(m.group(1))] = f.url
    return urls


def link_chapters(html: str, urls: dict[int, str], page_url: str) -> str:
    """Each plain-text chapter number in html's prose linked to its chapter."""
    own = next((n for n, u in urls.items() if u == page_url), None)

    def link(number: str, text: str) -> str:
        k = int(number)
        if k not in urls or k == own:
            return text
        return f'<a href="{relative(urls[k], page_url)}">{text}</a>'

    def replace(text: str) -> str:
        text = CHAPTERS.sub(lambda m: m.group(1) + NUMBER.sub(
            lambda n: link(n.group(0), n.group(0)), m.group(2)), text)
        return CHAPTER.sub(lambda m: link(m.group(3), m.group(0)), text)

    return map_text(html, replace)


# --- the glossary -------------------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@functools.lru_cache(maxsize=4)
def glossary_terms(source: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(term as written, anchor, phrases that name it) for each `**Term.**`."""
    terms = []
    for m in re.finditer(r"^\*\*(.+?)\.\*\*", source, re.M):
        term = m.group(1)
        main = re.sub(r"\s*\(.*?\)", "", term).strip()
        phrases = [p.strip() for p in main.split(",")]
        for inner in re.findall(r"\((.*?)\)", term):
            if "$" not in inner:
                phrases.append(inner.strip())
        terms.append((term, slug(main), tuple(p for p in phrases if p)))
    return tuple(terms)


def anchor_glossary(html: str, terms) -> str:
    """The glossary page with an id on each term's paragraph."""
    anchors = {anchor for _, anchor, _ in terms}

    def add(m: re.Match) -> str:
        plain = re.sub(r"<[^>]+>", "", m.group(1))
        anchor = slug(re.sub(r"\s*\(.*", "", plain))
        if anchor not in anchors:
            return m.group(0)
        return f'<p id="{anchor}"><strong>{m.group(1)}.</strong>'

    return re.sub(r"<p><strong>(.*?)\.</strong>", add, html)


def phrase_pattern(phrase: str) -> re.Pattern:
    """A phrase as a whole word or words, any case, with an optional plural."""
    words = r"[\s-]+".join(re.escape(w) for w in re.split(r"[\s-]+", phrase))
    return re.compile(rf"(?<![\w-])({words}(?:s|es)?)(?![\w-])", re.I)


def link_glossary(html: str, terms, glossary_url: str, page_url: str) -> str:
    """The first use of each glossary term in html's prose linked to its entry."""
    target = relative(glossary_url, page_url)
    order = sorted(((p, a) for _, a, ps in terms for p in ps), key=lambda x: -len(x[0]))
    done: set[str] = set()
    for phrase, anchor in order:
        if anchor in done:
            continue
        pattern, hit = phrase_pattern(phrase), []

        def replace(text: str, pattern=pattern, anchor=anchor, hit=hit) -> str:
            if hit:
                return text
            m = pattern.search(text)
            if not m:
                return text
            hit.append(True)
            return (text[:m.start()] + f'<a class="glossary-term" href="{target}#'
                    f'{anchor}" title="Glossary">{m.group(1)}</a>' + text[m.end():])

        html = map_text(html, replace)
        if hit:
            done.add(anchor)
    return html


# --- notebook pages -----------------------------------------------------------


def css_rules(css: str) -> list[tuple[str, str]]:
    """Top-level (prelude, body) pairs of a stylesheet; at-rules keep their braces."""
    rules, depth, start, prelude_end = [], 0, 0, None
    i = 0
    while i < len(css):
        c = css[i]
        if c == "/" and css.startswith("/*", i):
            i = css.find("*/", i + 2)
            i = len(css) if i < 0 else i + 2
            continue
        if c in "\"'":
            j = css.find(c, i + 1)
            i = len(css) if j < 0 else j + 1
            continue
        if c == "{":
            if depth == 0:
                prelude_end = i
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                rules.append((css[start:prelude_end].strip(), css[prelude_end + 1:i]))
                start = i + 1
        elif c == ";" and depth == 0:
            rules.append((css[start:i].strip(), None))
            start = i + 1
        i += 1
    return rules


def split_selectors(prelude: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for c in prelude:
        depth += (c in "([") - (c in ")]")
        if c == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += c
    return out + [cur]


def selector_classes(selector: str) -> set[str]:
    """The classes an element must have for selector to match it (a lower bound:
    attribute values and :not/:is/:where/:has arguments are not counted)."""
    bare = re.sub(r"\[[^\]]*\]", "", selector)
    bare = re.sub(r":(?:not|is|where|has|matches)\([^()]*\)", "", bare)
    return set(re.findall(r"\.(-?[_a-zA-Z][\w-]*)", bare))


def prune_css(css: str, classes: set[str]) -> str:
    """css without the rules that name a class the page does not use."""
    out = []
    for prelude, body in css_rules(css):
        if body is None:
            out.append(prelude + ";")
        elif prelude.startswith("@"):
            if re.match(r"@(media|supports|layer)\b", prelude):
                inner = prune_css(body, classes)
                if inner.strip():
                    out.append(f"{prelude}{{{inner}}}")
            elif not prelude.startswith("@font-face"):
                out.append(f"{prelude}{{{body}}}")
        else:
            keep = [s for s in split_selectors(prelude)
                    if selector_classes(s) <= classes]
            if keep:
                out.append(",".join(s.strip() for s in keep) + "{" + body + "}")
    return "".join(out)


def lighten_notebook(output: str) -> str:
    """A notebook page with its inline Jupyter CSS pruned and its loaders dropped."""
    classes = set()
    for attr in re.findall(r'class="([^"]*)"', output):
        classes.update(attr.split())
    classes.update({"jp-mod-active", "jp-mod-selected", "jp-mod-noOutputs",
                    "jp-mod-noInput"})

    def style(m: re.Match) -> str:
        body = m.group(2)
        if len(body) < 20_000:
            return m.group(0)
        return m.group(1) + prune_css(body, classes) + m.group(3)

    output = re.sub(r"(<style[^>]*>)(.*?)(</style>)", style, output, flags=re.S)
    output = re.sub(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->",
                    "", output, flags=re.S)
    output = re.sub(r'<script type="module">\s*document\.addEventListener\('
                    r'"DOMContentLoaded", async \(\) => \{\s*const diagrams = '
                    r'document\.querySelectorAll\("\.jp-Mermaid.*?</script>', "",
                    output, flags=re.S)
    return output


# --- the hooks ----------------------------------------------------------------


def on_config(config):
    # `mkdocs build` runs from .venv/bin, so the repository root is not on sys.path
    # (and MkDocs restores sys.path after loading a hook); the hooks that import
    # tools.* (tools/downloads.py) need it from on_files on.
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    return config


def resolve_page_links(html: str, page, files) -> str:
    """Links to pages' source files (`20-kv-cache.md`) as the pages' URLs.

    MkDocs does this for Markdown pages; mkdocs-jupyter leaves a notebook's links
    as written, so the book's usual `[chapter 20](20-kv-cache.md)` would 404 there.
    """
    base = posixpath.dirname(page.file.src_uri)

    def fix(m: re.Match) -> str:
        target, fragment = m.group(2), m.group(3) or ""
        found = files.get_file_from_path(posixpath.normpath(posixpath.join(base,
                                                                           target)))
        if found is None or not found.is_documentation_page():
            return m.group(0)
        return f'{m.group(1)}{relative(found.url, page.url)}{fragment}"'

    return re.sub(r'(<a\b[^>]*?\bhref=")(?![a-z][\w+.-]*:|/|#)([^"#?]+\.(?:md|py|'
                  r'ipynb))(#[^"]*)?"', fix, html)


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".md"):
        html = resolve_page_links(html, page, files)
    urls = chapter_urls(files)
    html = link_chapters(html, urls, page.url)
    glossary = files.get_file_from_path(GLOSSARY)
    if glossary is None:
        return html
    terms = glossary_terms(Path(glossary.abs_src_path).read_text(encoding="utf-8"))
    if page.file.src_uri == GLOSSARY:
        return anchor_glossary(html, terms)
    return link_glossary(html, terms, glossary.url, page.url)


def on_post_page(output, page, config):
    if 'class="mermaid"' in output:
        src = relative(MERMAID, page.url)
        src = src if src.startswith(".") else "./" + src  # a module path, not a name
        tag = (f'<script type="module">import mermaid from "{src}";'
               "window.mermaid = mermaid;</script>")
        # before the first extra script, as mkdocs.yml's extra_javascript would be
        at = output.find("<script src=", output.find("assets/javascripts/bundle."))
        output = output[:at] + tag + "\n" + output[at:] if at >= 0 else \
            output.replace("</body>", tag + "</body>")
    if '<div class="jupyter-wrapper">' in output:
        output = lighten_notebook(output)
    return output


def strip_code(text: str) -> str:
    return re.sub(r"<pre>.*?</pre>", " ", text, flags=re.S)


def on_post_build(config):
    path = Path(config["site_dir"]) / "search" / "search_index.json"
    if not path.is_file():
        return
    index = json.loads(path.read_text(encoding="utf-8"))
    for doc in index.get("docs", []):
        doc["text"] = strip_code(doc.get("text", ""))
    path.write_text(json.dumps(index, separators=(",", ":")), encoding="utf-8")

