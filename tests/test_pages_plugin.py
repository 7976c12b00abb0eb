"""The page harness itself: each test builds a tiny book and runs pytest on it.

These are the promises the book relies on: an include is expanded as the site
build expands it, blocks share one namespace per page, a wrong printed output or a
misspelled section fails, and nothing that looks like Python is silently skipped.
"""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

MKDOCS_YML = """\
site_name: t
markdown_extensions:
  - pymdownx.snippets:
      base_path: ["."]
      check_paths: true
      dedent_subsections: true
  - pymdownx.superfences:
      custom_fences:
        - name: mermaid
          class: mermaid
          format: !!python/name:pymdownx.superfences.fence_code_format
"""

MODULE = '''\
import math


# --8<-- [start:area]
def area(r: float) -> float:
    """Area of a circle of radius r."""
    return math.pi * r * r
# --8<-- [end:area]


class Shape:
    # --8<-- [start:indented]
    def double(self, x):
        return 2 * x
    # --8<-- [end:indented]
'''


@pytest.fixture
def book(pytester):
    """A book with mkdocs.yml and one module with snippet sections."""
    pytester.makefile(".yml", mkdocs=MKDOCS_YML)
    pytester.mkpydir("pkg")
    (pytester.path / "pkg" / "geometry.py").write_text(MODULE)
    (pytester.path / "docs").mkdir()
    return pytester


def page(book, text: str) -> None:
    (book.path / "docs" / "page.md").write_text(textwrap.dedent(text))


def run(book, *args, coverage: bool = False):
    """pytest on the book; the `definitions run` items only when asked for."""
    select = () if coverage else ("-k", "not definitions")
    return book.runpytest_inprocess("-p", "tools.pages_plugin", "-p", "no:codeblocks",
                                    "-p", "no:cacheprovider", "docs", *select, *args)


def test_include_is_expanded_and_output_checked(book):
    page(book, '''\
        # Page

        ```python title="the include"
        import math
        --8<-- "pkg/geometry.py:area"
        ```

        ```python
        print(round(area(1.0), 4))
        ```

        <!--pytest-codeblocks:expected-output-->
        ```text
        3.1416
        ```
        ''')
    result = run(book, "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*docs/page.md::line 3 PASSED*",
                                 "*docs/page.md::line 8 PASSED*"])


def test_wrong_output_fails_and_names_the_page_line(book):
    page(book, '''\
        ```python
        print(1 + 1)
        ```

        <!--pytest-codeblocks:expected-output-->
        ```text
        3
        ```
        ''')
    result = run(book)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*docs/page.md::line 1*", "*-3*", "*+2*"])


def test_exception_names_the_page_line(book):
    page(book, '''\
        Some prose.

        ```python
        x = 1
        y = x / 0
        ```
        ''')
    result = run(book)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*at page.md:5: y = x / 0*", "*ZeroDivisionError*"])


def test_misspelled_section_is_a_collection_error(book):
    page(book, '''\
        ```python
        --8<-- "pkg/geometry.py:aera"
        ```
        ''')
    result = run(book)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*aera*"])


def test_blocks_share_one_namespace_and_run_main(book):
    page(book, '''\
        ```python
        import math
        total = 1
        ```

        Prose between blocks.

        ```py
        total += 1
        if __name__ == "__main__":
            print(total)
        ```

        <!--pytest-codeblocks:expected-output-->
        ```text
        2
        ```
        ''')
    run(book).assert_outcomes(passed=2)


def test_each_page_starts_with_a_fresh_namespace(book):
    page(book, '''\
        ```python
        secret = 42
        ```
        ''')
    (book.path / "docs" / "other.md").write_text(
        "```python\nprint(secret)\n```\n")
    result = run(book)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*NameError*secret*"])


def test_cont_and_dedented_method_sections_work(book):
    page(book, '''\
        ```python
        --8<-- "pkg/geometry.py:indented"
        ```

        <!--pytest-codeblocks:cont-->
        ```python
        print(double(None, 21))
        ```

        <!--pytest-codeblocks:expected-output-->
        ```text
        42
        ```
        ''')
    run(book).assert_outcomes(passed=1)


def test_fence_inside_admonition_runs(book):
    page(book, '''\
        ??? success "Solution"

            ```python
            raise ValueError("inside the solution")
            ```
        ''')
    result = run(book)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ValueError: inside the solution*"])


@pytest.mark.parametrize("fence", ["```pycon", "~~~python", "```ipython"])
def test_python_fence_that_would_not_run_is_refused(book, fence):
    closing = "~~~" if fence.startswith("~") else "```"
    page(book, f"{fence}\nprint('never run')\n{closing}\n")
    result = run(book)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*would not be run*"])


def test_skip_needs_a_reason(book):
    page(book, '''\
        <!--pytest.mark.skip-->
        ```python
        print("skipped")
        ```
        ''')
    result = run(book)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*needs a reason=*"])


def test_skip_with_reason_is_reported_as_skipped(book):
    page(book, '''\
        <!--pytest.mark.skip(reason="shows an API that needs a GPU")-->
        ```python
        raise SystemExit("must not run")
        ```
        ''')
    run(book).assert_outcomes(skipped=1)


def test_bash_block_runs_in_root_and_is_checked(book):
    page(book, '''\
        ```bash
        python -c "print(6 * 7)"
        ```

        <!--pytest-codeblocks:expected-output-->
        ```text
        41
        ```
        ''')
    run(book).assert_outcomes(failed=1)


def test_mermaid_and_text_fences_are_not_run(book):
    page(book, '''\
        ```mermaid
        graph LR; a-->b
        ```

        ```text
        not python
        ```
        ''')
    result = run(book)
    assert result.ret == 5  # no tests collected: nothing was mistaken for code


MACROS_YML = """\
plugins:
  - macros:
      module_name: tools/figures
      render_by_default: false
      on_undefined: strict
      on_error_fail: true
"""


@pytest.fixture
def bound_book(book, monkeypatch, tmp_path):
    """The book with mkdocs.yml's figure binding and a results folder of its own."""
    (book.path / "mkdocs.yml").write_text(MKDOCS_YML + MACROS_YML)
    results = tmp_path / "results"
    results.mkdir()
    (results / "speed.json").write_text(
        '{"command": "make bench", "date": "2026-01-02T03:04:05+00:00", "machine": '
        '{"cpu": "C", "cores": 2, "python": "3", "numpy": "2", "blas": "b"}, '
        '"results": {"gflops": 53.16}}')
    monkeypatch.setenv("MINIGPT_RESULTS", str(results))
    return book


def test_figures_are_rendered_before_the_blocks_run(bound_book):
    page(bound_book, '''\
        ---
        render_macros: true
        ---
        BLAS ran at {{ fig("speed", "gflops", ".1f") }} GFLOPS, {{ num(
            v("speed", "gflops") / 2, ".1f") }} GFLOPS a core.

        {{ measured("speed") }}

        ```python
        print("{{ fig('speed', 'gflops', '.2f') }}")
        ```

        <!--pytest-codeblocks:expected-output-->
        ```text
        53.16
        ```

        ```python
        raise ValueError("at the right line")
        ```
        ''')
    result = run(bound_book, "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*docs/page.md::line 9 PASSED*",
                                 "*at page.md:19: raise ValueError*"])


def test_a_misspelled_figure_fails_naming_page_and_key(bound_book):
    page(bound_book, '''\
        ---
        render_macros: true
        ---
        BLAS ran at {{ fig("speed", "gflop", ".1f") }} GFLOPS.

        ```python
        print(1)
        ```
        ''')
    result = run(bound_book)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*docs/page.md: topic 'speed' has no figure 'gflop'*"])


def test_a_page_that_does_not_opt_in_is_not_rendered(bound_book):
    page(bound_book, '''\
        Braces stay: {{ fig("speed", "nothing") }}.

        ```python
        print("{{ 1 }}")
        ```

        <!--pytest-codeblocks:expected-output-->
        ```text
        {{ 1 }}
        ```
        ''')
    run(bound_book).assert_outcomes(passed=1)


# --- A page runs the code it shows -------------------------------------------

BYPASS = '''\
    ```python
    --8<-- "pkg/geometry.py:area"
    ```

    ```python
    import math
    {call}
    ```
    '''


def test_a_listing_the_page_never_calls_fails(book):
    """Shown, then bypassed (the package's copy called instead): the page fails."""
    page(book, BYPASS.format(call="theirs = lambda r: math.pi * r * r  # a copy\n"
                                  "    print(theirs(1.0) > 3)"))
    result = run(book, coverage=True)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*never calls them*", "*area (page line 2)*"])


def test_a_listing_the_page_calls_passes(book):
    page(book, BYPASS.format(call="print(area(1.0) > 3)"))
    run(book, coverage=True).assert_outcomes(passed=3)


def test_a_listing_called_one_level_down_counts(book):
    """The page's own caller reaches the page's own definition."""
    page(book, BYPASS.format(call="def twice(r):\n        return 2 * area(r)\n"
                                  "    print(twice(1.0) > 6)"))
    run(book, coverage=True).assert_outcomes(passed=3)


def test_shown_not_run_needs_a_reason_and_a_real_name(book):
    text = BYPASS.format(call="print(1)")
    page(book, text + "\n<!-- shown-not-run: area: read, not run -->\n")
    run(book, coverage=True).assert_outcomes(passed=3)
    page(book, text + "\n<!-- shown-not-run: arena: a typo -->\n")
    run(book, coverage=True).assert_outcomes(passed=2, failed=1)


def test_a_protocol_stub_needs_no_call(book):
    page(book, '''\
        ```python
        class Model:
            def forward(self, ids):
                """Logits for ids."""
                ...
        ```
        ''')
    run(book, coverage=True).assert_outcomes(passed=2)
