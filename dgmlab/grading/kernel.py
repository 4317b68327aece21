"""Code that runs *inside the student's kernel* during grading: the forbidden-API guard and the data exporter.

The grader adds two cells to the notebook it executes: one at the top that installs :func:`install_guard`, and
one at the end that calls a lab's ``export(ex)`` function with an :class:`Exporter`. Nothing here knows an answer
or a hidden check: the exporter calls the student's functions (found by name in the kernel namespace, never by
cell position) on inputs chosen by the lab's export code, and writes what they return as plain data: ``.npz``
arrays (written and read without pickle) and a JSON manifest. The grader judges that data in its own process.

A hostile submission can tamper with everything in this module (it runs in the same interpreter); what it cannot
do is make the grader trust anything beyond the data, which is checked like any other.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import threading
import traceback
import types
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import numpy as np

from dgmlab.utils import atomic_write_text

MANIFEST = "manifest.json"
GUARD_EVENTS: list[dict] = []
STEPS: dict[int, list] = {}  # id(parameter) -> [weakref to it, optimizer steps that updated it]
BUDGET_SEEN: list[dict] = []  # distinct values of the budget variables while an optimizer stepped
_WATCH: dict = {"on": False, "keys": (), "namespace": None}
_CURRENT_CALL: list[str] = []  # key of the exporter call running now, if any
_LIBRARY_DIRS: tuple[str, ...] = ()


def _library_dirs() -> tuple[str, ...]:
    """Folders whose code is not the student's (the interpreter, site-packages, dgmlab itself)."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(__file__))}
    for p in sys.path:
        if p and ("site-packages" in p or "dist-packages" in p):
            dirs.add(p)
    return tuple(os.path.realpath(d) for d in dirs if d)


@functools.lru_cache(maxsize=8192)
def _is_student_file(filename: str, library_dirs: tuple[str, ...]) -> bool:
    """Whether code from ``filename`` is the student's. Cached: resolving a path takes a system call per folder,
    and a traceback asks for every frame of the stack once per loaded module (``inspect.getmodule``)."""
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>, ...
        return filename.startswith("<ipython-input")
    return not os.path.realpath(filename).startswith(library_dirs)


def _is_student_frame(frame: types.FrameType) -> bool:
    return _is_student_file(frame.f_code.co_filename, _LIBRARY_DIRS)


def _student_stack(frame: types.FrameType | None) -> list[str]:
    """Names of the student's functions on the stack, innermost first (``<module>`` for cell level)."""
    names = []
    while frame is not None:
        if _is_student_frame(frame):
            names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names


def _execution_count() -> int | None:
    """The execution count the notebook shows for the cell running now (maps a run-time event to its cell), or
    None. IPython's counter runs ahead of the count the cell is given (by one in IPython 8), so it is taken
    relative to its value in the guard cell, which the notebook numbers 1."""
    try:
        from IPython import get_ipython

        return int(get_ipython().execution_count) - _WATCH.get("count_offset", 0)
    except Exception:  # not in IPython
        return None


def _is_direct(frame: types.FrameType | None) -> bool:
    """Whether the student's own code made this access (directly, or through ``import``/``from ... import``),
    rather than a library the student called (which may use the module internally)."""
    while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
        frame = frame.f_back
    return frame is not None and _is_student_frame(frame)


def _student_line(frame: types.FrameType | None) -> int | None:
    while frame is not None:
        if _is_student_frame(frame):
            return frame.f_lineno
        frame = frame.f_back
    return None


def _on_step(optimizer, args, kwargs) -> None:
    """Global optimizer hook: count the steps each parameter received and the budget values at each step."""
    if not _WATCH["on"]:
        return
    import weakref

    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            entry = STEPS.get(id(p))
            if entry is None or entry[0]() is not p:
                entry = STEPS[id(p)] = [weakref.ref(p), 0]
            entry[1] += 1
    ns = _WATCH["namespace"] or {}
    seen = {}
    for k in _WATCH["keys"]:
        v = ns.get(k)
        seen[k] = v if isinstance(v, (bool, int, float, str)) or v is None else repr(v)[:100]
    if seen not in BUDGET_SEEN[-50:]:
        BUDGET_SEEN.append(seen)
        del BUDGET_SEEN[:-50]


def watch_steps(budget_keys: Sequence[str], namespace: dict) -> None:
    """Count every optimizer step from now on (``torch.optim``'s global step hook): how many updates each
    parameter got, and the values the budget variables held while they happened. The exporter reports them for
    the trained model, so a notebook that trains with other values and restores them afterwards is caught."""
    _WATCH.update(on=True, keys=tuple(budget_keys), namespace=namespace)
    if not _WATCH.get("hooked"):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(_on_step)
        _WATCH["hooked"] = True


def steps_of(module) -> int:
    """The largest number of optimizer steps any parameter of ``module`` received (0 if never trained)."""
    most = 0
    for p in module.parameters():
        entry = STEPS.get(id(p))
        if entry is not None and entry[0]() is p:
            most = max(most, entry[1])
    return most


class _GuardedModule(types.ModuleType):
    """Stands in for a forbidden module: it works as before, but records every attribute use from student code."""

    def __init__(self, real: types.ModuleType):
        super().__init__(real.__name__, real.__doc__)
        object.__setattr__(self, "_dgmlab_real", real)

    def __getattribute__(self, attr: str):
        real = object.__getattribute__(self, "_dgmlab_real")
        if attr in ("_dgmlab_real", "__class__", "__dict__"):
            return object.__getattribute__(self, attr)
        if attr.startswith("__"):  # dunders (``__file__``, ``__spec__``, ...) are never a use worth recording
            return getattr(real, attr)
        frame = sys._getframe(1)
        stack = _student_stack(frame)
        if stack:
            GUARD_EVENTS.append(
                {
                    "module": real.__name__,
                    "attribute": attr,
                    "functions": [n for n in stack if n != "<module>"],
                    "during_call": _CURRENT_CALL[-1] if _CURRENT_CALL else None,
                    "execution_count": _execution_count(),
                    "line": _student_line(frame),
                    "direct": _is_direct(frame),
                }
            )
            del GUARD_EVENTS[:-1000]  # a loop could call it millions of times: keep the last 1000
        return getattr(real, attr)

    def __setattr__(self, attr, value):
        setattr(object.__getattribute__(self, "_dgmlab_real"), attr, value)

    def __dir__(self):
        return dir(object.__getattribute__(self, "_dgmlab_real"))


def install_guard(forbidden: Sequence[str], budget_keys: Sequence[str] = (), namespace: dict | None = None) -> None:
    """Replace each forbidden module (and its loaded submodules) by a recording stand-in.

    Reached by ``import``, ``from ... import``, ``importlib.import_module``, ``__import__`` or ``getattr`` on the
    parent, the module is the stand-in, so any use from the student's code is logged in :data:`GUARD_EVENTS`.

    Args:
        forbidden: dotted module names, e.g. ``["torch.distributions"]``.
        budget_keys, namespace: if given, also :func:`watch_steps` (the notebook's globals hold the budget).
    """
    import importlib

    if namespace is not None:
        watch_steps(budget_keys, namespace)

    global _LIBRARY_DIRS
    _LIBRARY_DIRS = _library_dirs()
    _WATCH["count_offset"] = 0
    count = _execution_count()
    _WATCH["count_offset"] = count - 1 if count is not None else 0  # the guard cell is cell 1 of the run
    for name in forbidden:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        for mod_name in sorted(k for k in list(sys.modules) if k == name or k.startswith(name + ".")):
            real = sys.modules[mod_name]
            if isinstance(real, _GuardedModule) or not isinstance(real, types.ModuleType):
                continue
            proxy = _GuardedModule(real)
            sys.modules[mod_name] = proxy
            parent_name, _, child = mod_name.rpartition(".")
            parent = sys.modules.get(parent_name)
            if parent is not None:
                try:
                    setattr(parent, child, proxy)
                except (AttributeError, TypeError):
                    pass


class CallTimeout(Exception):
    """Raised inside a student's function that ran past the exporter's per-call limit."""


@contextmanager
def _time_limit(seconds: float):
    """Interrupt Python code after ``seconds`` (main thread only; elsewhere no limit: the grader's wall clock
    still applies)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise CallTimeout(f"took longer than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _student_traceback(exc: BaseException, limit_lines: int = 6) -> str:
    """The last lines of a traceback that are in the student's code (what they need to find the bug)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_student_path(f.filename)]
    lines = [f"line {f.lineno} in {f.name}: {(f.line or '').strip()}" for f in frames[-limit_lines:]]
    return "; ".join(lines)


def _is_student_path(filename: str) -> bool:
    if filename.startswith("<"):
        return filename.startswith("<ipython-input")
    return not os.path.realpath(filename).startswith(_LIBRARY_DIRS or _library_dirs())


def _to_data(value, arrays: dict[str, np.ndarray], path: str):
    """Turn a returned value into JSON-able structure; tensors and arrays go to ``arrays`` by path."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        if t.is_complex():
            raise TypeError(f"{path or 'the result'} is a complex tensor; expected a real tensor")
        arrays[path] = t.cpu().numpy()
        return {"tensor": path, "dtype": str(value.dtype).replace("torch.", ""), "requires_grad": value.requires_grad}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{path or 'the result'} is a NumPy object array; expected numbers")
        arrays[path] = value
        return {"ndarray": path, "dtype": str(value.dtype)}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return {"value": value}
    if isinstance(value, (int, np.integer)):
        return {"value": int(value)}
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return {"value": v if math.isfinite(v) else repr(v)}
    if isinstance(value, (tuple, list)):
        return {"sequence": [_to_data(v, arrays, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"mapping": {str(k): _to_data(v, arrays, f"{path}.{k}") for k, v in value.items()}}
    raise TypeError(f"{path or 'the result'} is a {type(value).__name__}; expected tensors or numbers")


class Exporter:
    """Calls the student's functions on the grader's inputs and writes the results as data.

    Args:
        namespace: the kernel's global namespace (``globals()`` of the notebook).
        out_dir: folder to write into (created; chosen by the grader with a random name).
        nonce: random token copied into the manifest, so stale or planted files are not mistaken for results.
        call_timeout: seconds allowed for each call of a student's function.
    """

    def __init__(
        self, namespace: dict, out_dir: str, nonce: str, call_timeout: float = 30.0, inputs: dict | None = None
    ):
        self.namespace = namespace
        self.inputs = inputs or {}  # grader-chosen inputs, name -> torch.Tensor
        self.out_dir = out_dir
        self.call_timeout = call_timeout
        self.manifest: dict = {"nonce": nonce, "items": {}, "complete": False, "guard_events": []}
        os.makedirs(out_dir, exist_ok=True)
        self._write_manifest()

    # -- namespace -----------------------------------------------------------------------------------------
    def function(self, name: str) -> Callable | None:
        """The student's function ``name`` from the notebook namespace, or None (recorded as missing)."""
        fn = self.namespace.get(name)
        if fn is None:
            return None
        if not callable(fn):
            return None
        return fn

    def status(self, key: str) -> str:
        """``ok``, ``error`` or ``missing`` once ``key`` is recorded, else ``absent``."""
        return self.manifest["items"].get(key, {}).get("status", "absent")

    def value(self, name: str, default=None):
        """A global of the notebook (e.g. a parameter or an answer variable)."""
        return self.namespace.get(name, default)

    # -- recording -----------------------------------------------------------------------------------------
    def _write_manifest(self) -> None:
        self.manifest["guard_events"] = list(GUARD_EVENTS[-200:])
        atomic_write_text(os.path.join(self.out_dir, MANIFEST), json.dumps(self.manifest, default=str))

    def _record(self, key: str, status: str, message: str = "", value=None) -> None:
        entry: dict = {"status": status, "message": message}
        if value is not None or status == "ok":
            arrays: dict[str, np.ndarray] = {}
            try:
                entry["data"] = _to_data(value, arrays, "")
            except TypeError as e:
                entry = {"status": "error", "message": f"returned a value the grader cannot read: {e}"}
                arrays = {}
            if arrays:
                file = f"{key}.npz"
                np.savez(os.path.join(self.out_dir, file), **{f"a{p}": a for p, a in arrays.items()})
                entry["file"] = file
        self.manifest["items"][key] = entry
        self._write_manifest()

    def save(self, key: str, value) -> None:
        """Record ``value`` (tensors, numbers, strings, nested lists/dicts of them) under ``key``."""
        self._record(key, "ok", value=value)

    def fail(self, key: str, message: str) -> None:
        """Record that ``key`` could not be produced, with a message for the student."""
        self._record(key, "error", message)

    def call(self, key: str, fn_name: str, *args, seed: int | None = None, save: bool = True, **kwargs):
        """Call the student's ``fn_name(*args, **kwargs)``, record the result under ``key`` and return it.

        Exceptions, time-outs and a missing function are recorded with a message and give ``None``.

        Args:
            key: name of the record.
            fn_name: the student's function name.
            seed: if given, ``torch.manual_seed(seed)`` right before the call (for functions that sample).
            save: record the result (False: only return it, e.g. to differentiate it first).
        """
        import torch

        fn = self.function(fn_name)
        if fn is None:
            what = "is not defined" if fn_name not in self.namespace else "is not a function"
            self._record(key, "missing", f"`{fn_name}` {what} in your notebook (was its cell run, or renamed?)")
            return None
        if seed is not None:
            torch.manual_seed(seed)
        _CURRENT_CALL.append(key)
        try:
            with _time_limit(self.call_timeout):
                result = fn(*args, **kwargs)
        except NotImplementedError:
            self._record(key, "error", f"`{fn_name}` raises NotImplementedError: it is not written yet")
            return None
        except CallTimeout as e:
            self._record(key, "error", f"`{fn_name}` {e} on the grader's input and was stopped")
            return None
        except SystemExit:
            self._record(key, "error", f"`{fn_name}` called sys.exit() (or raised SystemExit)")
            return None
        except Exception as e:  # the student's bug: recorded, never fatal for the others
            where = _student_traceback(e)
            msg = f"`{fn_name}` raised {type(e).__name__}: {str(e)[:300]}"
            self._record(key, "error", msg + (f" ({where})" if where else ""))
            return None
        finally:
            _CURRENT_CALL.pop()
        if save:
            self._record(key, "ok", value=result)
        return result

    def grad(self, key: str, output: Callable[[], object], inputs: Sequence) -> None:
        """Record the gradient of the scalar ``output()`` w.r.t. ``inputs`` (tensors with ``requires_grad``)."""
        import torch

        try:
            out = output()
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the result is a {type(out).__name__}, not a tensor")
            if out.grad_fn is None and not out.requires_grad:
                raise RuntimeError(
                    "the result is not connected to the inputs in the autograd graph "
                    "(was .detach(), .item(), .numpy() or torch.no_grad() used?)"
                )
            grads = torch.autograd.grad(out, list(inputs), allow_unused=True)
        except Exception as e:
            self._record(key, "error", f"could not differentiate the result: {type(e).__name__}: {str(e)[:200]}")
            return
        self.save(key, [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)])

    def save_training_run(self, model_name: str, state_key: str, batch_size: int | None = None) -> None:
        """Record what a lab's training cell produced: the trained module called ``model_name`` (its dataclass
        config as ``trained_config``, its ``state_dict`` as ``state_key``), the list ``history`` (epoch, seed and
        n_train of each epoch, to verify the grading budget) and the dict ``snapshots`` of sample tensors.

        Also ``_train_steps``: the optimizer steps the model's parameters received while the notebook ran and the
        budget values at those steps (from :func:`watch_steps`, not from anything the notebook reports), and the
        lab's ``batch_size`` so the grader can say how many steps the budget makes."""
        import dataclasses

        import torch

        model = self.value(model_name)
        if isinstance(model, torch.nn.Module) and dataclasses.is_dataclass(getattr(model, "config", None)):
            config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(model.config).items()}
            self.save("trained_config", config)
            self.save(state_key, {k: v.detach().cpu() for k, v in model.state_dict().items()})
            if _WATCH.get("hooked"):  # the grader's counter ran (not when the exporter is used on its own)
                self.save(
                    "_train_steps", {"steps": steps_of(model), "batch_size": batch_size, "seen": list(BUDGET_SEEN)}
                )
        else:
            self.fail(state_key, f"there is no trained model called `{model_name}` in your notebook")
        history = self.value("history")
        if isinstance(history, list) and all(isinstance(h, dict) for h in history):
            keep = ("epoch", "seed", "n_train")
            self.save("history", [{k: h.get(k) for k in keep if isinstance(h.get(k), (int, float))} for h in history])
        else:
            self.fail("history", "the list `history` written by the training cell is missing")
        snapshots = self.value("snapshots")
        if isinstance(snapshots, dict) and all(isinstance(v, torch.Tensor) for v in snapshots.values()):
            self.save("snapshots", {str(k): v.detach().cpu() for k, v in snapshots.items()})
        else:
            self.fail("snapshots", "the dict `snapshots` written by the training cell is missing")

    def save_answers(self, names) -> None:
        """Record the short-answer variables ``names`` (a number, a one-element tensor or a string each)."""
        import torch

        for name in names:
            value = self.value(name)
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                self.save(name, value)
            elif isinstance(value, torch.Tensor) and value.numel() == 1:
                self.save(name, float(value))
            else:
                self.fail(name, f"`{name}` is not set to a number or a letter")

    def finish(self) -> None:
        """Mark the export complete (the grader treats a manifest without this as an interrupted run)."""
        self.manifest["complete"] = True
        self._write_manifest()


def run_export(
    export_source: str,
    namespace: dict,
    out_dir: str,
    nonce: str,
    call_timeout: float,
    budget_keys: Sequence[str] = (),
    inputs_path: str = "",
) -> None:
    """Entry point of the grader's last cell: record the parameters, then define the lab's ``export(ex)`` and run it.

    The export code runs in its own namespace (it only reaches the notebook through ``ex``).
    """
    import torch

    _WATCH["on"] = False  # the export's own calls of the student's steps are not training
    inputs = {}
    if inputs_path:
        with np.load(inputs_path, allow_pickle=False) as f:
            inputs = {k: torch.from_numpy(np.array(f[k])) for k in f.files}
    ex = Exporter(namespace, out_dir, nonce, call_timeout, inputs)
    params = {}
    for k in budget_keys:
        v = namespace.get(k)
        params[k] = v if isinstance(v, (bool, int, float, str)) or v is None else repr(v)[:100]
    ex.save("_params", params)
    scope: dict = {"__name__": "dgmlab_lab_export"}
    try:
        exec(compile(export_source, "<lab export>", "exec"), scope)
        scope["export"](ex)
    except Exception as e:  # recorded; the items not yet written count as not produced
        ex.manifest["export_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        ex.finish()
