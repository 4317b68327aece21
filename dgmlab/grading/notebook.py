"""Reading notebooks safely, and the static checks the grader runs on a submission's code before executing it.

Static checks never execute the submission: they parse its code cells with :mod:`ast`. They find

* the functions a notebook defines (by name, wherever the cell is: grading never depends on cell positions);
* uses of forbidden modules however they are spelled (``import``/``from ... import``, aliases, attribute chains,
  ``getattr``, ``importlib.import_module``, ``__import__``, the module name as a string), attributed to the
  function they occur in, and through calls to the functions that use them;
* syntax errors, reported by cell and line.

Cells are first turned into the Python IPython would run (magics, ``!`` shell escapes, ``?`` help), so a
magic is never mistaken for a syntax error that would hide the rest of its cell from the scan.
"""

from __future__ import annotations

import ast
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

MAX_NOTEBOOK_BYTES = 50 * 2**20
TOP_LEVEL = "<top level>"


class SubmissionError(Exception):
    """The file cannot be graded at all (not a notebook, empty, unreadable); the message says why."""


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """Read and validate a notebook, with a clear reason when the file is not one.

    Raises:
        SubmissionError: missing, empty, too large, not JSON, or not a notebook (older formats are upgraded).
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path.name}: the file does not exist")
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        raise SubmissionError(
            f"{path.name}: the file is larger than {MAX_NOTEBOOK_BYTES // 2**20} MiB; "
            "clear the outputs before submitting"
        )
    return parse_notebook(path.read_bytes(), path.name)


def parse_notebook(content: bytes, name: str) -> nbformat.NotebookNode:
    """Validate and parse a notebook's bytes (see :func:`read_notebook`)."""
    if len(content) == 0:
        raise SubmissionError(f"{name}: the file is empty (0 bytes); submit the saved .ipynb notebook")
    if len(content) > MAX_NOTEBOOK_BYTES:
        raise SubmissionError(
            f"{name}: the file is {len(content) / 2**20:.0f} MiB, more than {MAX_NOTEBOOK_BYTES // 2**20} MiB; "
            "clear the outputs before submitting"
        )
    try:
        raw = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SubmissionError(
            f"{name}: this is not a Jupyter notebook (not valid JSON: {e.__class__.__name__}); "
            "submit the .ipynb file saved by Jupyter, not a .py, PDF or zip"
        ) from None
    old_format = isinstance(raw, dict) and isinstance(raw.get("worksheets"), list)  # nbformat 3 and earlier
    if not isinstance(raw, dict) or not (isinstance(raw.get("cells"), list) or old_format):
        raise SubmissionError(f"{name}: valid JSON but not a Jupyter notebook (no list of cells)")
    if old_format and not isinstance(raw.get("nbformat"), int):
        raise SubmissionError(f"{name}: an old-format notebook without its nbformat version number")
    try:  # older formats (v3 "worksheets") are upgraded to version 4 by nbformat
        nb = nbformat.reads(json.dumps(raw), as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # nbformat raises several validation error types
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise SubmissionError(f"{name}: the notebook structure is invalid ({first})") from None
    return nb


# cell and line magics whose argument is Python code the kernel runs (``%time x = f()``, ``%%capture`` ...)
PYTHON_MAGICS = frozenset({"time", "timeit", "prun", "capture", "debug"})


def python_source(source: str) -> str:
    """The cell as the Python that IPython runs: magics, shell escapes (``x = !ls``) and help (``f?``) become
    ``get_ipython()`` calls, line numbers kept. Uses IPython's own ``TransformerManager``, so whatever the kernel
    accepts parses here; code that is not valid Python comes back unchanged (and fails ``ast.parse``)."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:  # a fresh manager per cell (cheap): cells are scanned from several grading threads at once
        return TransformerManager().transform_cell(source)
    except Exception:  # IPython's transformers raise on some malformed input: let ast report the error
        return source


def _magic_code(node: ast.Call) -> tuple[str, int] | None:
    """For ``get_ipython().run_line_magic("time", code)`` or ``.run_cell_magic("capture", args, body)`` of a
    magic that runs Python: the code and the line offset to add to its line numbers; else None."""
    f = node.func
    if not (isinstance(f, ast.Attribute) and f.attr in ("run_line_magic", "run_cell_magic")):
        return None
    if not (isinstance(f.value, ast.Call) and isinstance(f.value.func, ast.Name) and f.value.func.id == "get_ipython"):
        return None
    args = node.args
    if not args or not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
        return None
    name = args[0].value
    if name not in PYTHON_MAGICS:
        return None
    if f.attr == "run_line_magic" and len(args) == 2:
        return args[1].value, node.lineno - 1
    if f.attr == "run_cell_magic" and len(args) == 3:
        return args[2].value, node.lineno  # the body starts on the line after ``%%magic``
    return None


@dataclass
class Finding:
    """One use of a forbidden module."""

    cell: int
    line: int
    functions: tuple[str, ...]  # enclosing functions, outermost first; empty at top level
    what: str

    @property
    def where(self) -> str:
        fn = f" in `{self.functions[-1]}`" if self.functions else " at top level"
        return f"cell {self.cell + 1}, line {self.line}{fn}"


@dataclass
class StaticReport:
    """What the static pass found in a notebook."""

    functions: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (cell, line), last definition
    syntax_errors: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    calls: dict[str, set[str]] = field(default_factory=dict)  # top-level function -> names it references

    def forbidden_in(self, function: str, stop: frozenset[str] | set[str] = frozenset()) -> list[Finding]:
        """Findings inside ``function`` or in the notebook functions it reaches through calls, not descending into
        the functions in ``stop`` (other graded functions answer for themselves)."""
        seen, todo = set(), [function]
        while todo:
            f = todo.pop()
            if f in seen:
                continue
            seen.add(f)
            todo.extend(n for n in self.calls.get(f, ()) if n in self.calls and n not in stop)
        return [x for x in self.findings if x.functions and x.functions[0] in seen]


def _is_forbidden(path: str | None, forbidden: tuple[str, ...]) -> str | None:
    if not path:
        return None
    for f in forbidden:
        if path == f or path.startswith(f + "."):
            return f
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self, forbidden: tuple[str, ...], report: StaticReport, aliases: dict[str, str]):
        self.forbidden = forbidden
        self.report = report
        self.aliases = aliases  # name -> dotted module path, shared across cells (kernel state persists)
        self.cell = 0
        self.stack: list[str] = []
        self._seen: set[tuple] = set()

    def resolve(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return f"{base}.{node.attr}" if base else None
        if isinstance(node, ast.Call):
            fname = node.func
            name = fname.id if isinstance(fname, ast.Name) else fname.attr if isinstance(fname, ast.Attribute) else ""
            first = node.args[0] if node.args else None
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                return str(first.value)
            if name == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                base = self.resolve(node.args[0])
                return f"{base}.{node.args[1].value}" if base else None
        return None

    def flag(self, node: ast.AST, what: str) -> None:
        key = (self.cell, node.lineno, tuple(self.stack))
        if key in self._seen:
            return
        self._seen.add(key)
        self.report.findings.append(Finding(self.cell, node.lineno, tuple(self.stack), what))

    def _function(self, node) -> None:
        if not self.stack:
            self.report.functions[node.name] = (self.cell, node.lineno)
            self.report.calls.setdefault(node.name, set())
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if f := _is_forbidden(a.name, self.forbidden):
                self.flag(node, f"`import {a.name}` ({f} is not allowed)")
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                top = a.name.split(".")[0]
                self.aliases[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        for a in node.names:
            full = f"{mod}.{a.name}" if mod else a.name
            if f := _is_forbidden(mod, self.forbidden) or _is_forbidden(full, self.forbidden):
                self.flag(node, f"`from {mod} import {a.name}` ({f} is not allowed)")
            self.aliases[a.asname or a.name] = full

    def visit_Assign(self, node: ast.Assign) -> None:
        path = self.resolve(node.value)
        if path:
            for t in node.targets:
                if isinstance(t, ast.Name):
                    self.aliases[t.id] = path
        self.generic_visit(node)

    def _check_expr(self, node: ast.AST) -> bool:
        path = self.resolve(node)
        if f := _is_forbidden(path, self.forbidden):
            self.flag(node, f"uses `{path}` ({f} is not allowed)")
            return True
        return False

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if not self._check_expr(node):
            self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        magic = _magic_code(node)
        if magic is not None:  # ``%time``, ``%%capture``: scan the Python they run
            code, offset = magic
            try:
                tree = ast.parse(python_source(code))
            except SyntaxError:  # options such as ``%timeit -n 3 ...``: the run-time guard still watches it
                return
            ast.increment_lineno(tree, offset)
            self.generic_visit(tree)
            return
        if not self._check_expr(node):
            self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if self.stack and isinstance(node.ctx, ast.Load):
            self.report.calls.setdefault(self.stack[0], set()).add(node.id)
        self._check_expr(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            for f in self.forbidden:
                if node.value.strip() == f or node.value.strip().startswith(f + "."):
                    self.flag(node, f"names the module {f!r} in a string")


def scan(nb: nbformat.NotebookNode, forbidden: tuple[str, ...] | list[str] = ()) -> StaticReport:
    """Parse every code cell and collect functions, syntax errors and forbidden-module uses."""
    report = StaticReport()
    scanner = _Scanner(tuple(forbidden), report, aliases={})
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(python_source(cell.source))
        except SyntaxError as e:
            report.syntax_errors.append(f"cell {i + 1}, line {e.lineno}: {e.msg}")
            continue
        scanner.cell = i
        scanner.visit(tree)
    return report


_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _harmless_assignment(stmt: ast.stmt) -> bool:
    """An assignment worth replaying without running work: its value calls nothing (constants, tuples, names),
    or it sets answer variables (``answer_...``, the labs' convention), which are cheap by nature."""
    if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
        return False
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    if all(isinstance(t, ast.Name) and t.id.startswith("answer") for t in targets):
        return True
    return not any(isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)) for n in ast.walk(stmt.value))


def definitions_only(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of the notebook keeping only imports, definitions and call-free assignments of each code cell.

    Used for the grader's second pass when the full run did not finish (time limit, memory, crash, exit): the
    student's functions can still be tested on their own, so the points earned on them are not lost.
    """
    out = copy.deepcopy(nb)
    for cell in out.cells:
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
            continue
        src = python_source(cell.source)
        try:
            tree = ast.parse(src)
        except SyntaxError:
            cell.source = ""
            continue
        lines = src.splitlines()
        keep = []
        for stmt in tree.body:
            if isinstance(stmt, _KEEP) or _harmless_assignment(stmt):
                first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
                keep.append("\n".join(lines[first - 1 : stmt.end_lineno]))
        cell.source = "\n\n".join(k for k in keep if k)
        cell.outputs = []
    return out
