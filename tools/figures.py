"""Bind the book's prose to the stored benchmark results: no measured figure is typed.

A page names a figure by its results file and key; the build writes the number.
This module is mkdocs-macros-plugin's `module_name` (see mkdocs.yml), and the page
tests (tools/pages_plugin.py) and tests/test_figures.py render through it too.

The syntax, on a page that opts in:

* Markdown page: front matter at the very top, `render_macros: true`
  (mkdocs.yml sets `render_by_default: false`, so other pages, and the `{{` in their
  code, are never touched).
* Notebook (jupytext percent format, rendered by mkdocs-jupyter): the jupytext
  header at the very top of the .py file,

      # ---
      # jupyter:
      #   render_macros: true
      # ---

  which jupytext reads as the notebook's metadata. Only Markdown cells are rendered,
  each on its own (a `{% set %}` does not carry from one cell to the next).

Then, in prose:

* `{{ v("decode", "decode.transformers.decode_tok_s") }}`: the raw value stored at
  that dotted key of the "results" object of benchmarks/results/decode.json (an
  integer part indexes a list; a key that itself holds dots or spaces, such as
  "top-p 0.9", is matched whole);
* `{{ fig("decode", "decode.transformers.decode_tok_s", ".1f") }}`: the same value
  formatted with a Python format spec (a float needs one; ".0%" prints a fraction
  as a percentage);
* `{{ num(v("matmul", "ladder.gflops.blas") / v("matmul", "ladder.gflops.ijk"),
  ".0f") }}`: a figure computed from stored values (ratios, percentages), formatted;
* `{{ measured("matmul", "layout") }}`: one uniform box naming, for each topic, the
  command that wrote the file, the date, the machine (CPU, cores, Python, NumPy,
  BLAS) and how busy it was (the load averages recorded before and after the run;
  a file without them, or above half the cores, says so), from the file itself.
  With $MINIGPT_REQUIRE_QUIET set, such a file fails the build instead. It is
  HTML, so it reads the same on Markdown pages and in notebooks.

A missing file or key raises FigureError naming the page, the topic and the key;
with `on_error_fail: true` and `on_undefined: strict` a misspelled key or macro
fails `mkdocs build`, and the page tests fail the same way.

Results are read from benchmarks/results/, or from the folder named by the
environment variable MINIGPT_RESULTS (the tests render against scaled copies), at
build time, every build: `make bench` then `make build` re-renders every page.

How notebooks are bound. mkdocs-jupyter replaces a notebook page's `render` with its
own, which reads the .py file with `jupytext.read` and converts it with nbconvert:
the Markdown that mkdocs-macros renders in `on_page_markdown` is never used. So
`on_pre_page_macros`, which mkdocs-macros calls for every page after
mkdocs-jupyter's `on_pre_page`, wraps that `render`: while it runs, `jupytext.read`
of this page's file returns the notebook with its Markdown cells rendered through
the plugin's own Jinja environment and these functions (both the HTML body and the
table of contents are read that way). An error in a cell raises out of the build.
The notebook's cache must stay off (`cache: false`): it is keyed on the file alone.

The rule that nothing measured is typed by hand is tests/test_figures.py: it scales
the results, renders every page and requires each figure with a unit to change;
`python -m tests.test_figures` prints how many figures each page binds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_ENV = "MINIGPT_RESULTS"
BOX_TITLE = "How these figures were measured"
# mkdocs' own front-matter pattern (mkdocs.utils.meta.YAML_RE).
FRONT_MATTER = re.compile(r"^-{3}[ \t]*\n(.*?\n)(?:\.{3}|-{3})[ \t]*\n", re.S)
LOG = logging.getLogger("mkdocs.plugins.figures")


QUIET_ENV = "MINIGPT_REQUIRE_QUIET"


def load_verdict(record: dict) -> tuple[str, str]:
    """("quiet" | "busy" | "unknown", a note for the page) from a results record.

    Busy means a 1-minute load average above half the cores, before or after the
    run: other work then shared the cores, and timings read slow.
    """
    load = record.get("load") or {}
    cores = load.get("cores") or (record.get("machine") or {}).get("cores") or 1
    seen = [x[0] for x in (load.get("before"), load.get("after")) if x]
    if not seen:
        return "unknown", ("load average not recorded: the machine may have been "
                           "busy, so read its timings as lower bounds of speed")
    shown = " and ".join(f"{x:.2f}" for x in seen)
    if max(seen) > cores / 2:
        return "busy", (f"measured while the machine was busy (load average {shown} "
                        f"on {cores} cores): its timings are slower than the code")
    return "quiet", f"load average {shown} on {cores} cores (quiet)"


class FigureError(Exception):
    """A page names a figure that no results file holds, or cannot format it."""


def results_dir() -> Path:
    """The folder of results files: $MINIGPT_RESULTS, else benchmarks/results."""
    folder = os.environ.get(RESULTS_ENV)
    return Path(folder) if folder else RESULTS


def lookup(results: Any, key: str) -> Any:
    """The value at a dotted key; a part may itself hold dots ("top-p 0.9")."""
    parts, node, i = key.split("."), results, 0
    while i < len(parts):
        if isinstance(node, list):
            if not re.fullmatch(r"-?\d+", parts[i]) or not -len(node) <= int(
                    parts[i]) < len(node):
                raise KeyError(f"{'.'.join(parts[:i + 1])!r}: a list of {len(node)}")
            node, i = node[int(parts[i])], i + 1
            continue
        if not isinstance(node, dict):
            raise KeyError(f"{'.'.join(parts[:i])!r} is a {type(node).__name__}, "
                           "not an object or list")
        # the longest run of parts that is a key, so "top-p 0.9" matches whole
        for j in range(len(parts), i, -1):
            if ".".join(parts[i:j]) in node:
                node, i = node[".".join(parts[i:j])], j
                break
        else:
            keys = ", ".join(sorted(map(str, node)))
            where = ".".join(parts[:i]) or "results"
            raise KeyError(f"{where!r} has no {parts[i]!r} (it has: {keys})")
    return node


class Figures:
    """v, fig, num and measured, for one page (or a page getter) and one folder."""

    def __init__(self, page: str | Callable[[], str], folder: Path | None = None):
        self._page = page if callable(page) else (lambda: page)
        self._folder = folder
        self._cache: dict[Path, tuple[int, dict]] = {}

    @property
    def page(self) -> str:
        return self._page()

    def fail(self, message: str) -> FigureError:
        return FigureError(f"{self.page}: {message}")

    def record(self, topic: str) -> dict:
        """The whole results file of topic (re-read when the file changes)."""
        path = (self._folder or results_dir()) / f"{topic}.json"
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            raise self.fail(f"no results file for topic {topic!r} ({path}); "
                            f"run `python -m benchmarks {topic}`") from None
        if path not in self._cache or self._cache[path][0] != stamp:
            self._cache[path] = (stamp, json.loads(path.read_text(encoding="utf-8")))
        return self._cache[path][1]

    def v(self, topic: str, key: str) -> Any:
        """The raw value at key in the "results" object of topic's file."""
        try:
            return lookup(self.record(topic)["results"], key)
        except KeyError as exc:
            raise self.fail(f"topic {topic!r} has no figure {key!r}: "
                            f"{exc.args[0]}") from None

    def fig(self, topic: str, key: str, fmt: str = "") -> str:
        """The value at key, formatted with a format spec (".1f", ".0%", ",")."""
        value = self.v(topic, key)
        return self.format(value, fmt, f"{topic!r} {key!r}")

    def num(self, value: Any, fmt: str) -> str:
        """A figure computed from stored values, formatted with a format spec."""
        return self.format(value, fmt, "num()")

    def format(self, value: Any, fmt: str, what: str) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{what} is {value!r}, not a number")
        if isinstance(value, float) and not fmt:
            raise self.fail(f"{what} is a float: give a format, e.g. '.1f'")
        try:
            return format(value, fmt)
        except ValueError as exc:
            raise self.fail(f"{what}: bad format {fmt!r}: {exc}") from None

    def measured(self, *topics: str) -> str:
        """One box naming, per topic, the command, date and machine of its file."""
        if not topics:
            raise self.fail("measured() needs at least one topic")
        items = "".join(f"<li>{self.provenance(t)}</li>" for t in topics)
        return (f'<div class="admonition info figures-measured">'
                f'<p class="admonition-title">{BOX_TITLE}</p>'
                f"<ul>{items}</ul></div>")

    def provenance(self, topic: str) -> str:
        record = self.record(topic)
        try:
            m, command = record["machine"], record["command"]
            date = dt.datetime.fromisoformat(record["date"]).date().isoformat()
            machine = (f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, "
                       f"NumPy {m['numpy']}, {m['blas']}")
        except (KeyError, TypeError, ValueError) as exc:
            raise self.fail(f"{topic}.json lacks its command, date or machine: "
                            f"{exc!r}") from None
        e = html.escape
        return (f"<code>{e(topic)}</code>: <code>{e(command)}</code> on {e(date)}, "
                f"{e(machine)}; {e(self.load_note(topic, record))}")

    def load_note(self, topic: str, record: dict) -> str:
        """How busy the machine was, from the load averages the file recorded.

        With $MINIGPT_REQUIRE_QUIET set, a busy or unrecorded load fails the build.
        """
        verdict, note = load_verdict(record)
        if verdict != "quiet" and os.environ.get(QUIET_ENV):
            raise self.fail(f"{topic}.json was {note} (${QUIET_ENV} is set): "
                            f"measure it again on an idle machine")
        return note

    def macros(self) -> dict[str, Callable]:
        return {"v": self.v, "fig": self.fig, "num": self.num,
                "measured": self.measured}


# --- the same Jinja settings outside MkDocs (page tests, rule test) ----------


def macros_settings(root: Path = ROOT) -> dict:
    """The mkdocs-macros entry of root's mkdocs.yml `plugins:`."""
    import yaml

    class Loader(yaml.SafeLoader):
        """Reads mkdocs.yml without importing the objects it names."""

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)
    Loader.add_multi_constructor("!", lambda *_: None)
    config = yaml.load((root / "mkdocs.yml").read_text(encoding="utf-8"), Loader)
    for entry in config.get("plugins") or []:
        if isinstance(entry, dict) and "macros" in entry:
            return dict(entry["macros"] or {})
    raise FigureError(f"{root / 'mkdocs.yml'} does not configure the macros plugin")


def environment(settings: dict, figures: Figures) -> jinja2.Environment:
    """A Jinja environment as mkdocs-macros builds it from settings, with figures."""
    undefined = {"strict": jinja2.StrictUndefined, "keep": jinja2.DebugUndefined,
                 "silent": jinja2.Undefined}[settings.get("on_undefined", "keep")]
    options = {k[len("j2_"):]: v for k, v in settings.items()
               if k.startswith("j2_") and v}
    env = jinja2.Environment(undefined=undefined, **options)
    env.globals.update(figures.macros())
    return env


def split_front_matter(text: str) -> tuple[str, str, dict]:
    """(front matter as written, the rest, its YAML) of a Markdown page."""
    import yaml

    match = FRONT_MATTER.match(text)
    if not match:
        return "", text, {}
    meta = yaml.safe_load(match.group(1)) or {}
    return match.group(0), text[match.end():], meta if isinstance(meta, dict) else {}


def render_markdown(text: str, page: str, root: Path = ROOT,
                    folder: Path | None = None) -> str:
    """A Markdown page as the site renders its macros (unchanged if it opts out).

    The front matter is kept and the line count too, so page lines stay put.
    """
    head, body, meta = split_front_matter(text)
    if meta.get("render_macros") is not True:
        return text
    env = environment(macros_settings(root), Figures(page, folder))
    return head + render_string(env, body, page, {"page": meta},
                                where=lambda n: f"line {n + head.count(chr(10))}")


def render_string(env: jinja2.Environment, text: str, page: str,
                  variables: dict | None = None,
                  where: Callable[[int], str] = "line {} of a Markdown cell".format
                  ) -> str:
    """Render text, keeping its trailing newline; errors name the page."""
    try:
        out = env.from_string(text).render(**(variables or {}))
    except FigureError:
        raise
    except jinja2.TemplateSyntaxError as exc:
        raise FigureError(f"{page}: {where(exc.lineno)}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise FigureError(f"{page}: {exc.message}") from None
    return out + "\n" if text.endswith("\n") and not out.endswith("\n") else out


def notebook_opts_in(nb) -> bool:
    return nb.metadata.get("render_macros") is True


def render_notebook(nb, render: Callable[[str], str]):
    """A copy of a jupytext notebook, its Markdown cells rendered if it opts in."""
    import copy

    if not notebook_opts_in(nb):
        return nb
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = render(cell.source)
    return nb


def read_notebook(path: Path, page: str, root: Path = ROOT,
                  folder: Path | None = None):
    """A notebook .py file as the site renders it (Markdown cells bound)."""
    import jupytext

    nb = jupytext.read(path)
    if not notebook_opts_in(nb):
        return nb
    env = environment(macros_settings(root), Figures(page, folder))
    return render_notebook(nb, lambda s: render_string(env, s, page))


# --- the mkdocs-macros module ------------------------------------------------


def page_name(env) -> str:
    """docs/<page> of the page mkdocs-macros is rendering."""
    path = Path(env.conf["docs_dir"]).resolve() / env.page.file.src_path
    for base in (Path(env.project_dir).resolve(), ROOT):
        if base in path.parents:
            return path.relative_to(base).as_posix()
    return path.as_posix()


def define_env(env) -> None:
    """mkdocs-macros hook: declare v, fig, num and measured."""
    figures = Figures(lambda: page_name(env))

    def logged(fn: Callable) -> Callable:
        # `mkdocs build -q` hides the plugin's own warning: log the cause as an error
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except FigureError as exc:
                LOG.error("%s", exc)
                raise
        call.__name__, call.__doc__ = fn.__name__, fn.__doc__
        return call

    for name, fn in figures.macros().items():
        env.macro(logged(fn), name)


def on_pre_page_macros(env) -> None:
    """mkdocs-macros hook: bind the Markdown cells of an opted-in notebook page."""
    page = env.page
    if "render" not in vars(page):  # only mkdocs-jupyter replaces a page's render
        return
    convert = page.render
    path = os.path.abspath(page.file.abs_src_path)
    name = page_name(env)

    def render(config, files):
        def cell(text: str) -> str:
            return render_string(env.env, text, name, dict(env.variables))
        with notebook_reads(path, cell):
            return convert(config, files)

    page.render = render


@contextlib.contextmanager
def notebook_reads(path: str, render: Callable[[str], str]) -> Iterator[None]:
    """While active, jupytext.read(path) returns the notebook with cells rendered."""
    import jupytext

    read = jupytext.read

    def rendered_read(fp, *args, **kwargs):
        nb = read(fp, *args, **kwargs)
        if isinstance(fp, (str, os.PathLike)) and os.path.abspath(fp) == path:
            nb = render_notebook(nb, render)
        return nb

    jupytext.read = rendered_read
    try:
        yield
    finally:
        jupytext.read = read
