"""Shared fixtures: the book built once per session, a localhost web server, headless Chromium.

The browser is Debian's ``/usr/bin/chromium`` (``.ci/run`` installs it), driven by the PyPI package
``playwright`` (never ``playwright install``: it downloads a browser, and this machine has no network).
Tests that need it skip, saying why, only when Chromium or playwright truly is not there.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("DGMLAB_CHROMIUM", "/usr/bin/chromium")
# Flags that keep Chromium from phoning home: without them it tries Google's hosts at every start, and the
# closed network here refuses those connections many times over.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_SUMMARY: list[str] = []  # lines for the end-of-run summary (build time, screenshot paths)
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
LOCAL_SCHEMES = {"data", "blob", "about"}


# --------------------------------------------------------------------------------------------- the book build
@dataclass
class BookBuild:
    """One ``jupyter-book build`` of a source folder: where the HTML is, the log, the exit code, the time."""

    source: Path
    html: Path
    returncode: int
    log: str
    seconds: float

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.log.splitlines()[-n:])


def build_book(source: Path, out: Path, extra_env: dict[str, str] | None = None, timeout: int = 1500) -> BookBuild:
    """Build the book in ``source`` into ``out`` the way the tests and CI do.

    Fast mode (``DGMLAB_FAST=1``), warnings as errors (``-W``) but the whole book is still built
    (``--keep-going``, so one run reports every problem), every notebook executed afresh
    (``execute_notebooks: force`` in ``_config.yml``), checkpoints and caches in a fresh folder under ``out``
    so nothing trained earlier (or in full mode) can stand in for the code under test.
    """
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update(
        {
            "DGMLAB_FAST": "1",
            "DGMLAB_CACHE": str(out / "dgmlab-cache"),
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),  # the kernel is this venv's python
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # silences a debugger warning from ipykernel
        }
    )
    env.pop("MPLBACKEND", None)  # the kernels need their inline backend, or no figure reaches the page
    env.update(extra_env or {})
    jb = shutil.which("jupyter-book", path=venv_bin) or shutil.which("jupyter-book")
    if jb is None:
        pytest.fail("jupyter-book is not installed in this environment: run `make venv` (requirements.txt)")
    cmd = [jb, "build", str(source), "--path-output", str(out), "-W", "--keep-going"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    log = proc.stdout + "\n" + proc.stderr
    return BookBuild(source, out / "_build" / "html", proc.returncode, log, seconds)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> BookBuild:
    """The course book, built ONCE per test session (the slowest step of the suite), in fast mode."""
    out = tmp_path_factory.mktemp("book")
    build = build_book(REPO, out)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "book-build.log").write_text(build.log)
    report(f"book build (fast mode): {build.seconds:.0f} s, exit code {build.returncode}, HTML in {build.html}")
    report(f"book build log: {ARTIFACTS / 'book-build.log'}")
    return build


def report(line: str) -> None:
    """Print ``line`` now and again in the summary at the end of the test run."""
    print(line)
    _SUMMARY.append(line)


def pytest_terminal_summary(terminalreporter):
    if _SUMMARY:
        terminalreporter.section("dgmlab book")
        for line in _SUMMARY:
            terminalreporter.write_line(line)


# ------------------------------------------------------------------------------------------ a local web server
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the signature is the base class's
        pass


@contextlib.contextmanager
def serve_directory(root: Path):
    """Serve ``root`` over HTTP on 127.0.0.1 (a free port) in a background thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def serve():
    """``with serve(folder) as base_url:`` serves a folder on 127.0.0.1 for the duration of the block."""
    return serve_directory


# ---------------------------------------------------------------------------------------------- the browser
def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or (parts.hostname or "") in LOCAL_HOSTS


@dataclass
class PageLog:
    """What happened while a page was open: console errors, uncaught exceptions, requests that left
    localhost (they are blocked, not sent), requests that failed or answered with an HTTP error."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = [f"console error: {m}" for m in self.console_errors]
        out += [f"uncaught exception: {m}" for m in self.page_errors]
        out += [f"request to a host other than localhost: {u}" for u in self.external_requests]
        out += [f"failed request: {m}" for m in self.failed_requests]
        return out


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by playwright; skips (with the reason) when either is missing."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(
            f"Chromium not found at {CHROMIUM}: install Debian's package `chromium` (`.ci/run` does it as root) "
            "or point DGMLAB_CHROMIUM at a Chromium binary"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the PyPI package `playwright` is not installed: pip install -r requirements.txt")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(browser):
    """Factory ``open_page(url, width=1280, height=900) -> (page, PageLog)``: a fresh browser context per call
    (no shared cache), every request outside localhost aborted and recorded, console errors recorded."""
    contexts = []

    def _open(url: str, width: int = 1280, height: int = 900):
        ctx = browser.new_context(viewport={"width": width, "height": height}, service_workers="block")
        contexts.append(ctx)
        log = PageLog(url)

        def route(r):
            if _is_local(r.request.url):
                r.continue_()
            else:
                log.external_requests.append(r.request.url)
                r.abort()

        ctx.route("**/*", route)
        page = ctx.new_page()
        page.on("console", lambda m: m.type == "error" and log.console_errors.append(f"{m.text} ({m.location})"))
        page.on("pageerror", lambda e: log.page_errors.append(str(e)))

        def on_failed(req):
            if _is_local(req.url):  # external ones are aborted on purpose and reported above
                log.failed_requests.append(f"{req.url}: {req.failure}")

        page.on("requestfailed", on_failed)
        page.on("response", lambda r: r.status >= 400 and log.failed_requests.append(f"{r.url}: HTTP {r.status}"))
        page.goto(url, wait_until="load")
        return page, log

    yield _open
    for ctx in contexts:
        ctx.close()
