"""A gradable lab: its folder holds the source notebook, ``rubric.yml`` (points), ``export.py`` (the code that
runs in the student's kernel to export data; no answers in it) and ``checks.py`` (hidden checks, grader only).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dgmlab.grading.judge import CHECKS_REGISTRY

RUBRIC = "rubric.yml"


class LabError(Exception):
    """The lab folder is incomplete or inconsistent (an instructor's error, reported before grading starts)."""


@dataclass
class Question:
    """One question of the rubric: automatic checks with points, or manual points graded by hand."""

    id: str
    title: str
    checks: dict[str, float] = field(default_factory=dict)
    functions: list[str] = field(default_factory=list)
    uses_budget: bool = False
    manual: float = 0.0

    @property
    def points(self) -> float:
        return self.manual if self.manual else float(sum(self.checks.values()))

    @property
    def is_manual(self) -> bool:
        return bool(self.manual)


@dataclass
class Limits:
    """Resource limits for one submission's kernel."""

    cell_timeout_s: float = 120.0
    total_timeout_s: float = 240.0
    memory_mb: float = 3000.0
    call_timeout_s: float = 30.0
    disk_mb: float = 1000.0  # files the run writes in its folders (the private /tmp is a 512 MiB tmpfs besides)


@dataclass
class Lab:
    name: str
    title: str
    folder: Path
    notebook: Path
    budget: dict
    limits: Limits
    forbidden: list[str]
    questions: list[Question]
    export_source: str
    checks: dict[tuple[str, str], Callable]
    fingerprint: str
    make_inputs: Callable[[], dict] | None = None  # grader-chosen inputs for the export, from checks.py

    def settings(self) -> dict:
        """Everything besides the submission that can change a result: the code fingerprint, the budget, the
        limits (after any command-line override), the forbidden modules, and the versions that run the checks."""
        import torch

        import dgmlab
        from dgmlab.utils import fast_mode

        return {
            "code": self.fingerprint,
            "budget": dict(self.budget),
            "limits": dataclasses.asdict(self.limits),
            "forbidden": list(self.forbidden),
            "fast_mode": fast_mode(),
            "dgmlab": dgmlab.__version__,
            "torch": torch.__version__,
        }

    def run_fingerprint(self) -> str:
        """A short hash of :meth:`settings`: a stored result is reused only when it matches."""
        text = json.dumps(self.settings(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def total_points(self) -> float:
        return sum(q.points for q in self.questions)

    @property
    def auto_points(self) -> float:
        return sum(q.points for q in self.questions if not q.is_manual)


def find_lab(spec: str | Path) -> Path:
    """Resolve ``spec``: a lab folder, its ``rubric.yml``, or a lab name under ``./labs``."""
    p = Path(spec)
    candidates = [p, p.parent if p.name == RUBRIC else p, Path("labs") / str(spec)]
    for c in candidates:
        if (c / RUBRIC).is_file():
            return c.resolve()
    raise LabError(f"no lab found at {spec!r}: give a folder holding {RUBRIC} (for example labs/lab1_vae)")


def load_lab(spec: str | Path) -> Lab:
    """Load and cross-check a lab folder.

    Raises:
        LabError: a missing file, a rubric check without code or code without a rubric entry, bad limits.
    """
    folder = find_lab(spec)
    rubric_text = (folder / RUBRIC).read_text(encoding="utf-8")
    try:
        r = yaml.safe_load(rubric_text)
    except yaml.YAMLError as e:
        raise LabError(f"{folder / RUBRIC}: not valid YAML: {e}") from None
    for key in ("lab", "notebook", "budget", "questions"):
        if key not in r:
            raise LabError(f"{folder / RUBRIC}: missing the key {key!r}")
    notebook = folder / r["notebook"]
    if not notebook.is_file():
        raise LabError(f"{folder / RUBRIC}: the notebook {r['notebook']!r} is not in {folder}")
    questions = []
    for q in r["questions"]:
        questions.append(
            Question(
                id=str(q["id"]),
                title=str(q.get("title", q["id"])),
                checks={str(k): float(v) for k, v in (q.get("checks") or {}).items()},
                functions=[str(f) for f in q.get("functions", [])],
                uses_budget=bool(q.get("uses_budget", False)),
                manual=float(q.get("manual", 0)),
            )
        )
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise LabError(f"{folder / RUBRIC}: question ids repeat: {ids}")
    limits = Limits(**{k: float(v) for k, v in (r.get("limits") or {}).items()})
    export_path, checks_path = folder / "export.py", folder / "checks.py"
    for p in (export_path, checks_path):
        if not p.is_file():
            raise LabError(f"{folder}: {p.name} is missing")
    export_source = export_path.read_text(encoding="utf-8")
    if not any(isinstance(n, ast.FunctionDef) and n.name == "export" for n in ast.parse(export_source).body):
        raise LabError(f"{export_path}: must define a function export(ex)")
    checks, make_inputs = _load_checks(checks_path, str(r["lab"]))
    wanted = {(q.id, c) for q in questions for c in q.checks}
    if wanted != set(checks):
        raise LabError(
            f"{folder}: rubric and checks.py disagree: rubric only {sorted(wanted - set(checks))}, "
            f"checks.py only {sorted(set(checks) - wanted)}"
        )
    lab_files = [folder / RUBRIC, export_path, checks_path]
    fingerprint = code_fingerprint([*lab_files, *grader_sources(), *dgmlab_imports(lab_files[1:])])
    return Lab(
        name=str(r["lab"]),
        title=str(r.get("title", r["lab"])),
        folder=folder,
        notebook=notebook,
        budget=dict(r["budget"]),
        limits=limits,
        forbidden=[str(f) for f in r.get("forbidden", [])],
        questions=questions,
        export_source=export_source,
        checks=checks,
        fingerprint=fingerprint,
        make_inputs=make_inputs,
    )


GRADER_DIR = Path(__file__).resolve().parent
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def grader_sources() -> list[Path]:
    """The grader's own code: every Python file of ``dgmlab/grading/`` (a change to any can change a result)."""
    return sorted(GRADER_DIR.rglob("*.py"))


def dgmlab_imports(paths: list[Path]) -> list[Path]:
    """The ``dgmlab`` modules that ``paths`` import directly (``from dgmlab.models.vae import VAE``): the lab's
    checks and export run them, so they belong in the fingerprint too."""
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] != "dgmlab":
                    continue
                if parts[1:2] == ["grading"]:
                    continue  # already in grader_sources()
                base = PACKAGE_DIR.joinpath(*parts[1:])
                for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                    if candidate.is_file():
                        found.add(candidate)
    return sorted(found)


def code_fingerprint(paths: list[Path]) -> str:
    """A short SHA-256 over the names and contents of ``paths`` (in the order given)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _load_checks(path: Path, lab: str) -> tuple[dict[tuple[str, str], Callable], Callable | None]:
    spec = importlib.util.spec_from_file_location(f"dgmlab_lab_checks_{lab}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = {}
    for obj in getattr(module, CHECKS_REGISTRY, []):
        key = obj._dgmlab_check
        if key is not None:
            if key in found:
                raise LabError(f"{path}: check {key} is defined twice")
            found[key] = obj
    return found, getattr(module, "grader_inputs", None)
