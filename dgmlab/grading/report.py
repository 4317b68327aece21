"""Feedback for students (Markdown) and the summary for the instructor's terminal."""

from __future__ import annotations

from statistics import mean, median


def _fmt(x) -> str:
    return "" if x is None else f"{x:g}"


def feedback_markdown(result: dict) -> str:
    """Per-student feedback: total, what happened when the notebook ran, and each question with its checks."""
    lines = [f"# Feedback: {result.get('lab', '')}, {result['student']}", ""]
    lines.append(f"**Automatic score: {_fmt(result.get('total', 0))} / {_fmt(result.get('max_total', 0))}**")
    manual = [q for q in result.get("questions", []) if q.get("manual")]
    if manual:
        pts = sum(q["max_points"] for q in manual)
        lines.append(f"(plus up to {pts:g} points for the written answers, graded by hand)")
    lines.append("")
    if result.get("status") == "unreadable":
        lines += ["Your file could not be graded:", "", f"> {result['notes'][0]}", ""]
    elif result.get("notes"):
        lines += ["## About your notebook", ""]
        lines += [f"- {n}" for n in result["notes"]]
        lines.append("")
    for q in result.get("questions", []):
        head = f"## {q['title']}: "
        head += "graded by hand" if q.get("manual") else f"{_fmt(q['points'])} / {_fmt(q['max_points'])}"
        lines += [head, ""]
        for n in q.get("notes", []):
            if n != "graded by hand":
                lines.append(f"- **{n}**")
        for c in q.get("checks", []):
            mark = "passed" if c["passed"] else "failed"
            text = f"- {c['name']} ({_fmt(c['points'])}/{_fmt(c['max_points'])}): {mark}"
            if not c["passed"] and c.get("message"):
                text += f": {c['message']}"
            lines.append(text)
        lines.append("")
    lines.append(
        "_The grader ran your notebook in a fresh folder with a small training budget, then tested your functions "
        "on its own inputs. Run the self-check cells in the lab to find problems before submitting._"
    )
    return "\n".join(lines) + "\n"


def summary(results: list[dict]) -> str:
    """A few lines for the terminal: how many graded, score statistics, and who needs a look."""
    if not results:
        return "nothing to grade"
    totals = [r.get("total", 0) for r in results]
    max_total = max((r.get("max_total", 0) for r in results), default=0)
    trouble = [
        r for r in results if r.get("status") != "graded" or (r.get("run", {}).get("status") not in (None, "completed"))
    ]
    out = [
        f"{len(results)} submission(s): mean {mean(totals):.1f}, median {median(totals):.1f}, "
        f"min {min(totals):g}, max {max(totals):g} (of {max_total:g} automatic points)"
    ]
    for r in trouble:
        why = r["notes"][0] if r.get("notes") else r.get("status", "")
        out.append(f"  needs a look: {r['student']}: {why[:120]}")
    for r in results:
        if r.get("id_note"):
            out.append(f"  {r['id_note']}")
    return "\n".join(out)
