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


def _book_command(source: Path, out: Path, extra_env: dict[str, str] | None = None) -> tuple[list[str], dict]:
    """The ``jupyter-book build`` command line and environment of :func:`build_book`."""
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
    return [jb, "build", str(source), "--path-output", str(out), "-W", "--keep-going"], env


def build_book(source: Path, out: Path, extra_env: dict[str, str] | None = None, timeout: int = 1500) -> BookBuild:
    """Build the book in ``source`` into ``out`` the way the tests and CI do.

    Fast mode (``DGMLAB_FAST=1``), warnings as errors (``-W``) but the whole book is still built
    (``--keep-going``, so one run reports every problem), every notebook executed afresh
    (``execute_notebooks: force`` in ``_config.yml``), checkpoints and caches in a fresh folder under ``out``
    so nothing trained earlier (or in full mode) can stand in for the code under test.
    """
    cmd, env = _book_command(source, out, extra_env)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    log = proc.stdout + "\n" + proc.stderr
    return BookBuild(source, out / "_build" / "html", proc.returncode, log, seconds)


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class BackgroundBuild:
    """The course book's build (:func:`build_book`), started with the first test and run beside the others.

    The build executes one small fast-mode notebook after another and keeps about one of two cores busy (alone on
    an idle 2-core machine: 228 s at 118% CPU), so the rest of the suite runs on the other core meanwhile. While
    both run, every process of the suite computes on one thread: PyTorch's threads spin while they wait for each
    other, and two processes spinning two threads each on two cores slow each other down several times over.
    """

    def __init__(self, source: Path, out: Path, timeout: int = 1500):
        self.source, self.out, self.timeout = source, out, timeout
        self._threads = contextlib.ExitStack()
        self._threads.enter_context(one_thread())  # released by finish()
        cmd, env = _book_command(source, out, ONE_THREAD)
        self.log_path = out / "build.log"
        self._log = open(self.log_path, "w")  # a file, not a pipe: a pipe nobody reads fills up and stalls it
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.result: BookBuild | None = None

    def wait(self) -> BookBuild:
        if self.result is None:
            try:
                self.proc.wait(timeout=max(1.0, self.timeout - (time.perf_counter() - self.t0)))
            except subprocess.TimeoutExpired:
                self.stop()
                pytest.fail(f"the book build took more than {self.timeout} s; its log: {self.log_path}")
            self._log.close()
            log = self.log_path.read_text(errors="replace")
            seconds = time.perf_counter() - self.t0
            self.result = BookBuild(self.source, self.out / "_build" / "html", self.proc.returncode, log, seconds)
        return self.result

    def stop(self) -> None:
        """Kill the build and every kernel it started (its own process group) if it is still running."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self._log.close()

    def finish(self) -> None:
        """Stop the build if it still runs and give this process and its children every core again (idempotent)."""
        self.stop()
        self._threads.close()


def _reads_the_book(item) -> bool:
    return "built_book" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(config, items):
    """The tests that read the built book run last, so the build has the rest of the run to finish beside it."""
    items[:] = [i for i in items if not _reads_the_book(i)] + [i for i in items if _reads_the_book(i)]


@contextlib.contextmanager
def one_thread():
    """This process and the processes it starts compute on one thread; restores the settings when it ends."""
    import torch

    threads, saved = torch.get_num_threads(), {k: os.environ.get(k) for k in ONE_THREAD}
    os.environ.update(ONE_THREAD)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def _book_in_background(request, tmp_path_factory):
    """With the first test, start the book's build when any selected test reads it; kill it if the run stops early."""
    if not any(_reads_the_book(i) for i in request.session.items):
        yield None
        return
    build = BackgroundBuild(REPO, tmp_path_factory.mktemp("book"))
    try:
        yield build
    finally:
        build.finish()


@pytest.fixture(scope="session")
def built_book(_book_in_background) -> BookBuild:
    """The course book built ONCE per test session in fast mode, in the background from the first test on."""
    build = _book_in_background.wait()
    _book_in_background.finish()  # done: the book's own tests may use every core again
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "book-build.log").write_text(build.log)
    report(f"book build (fast mode, beside the other tests): {build.seconds:.0f} s, exit code {build.returncode}")
    report(f"book build log: {ARTIFACTS / 'book-build.log'}; HTML in {build.html}")
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
