"""The training budget verified from the grader's own step counter, and every forbidden-module use made visible
(issue 15): no kernel needed, the kernel-side counter runs in a subprocess."""

import subprocess
import sys
import textwrap

import nbformat

from dgmlab.grading import grade as g
from dgmlab.grading.judge import ExportData
from dgmlab.grading.notebook import scan

BUDGET = {"seed": 0, "epochs": 5, "n_train": 2000}


class FakeData(ExportData):
    def __init__(self, items, events=()):
        self.items, self.guard_events, self.problem, self._arrays = items, list(events), "", {}


def _value(v):
    if isinstance(v, dict):
        return {"mapping": {k: _value(x) for k, x in v.items()}}
    if isinstance(v, list):
        return {"sequence": [_value(x) for x in v]}
    return {"value": v}


def _data(steps, seen, batch_size=128, **params):
    params = {**BUDGET, "grading": True, **params}
    return FakeData(
        {
            "_params": {"status": "ok", "data": _value(params)},
            "_train_steps": {"status": "ok", "data": _value({"steps": steps, "batch_size": batch_size, "seen": seen})},
        }
    )


def test_a_laundered_budget_is_caught_by_the_step_counter():
    honest = [{**BUDGET, "grading": True}]
    assert g.budget_problem(_data(80, honest), BUDGET) == ""  # 5 epochs x ceil(2000 / 128) = 80 steps
    laundered = [{**BUDGET, "epochs": 15, "grading": True}]  # epochs restored to 5 before the end
    msg = g.budget_problem(_data(240, laundered), BUDGET)
    assert "while your model trained, epochs was 15" in msg
    # the loop changed without touching the variables: the number of steps tells
    msg = g.budget_problem(_data(240, honest), BUDGET)
    assert "240 optimizer steps" in msg and "makes 80" in msg
    assert "0 optimizer steps" in g.budget_problem(_data(0, []), BUDGET)  # trained elsewhere, weights copied in
    assert g.budget_problem(_data(123, honest, batch_size=None), BUDGET) == ""  # no batch size given: not counted


def test_the_kernel_counts_steps_per_parameter_and_the_budget_while_stepping():
    script = textwrap.dedent(
        """
        import torch
        import dgmlab.grading.kernel as k
        ns = {"epochs": 5, "seed": 0}
        k.install_guard([], ["epochs", "seed"], ns)
        model, other = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        opt = torch.optim.Adam(model.parameters())
        ns["epochs"] = 15
        for _ in range(7):
            opt.zero_grad(); model(torch.ones(3, 2)).sum().backward(); opt.step()
        ns["epochs"] = 5
        copy = torch.nn.Linear(2, 1); copy.load_state_dict(model.state_dict())
        print(k.steps_of(model), k.steps_of(other), k.steps_of(copy), k.BUDGET_SEEN)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "7 0 0 [{'epochs': 15, 'seed': 0}]"


def test_every_forbidden_use_is_listed_with_its_place():
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import torch.distributions"),
            nbformat.v4.new_code_cell("def helper():\n    import torch.distributions as td\n    return td"),
        ]
    )
    events = [
        {"module": "torch.distributions", "attribute": "Normal", "functions": [], "execution_count": None, "line": 4},
        {"module": "torch.distributions", "attribute": "kl", "functions": ["helper"], "line": 3},
        {"module": "torch.distributions", "attribute": "Normal", "functions": [], "line": 9, "direct": False},
    ]
    uses = g.forbidden_uses(scan(nb, ("torch.distributions",)), events, None)
    assert uses[0] == "`import torch.distributions` (torch.distributions is not allowed) at cell 1, line 1 at top level"
    assert any(u.endswith("cell 2, line 2 in `helper`") for u in uses)
    assert uses[-2:] == [
        "used torch.distributions.Normal at run time (a cell, line 4 at top level)",
        "used torch.distributions.kl at run time (a cell, line 3 in `helper`)",
    ]
