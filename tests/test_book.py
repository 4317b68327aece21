"""The rendered book, checked the way a reader meets it.

The book is built once per test session (fixture ``built_book`` in conftest.py: fast mode, ``-W --keep-going``,
every notebook executed afresh), in the background from the first test on; the tests that read it run last. Then:

- the build succeeded and every page listed in ``_toc.yml`` became HTML;
- every internal link and every local asset reference points at a file (and an anchor) that exists, and no
  page loads a script, stylesheet or image from another host (static checks, no browser needed);
- in headless Chromium, served from localhost: every equation typeset by MathJax, every image loaded, every
  widget rendered, solutions folded, no console error, no request to any host but localhost. Screenshots of a
  few pages go to ``test-artifacts/``.
- a small book with a failing cell fails to build with the same settings (so the checks above mean something),
  and its widget page works in the browser without a kernel.
"""

from __future__ import annotations

import contextlib
import html.parser
import re
import shutil
import textwrap
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from conftest import ARTIFACTS, REPO, build_book, report

pytestmark = pytest.mark.slow

SCREENSHOT_PAGES = ("book/intro", "book/notation", "book/06_training_vae", "book/references")


# ---------------------------------------------------------------------------------------------------- helpers
def toc_docnames(toc_path: Path = REPO / "_toc.yml") -> list[str]:
    """Every file named in a Jupyter Book ``_toc.yml`` (root first), without extension."""
    toc = yaml.safe_load(toc_path.read_text())
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or ():
            if "file" in entry:
                names.append(entry["file"])
            for key in ("chapters", "sections", "parts"):
                walk(entry.get(key))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return [re.sub(r"\.(md|ipynb)$", "", n) for n in names]


DOCNAMES = toc_docnames()


class _Refs(html.parser.HTMLParser):
    """Collects element ids and the URLs of links (``a href``) and of loaded resources from one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.resources: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag in ("script", "img", "source", "iframe") and a.get("src"):
            self.resources.append((tag, a["src"]))
        elif tag == "link" and a.get("href") and set((a.get("rel") or "").split()) & {"stylesheet", "icon", "preload"}:
            self.resources.append((tag, a["href"]))


def _parse(path: Path) -> _Refs:
    p = _Refs()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _html_pages(root: Path) -> list[Path]:
    skip = {"_static", "_sources", "_images", "reports"}
    return sorted(p for p in root.rglob("*.html") if not skip & set(p.relative_to(root).parts))


def _require_success(build):
    if build.returncode != 0:
        problems = [
            ln
            for ln in build.log.splitlines()
            if re.search(r"(WARNING|ERROR|CRITICAL):|Error\b", ln) and "[IPKernelApp]" not in ln
        ]
        pytest.fail(
            f"the book build failed (exit code {build.returncode}); its warnings and errors:\n"
            + "\n".join(problems[-40:] or build.log.splitlines()[-30:])
            + f"\n(full log: {ARTIFACTS / 'book-build.log'})"
        )


# ---------------------------------------------------------------------------------------------- the sources
@pytest.mark.parametrize(
    "path", sorted((REPO / "book").glob("*.ipynb")) + sorted((REPO / "labs").glob("*/*.ipynb")), ids=lambda p: p.name
)
def test_notebook_is_valid_nbformat_with_cell_ids(path):
    """Every cell has a unique id (nbformat 4.5): without one, nbformat warns on every read and a future nbformat
    refuses the notebook; cell ids are also what links to a cell rely on."""
    import json

    import nbformat

    raw = json.loads(path.read_text(encoding="utf-8"))  # as stored: nbformat.reads would add missing ids itself
    assert (raw["nbformat"], raw["nbformat_minor"]) >= (4, 5), (raw["nbformat"], raw["nbformat_minor"])
    missing = [i for i, cell in enumerate(raw["cells"]) if "id" not in cell]
    assert not missing, f"{path.name}: cells without an id: {missing}"
    ids = [cell["id"] for cell in raw["cells"]]
    assert len(set(ids)) == len(ids), f"{path.name}: repeated cell ids"
    nbformat.validate(nbformat.from_dict(raw))


# ------------------------------------------------------------------------------------------------ the build
def test_book_builds_with_warnings_as_errors(built_book):
    _require_success(built_book)
    reports = sorted((built_book.html / "reports").rglob("*.err.log")) if (built_book.html / "reports").is_dir() else []
    assert not reports, f"notebooks failed to execute: {[str(r) for r in reports]}"


def test_every_toc_page_became_html(built_book):
    missing = [d for d in DOCNAMES if not (built_book.html / f"{d}.html").is_file()]
    assert not missing, f"pages in _toc.yml with no HTML: {missing} (see {ARTIFACTS / 'book-build.log'})"
    assert (built_book.html / "index.html").is_file()


def test_mathjax_and_widget_code_are_served_by_the_book(built_book):
    _require_success(built_book)
    static = built_book.html / "_static"
    assert (static / "mathjax" / "tex-chtml.js").is_file(), "sphinx-mathjax-offline did not copy MathJax"
    assert any((static / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff")), "MathJax fonts missing"
    assert (static / "widgets" / "embed.js").is_file(), "the vendored ipywidgets bundle was not copied"
    pages_with_math = 0
    for page in _html_pages(built_book.html):
        text = page.read_text(encoding="utf-8")
        if 'class="math notranslate' in text:
            pages_with_math += 1
            assert "_static/mathjax/tex-chtml.js" in text, f"{page} has math but does not load the local MathJax"
        if "application/vnd.jupyter.widget-state+json" in text:
            assert "_static/widgets/embed.js" in text, f"{page} has widget state but no local widget renderer"
    assert pages_with_math >= 1


def test_no_page_loads_anything_from_another_host(built_book):
    _require_success(built_book)
    offenders = []
    for page in _html_pages(built_book.html):
        for tag, url in _parse(page).resources:
            if urlsplit(url).scheme in ("http", "https") or url.startswith("//"):
                offenders.append(f"{page.relative_to(built_book.html)}: <{tag}> {url}")
    assert not offenders, "assets from other hosts:\n" + "\n".join(offenders)


ROLE = re.compile(r"\{(glue|cite|numref|ref|eq|doc|term|download|math)(:[a-z]+)?\}")


def test_no_page_shows_a_myst_role_unrendered(built_book):
    """A stray backtick next to a role (``{glue:text}`x:.0f`%` ``) turns the rest of the paragraph into inline
    code, and the reader sees ``{glue:text}`` and the key instead of the number; Sphinx gives no warning for it."""
    _require_success(built_book)
    shown = []
    for page in _html_pages(built_book.html):
        text = page.read_text(encoding="utf-8")
        text = re.sub(r'<div class="highlight[^"]*"><pre>.*?</pre></div>', "", text, flags=re.S)  # code cells
        text = re.sub(r"<script.*?</script>", "", text, flags=re.S)
        for m in ROLE.finditer(text):
            around = re.sub(r"<[^>]+>", "", text[max(0, m.start() - 80) : m.end() + 40])
            shown.append(f"{page.relative_to(built_book.html)}: ...{' '.join(around.split())}...")
    assert not shown, "\n".join(shown)


def test_every_internal_link_and_asset_resolves(built_book):
    _require_success(built_book)
    root = built_book.html
    ids_cache: dict[Path, set[str]] = {}
    broken = []
    for page in _html_pages(root):
        refs = _parse(page)
        ids_cache[page] = refs.ids
        for url in refs.links + [u for _, u in refs.resources]:
            parts = urlsplit(url)
            if parts.scheme or url.startswith("//"):  # http(s), mailto, data: not internal
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file() or root.resolve() not in target.parents:
                broken.append(f"{page.relative_to(root)}: {url} (no such file)")
                continue
            if parts.fragment and target.suffix == ".html":
                if target not in ids_cache:
                    ids_cache[target] = _parse(target).ids
                if unquote(parts.fragment) not in ids_cache[target]:
                    broken.append(f"{page.relative_to(root)}: {url} (no anchor #{parts.fragment})")
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(sorted(set(broken))[:60])


# ----------------------------------------------------------------------------------------------- the browser
# Runs in the page once it has loaded: waits for MathJax to finish typesetting, then reports what a reader sees.
PAGE_REPORT_JS = """async () => {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
    const imgs = Array.from(document.images);
    await Promise.all(imgs.map(img => { img.loading = 'eager';
        return img.complete ? null : new Promise(r => { img.onload = img.onerror = r; }); }));
    const maths = Array.from(document.querySelectorAll('.math'));
    const main = document.querySelector('main') || document.body;
    return {
        mathjax_loaded: !!(window.MathJax && MathJax.startup),
        math_elements: maths.length,
        math_unrendered: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
        mathjax_errors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.getAttribute('data-mjx-error')
                                                                                    || e.textContent.slice(0, 80)),
        // the prose a reader sees as text: code (which may quote TeX) and typeset equations left out
        text: (() => { const c = main.cloneNode(true);
            c.querySelectorAll('pre, code, .highlight, mjx-container, script, style').forEach(e => e.remove());
            return c.textContent; })(),
        broken_images: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.currentSrc || i.src),
        n_images: imgs.length,
        widget_state: !!document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]'),
        widget_views: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
        widgets_rendered: document.querySelectorAll(
            '.jupyter-widgets.widget-container, .jupyter-widgets.widget-inline-hbox, .widget-slider').length,
        widget_errors: document.querySelectorAll('.jupyter-widgets-error-widget, .widget-error').length,
        solutions_open: Array.from(document.querySelectorAll('.solution')).filter(s => {
            const body = s.querySelector(':scope > section, :scope > p:not(.admonition-title)');
            return body && body.checkVisibility({opacityProperty: true, visibilityProperty: true})
                && body.getBoundingClientRect().height > 1; }).length,
        n_solutions: document.querySelectorAll('.solution').length,
    };
}"""


def _screenshot_name(docname: str) -> str:
    return docname.replace("/", "__") + ".png"


@pytest.mark.browser
@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_in_chromium(docname, built_book, open_page, serve):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # installed: the browser fixture checked

    _require_success(built_book)
    with serve(built_book.html) as base:
        page, log = open_page(f"{base}/{docname}.html")
        seen = page.evaluate(PAGE_REPORT_JS)
        if seen["widget_views"]:  # the widget renderer starts on "load": wait until it has drawn something
            with contextlib.suppress(PlaywrightTimeout):
                page.wait_for_selector(".jupyter-widgets", timeout=15_000)
            page.wait_for_timeout(500)
            seen = page.evaluate(PAGE_REPORT_JS)
        if docname in SCREENSHOT_PAGES:
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / _screenshot_name(docname)
            page.screenshot(path=str(shot), full_page=True)
            report(f"screenshot: {shot}")
    problems = log.problems()
    if seen["math_elements"]:
        if not seen["mathjax_loaded"]:
            problems.append("the page has math but MathJax did not load")
        problems += [f"equation not typeset by MathJax: {t!r}" for t in seen["math_unrendered"]]
    problems += [f"MathJax error: {e}" for e in seen["mathjax_errors"]]
    for raw in ("$$", "\\begin{", "\\end{", "\\frac", "\\mathbb"):
        if raw in seen["text"]:
            at = seen["text"].index(raw)
            problems.append(f"raw TeX {raw!r} in the text of the page: ...{seen['text'][max(0, at - 60) : at + 60]!r}")
    problems += [f"image did not load: {src}" for src in seen["broken_images"]]
    if seen["widget_views"] and not seen["widgets_rendered"]:
        problems.append(f"{seen['widget_views']} widget views were saved but none rendered")
    if seen["widget_errors"]:
        problems.append(f"{seen['widget_errors']} widgets failed to render")
    if seen["solutions_open"]:
        problems.append(
            f"{seen['solutions_open']} of {seen['n_solutions']} solutions are not folded "
            "(give each {solution} `:class: dropdown`)"
        )
    assert not problems, f"{docname}:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------ a failing cell fails the build
MYST_HEADER = """\
---
jupytext:
  text_representation:
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""

GOOD_PAGE = MYST_HEADER + """

# Good page

Display math:

$$
\\mathrm{KL}(q \\,\\|\\, p) = \\int q(z) \\log \\frac{q(z)}{p(z)} \\, dz \\ge 0.
$$

```{code-cell} ipython3
import torch
from dgmlab import widgets

strip = torch.linspace(0, 1, 5)[:, None].expand(5, 784).contiguous()  # five grey levels
widgets.interpolation_slider(strip, scale=2)
```

```{code-cell} ipython3
widgets.interpolation_strip(strip, title="the static fallback");
```
"""

BAD_PAGE = MYST_HEADER + """

# Bad page

```{code-cell} ipython3
raise RuntimeError("this cell is broken on purpose")
```
"""


def test_a_failing_cell_fails_the_build_and_widgets_render_without_a_kernel(tmp_path, open_page, serve):
    """The book's own settings (``_config.yml``, ``-W --keep-going``) on a two-page book: one page raises."""
    src = tmp_path / "src"
    (src / "book").mkdir(parents=True)
    shutil.copy(REPO / "_config.yml", src / "_config.yml")
    shutil.copy(REPO / "references.bib", src / "references.bib")
    shutil.copytree(REPO / "book" / "_static", src / "book" / "_static")
    (src / "book" / "good.md").write_text(GOOD_PAGE)
    (src / "book" / "bad.md").write_text(BAD_PAGE)
    (src / "_toc.yml").write_text(
        textwrap.dedent("""\
        format: jb-book
        root: book/good
        chapters:
          - file: book/bad
        """)
    )
    build = build_book(src, tmp_path / "out")
    assert build.returncode != 0, "a notebook that raises did not fail the build"
    assert "bad.md" in build.log and "this cell is broken on purpose" in build.log, build.tail()
    assert "good.md: WARNING" not in build.log, build.tail()

    # --keep-going still wrote the good page: its saved widget state must work with no kernel
    with serve(build.html) as base:
        page, log = open_page(f"{base}/book/good.html")
        page.wait_for_selector(".dgmlab-interpolation-slider .noUi-handle", timeout=20_000)
        # the matplotlib figure of the static fallback reached the page (the kernel's inline backend worked)
        assert (
            page.eval_on_selector_all(
                ".cell_output img", "els => els.filter(i => i.naturalWidth > 0 && !i.src.startsWith('blob:')).length"
            )
            == 1
        )
        page.evaluate("() => MathJax.startup.promise")
        assert page.locator("mjx-container").count() >= 1

        def grey_level():
            return page.eval_on_selector(
                ".dgmlab-interpolation-slider img",
                """img => { const c = document.createElement('canvas'); c.width = img.naturalWidth;
                   c.height = img.naturalHeight; const g = c.getContext('2d'); g.drawImage(img, 0, 0);
                   return g.getImageData(c.width / 2, c.height / 2, 1, 1).data[0]; }""",
            )

        page.wait_for_function(
            "() => { const i = document.querySelector('.dgmlab-interpolation-slider img');"
            " return i && i.complete && i.naturalWidth > 0; }"
        )
        assert grey_level() == 0
        page.locator(".dgmlab-interpolation-slider .noUi-handle").focus()
        page.keyboard.press("End")
        page.wait_for_function(
            "() => document.querySelector('.dgmlab-interpolation-slider .widget-readout').textContent === '1.00'"
        )
        page.wait_for_timeout(300)
        assert grey_level() == 255
    assert not log.problems(), "\n".join(log.problems())
