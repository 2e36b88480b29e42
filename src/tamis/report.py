"""`tamis report DIR`: a short human summary of a subset directory and a score histogram.

A subset directory is what the select stage writes (see `tamis.pipelines.select`):
``subset.parquet`` (``id``, ``rank``, ``score``, ``weight``, ``selector``, the selector's
columns such as ``task``, and with ``join_records: true`` the record's own fields) and
``manifest.json``. Everything here only reads that directory; the one thing written is the PNG.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tamis.records import InputError

SUBSET_FILE = "subset.parquet"
MANIFEST_FILE = "manifest.json"
DEFAULT_PNG = "scores.png"

# Ids derived from the record's position look like "<file>:<line>" (see records.to_pool_record).
_DERIVED_ID = re.compile(r"^(?P<source>.+):(?P<line>\d+)$")


def _read_subset(directory: str) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The manifest and the subset's columns (as Python lists); InputError if not a subset dir."""
    subset_path = os.path.join(directory, SUBSET_FILE)
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isdir(directory):
        raise InputError(f"{directory}: not a directory (expected a subset directory)")
    missing = [
        name
        for name in (SUBSET_FILE, MANIFEST_FILE)
        if not os.path.isfile(os.path.join(directory, name))
    ]
    if missing:
        raise InputError(
            f"{directory}: not a subset directory (missing {' and '.join(missing)}; "
            "`tamis select` writes one)"
        )
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{manifest_path}: cannot read the manifest: {err}") from err
    if not isinstance(manifest, dict):
        raise InputError(f"{manifest_path}: expected a JSON object")
    # Only the small columns are read; the joined record text is never loaded.
    wanted = ("id", "rank", "score", "weight", "selector", "task", "source")
    try:
        names = pq.read_schema(subset_path).names
        table = pq.read_table(subset_path, columns=[c for c in wanted if c in names])
    except Exception as err:  # pyarrow raises several types for a bad file
        raise InputError(f"{subset_path}: cannot read the subset: {err}") from err
    for column in ("id", "score"):
        if column not in table.column_names:
            raise InputError(f"{subset_path}: no {column!r} column (not a tamis subset?)")
    columns = {c: table.column(c).to_pylist() for c in table.column_names}
    return manifest, columns


def _score_stats(scores: np.ndarray) -> dict[str, float] | None:
    """min/p10/median/p90/max/mean of the finite scores; None when there are none."""
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return None
    p10, median, p90 = np.percentile(finite, [10, 50, 90])
    return {
        "min": float(finite.min()),
        "p10": float(p10),
        "median": float(median),
        "p90": float(p90),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
    }


def _shares(values: list[str]) -> dict[str, dict[str, float | int]]:
    """{value: {"count", "share"}}, most common first (ties by name)."""
    counts = Counter(values)
    total = sum(counts.values())
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {k: {"count": n, "share": n / total} for k, n in ordered}


def _sources(columns: dict[str, list[Any]]) -> tuple[str, list[str]] | None:
    """(how the source was found, one source per row), or None when the subset has none.

    The record's own ``source`` field wins; otherwise ids derived as ``<file>:<line>`` give
    their file, but only when every id has that form (a mix would be misleading).
    """
    if "source" in columns:
        return "source column", ["(none)" if s is None else str(s) for s in columns["source"]]
    ids = [str(i) for i in columns["id"]]
    if not ids:
        return None
    matches = [_DERIVED_ID.match(i) for i in ids]
    if all(m is not None for m in matches):
        return "id prefix", [m.group("source") for m in matches if m is not None]
    return None


def summarize_subset(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts, score distribution, per-task and per-source shares of a subset directory.

    Returns a JSON-able dict with keys ``directory``, ``selector``, ``counts`` (the
    manifest's, plus ``rows``), ``scores`` (min/p10/median/p90/max/mean of the finite
    scores, or None; ``non_finite`` counts the rest), ``weight_sum``, ``per_task`` and
    ``per_source`` ({name: {"count", "share"}} or None), ``source_from`` and
    ``label_agreement`` ({task: {"picked", "on_label", "rate"}} or None). Raises
    `InputError` when ``directory`` is not a subset directory.
    """
    directory = os.fspath(directory)
    manifest, columns = _read_subset(directory)
    return _summarize(directory, manifest, columns)


def _float_array(values: list[Any]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _summarize(
    directory: str, manifest: dict[str, Any], columns: dict[str, list[Any]]
) -> dict[str, Any]:
    scores = _float_array(columns["score"])
    rows = len(columns["id"])

    selector = manifest.get("selector")
    if selector is None and columns.get("selector"):
        selector = columns["selector"][0]

    per_task = None
    if "task" in columns:
        per_task = _shares(["(none)" if t is None else str(t) for t in columns["task"]])

    sources = _sources(columns)
    per_source = _shares(sources[1]) if sources else None

    weight_sum = None
    if "weight" in columns:
        weight_sum = float(np.nansum(_float_array(columns["weight"])))

    agreement = None
    if isinstance(manifest.get("label_agreement"), dict):
        agreement = {
            task: {
                "picked": int(v["picked"]),
                "on_label": int(v["on_label"]),
                "rate": v["on_label"] / v["picked"] if v["picked"] else None,
            }
            for task, v in manifest["label_agreement"].items()
        }

    counts = dict(manifest.get("counts") or {})
    counts["rows"] = rows
    selection = (manifest.get("config") or {}).get("selection") or {}
    return {
        "directory": directory,
        "selector": selector,
        "params": manifest.get("params") or {},
        "counts": counts,
        "scores": _score_stats(scores),
        "non_finite_scores": int((~np.isfinite(scores)).sum()),
        "weight_sum": weight_sum,
        "per_task": per_task,
        "per_source": per_source,
        "source_from": sources[0] if sources else None,
        "label_field": selection.get("label_field"),
        "label_agreement": agreement,
    }


def _fmt_count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def _share_lines(shares: dict[str, dict[str, Any]], limit: int = 10) -> list[str]:
    width = max(len(k) for k in list(shares)[:limit])
    lines = [
        f"    {name:<{width}}  {v['count']:>6,}  {100 * v['share']:5.1f}%"
        for name, v in list(shares.items())[:limit]
    ]
    if len(shares) > limit:
        rest = list(shares.values())[limit:]
        n = sum(v["count"] for v in rest)
        share = sum(v["share"] for v in rest)
        lines.append(f"    ({len(rest)} more)  {n:,} rows, {100 * share:.1f}%")
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """A short, readable text block for `summarize_subset`'s dict."""
    c = summary["counts"]
    lines = [f"subset {summary['directory']}"]
    params = ", ".join(f"{k}={v}" for k, v in summary["params"].items())
    lines.append(f"  selector: {summary['selector']}" + (f" ({params})" if params else ""))

    picked = f"{c['rows']:,} rows"
    if "budget" in c:
        picked += f" (budget {_fmt_count(c['budget'])})"
    if "candidates" in c:
        picked += f" from {_fmt_count(c['candidates'])} candidates"
    if "pool" in c:
        picked += f", pool {_fmt_count(c['pool'])}"
    if c.get("excluded_duplicates"):
        picked += f", {_fmt_count(c['excluded_duplicates'])} exact duplicates removed"
    lines.append(f"  selected: {picked}")
    if "selected" in c and c["selected"] != c["rows"]:
        lines.append(f"  warning: manifest says {c['selected']} selected, subset has {c['rows']}")

    s = summary["scores"]
    if s is None:
        lines.append("  scores: none finite")
    else:
        lines.append(
            "  scores: min {min:.4g}  p10 {p10:.4g}  median {median:.4g}  p90 {p90:.4g}  "
            "max {max:.4g}  mean {mean:.4g}".format(**s)
        )
    if summary["non_finite_scores"]:
        lines.append(f"  warning: {summary['non_finite_scores']:,} scores are NaN/inf")
    if summary["weight_sum"] is not None:
        lines.append(f"  weight sum: {summary['weight_sum']:.4g}")

    agreement = summary["label_agreement"] or {}
    label = summary.get("label_field") or "label"
    if summary["per_task"]:
        lines.append("  per task:")
        width = max(len(t) for t in summary["per_task"])
        for task, v in summary["per_task"].items():
            line = f"    {task:<{width}}  {v['count']:>6,}  {100 * v['share']:5.1f}%"
            if task in agreement and agreement[task]["rate"] is not None:
                a = agreement[task]
                line += f"   {a['on_label']}/{a['picked']} on {label} ({100 * a['rate']:.0f}%)"
            lines.append(line)
    elif agreement:
        for task, a in agreement.items():
            if a["rate"] is not None:
                lines.append(
                    f"  {task}: {a['on_label']}/{a['picked']} on {label} ({100 * a['rate']:.0f}%)"
                )

    if summary["per_source"]:
        lines.append(f"  per source ({summary['source_from']}):")
        lines.extend(_share_lines(summary["per_source"]))
    return "\n".join(lines)


def plot_score_histogram(
    scores: np.ndarray,
    path: str | os.PathLike[str],
    by_task: dict[str, np.ndarray] | None = None,
    title: str | None = None,
) -> str:
    """Write a PNG histogram of ``scores`` (stacked by task when ``by_task`` is given).

    ``by_task`` maps a task name to its scores; the tasks should partition ``scores``.
    Non-finite scores are left out. Returns the path written.
    """
    # The object-oriented API on an Agg canvas: no pyplot state, no global backend switch.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = os.fspath(path)
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    fig = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if finite.size == 0:
        ax.text(0.5, 0.5, "no finite scores", ha="center", va="center", transform=ax.transAxes)
    else:
        lo, hi = float(finite.min()), float(finite.max())
        if lo == hi:  # one value (e.g. a random baseline's zeros): a visible bar around it
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, int(np.clip(np.sqrt(finite.size) * 2, 10, 50)) + 1)
        if by_task and len(by_task) > 1:
            names = list(by_task)
            data = [np.asarray(by_task[n], dtype=np.float64) for n in names]
            data = [d[np.isfinite(d)] for d in data]
            colors = colormaps["tab10"].colors
            ax.hist(
                data,
                bins=bins,
                stacked=True,
                label=[f"{n} ({d.size:,})" for n, d in zip(names, data, strict=True)],
                color=[colors[i % len(colors)] for i in range(len(names))],
                edgecolor="white",
                linewidth=0.5,
            )
        else:
            ax.hist(finite, bins=bins, color="tab:blue", edgecolor="white", linewidth=0.5)
        median = float(np.median(finite))
        ax.axvline(median, color="black", linestyle="--", linewidth=1, label=f"median {median:.3g}")
        ax.legend(fontsize="small")
    ax.set_xlabel("score")
    ax.set_ylabel("picks")
    ax.set_title(title or f"scores of {scores.size:,} picks")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(path, format="png")
    return path


SKILL_PROFILE = "missing_skill_profile.parquet"
SKILLS_PNG = "skills.png"


def plot_skill_profile(profile_path: str, path: str, top: int = 30) -> str:
    """Bars of the most missed skills: their share of the missing-skill mentions next to
    their share of the reweighted set's skill mass (STAT's profile)."""
    import pyarrow.parquet as pq
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = pq.read_table(profile_path).to_pylist()[:top]
    rows = [r for r in rows if r["missing_count"] > 0] or rows
    names = [r["skill"] for r in rows][::-1]  # most missed at the top
    missing = np.asarray([r["share"] for r in rows][::-1])
    weight = np.asarray([r["weight_share"] for r in rows][::-1])
    before = np.asarray([r.get("uniform_share", 0.0) for r in rows][::-1])
    fig = Figure(figsize=(7, max(2.5, 0.3 * len(rows) + 1)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.barh(y + 0.27, missing, height=0.27, color="tab:red", label="share of missing mentions")
    ax.barh(y, weight, height=0.27, color="tab:blue", label="skill share after STAT")
    ax.barh(y - 0.27, before, height=0.27, color="tab:gray", label="skill share before (uniform)")
    ax.set_yticks(y, names, fontsize="small")
    ax.set_xlabel("share")
    ax.set_title(f"missing skills (top {len(rows)}) and their weight after STAT")
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def report(
    directory: str | os.PathLike[str], output_png: str | os.PathLike[str] | None = None
) -> tuple[str, str]:
    """Summarise a subset directory and plot its scores: (text, PNG path).

    The PNG goes to ``output_png``, by default ``<directory>/scores.png``.
    """
    directory = os.fspath(directory)
    manifest, columns = _read_subset(directory)
    summary = _summarize(directory, manifest, columns)
    scores = _float_array(columns["score"])
    by_task = None
    if "task" in columns:
        tasks = np.asarray(["(none)" if t is None else str(t) for t in columns["task"]])
        by_task = {t: scores[tasks == t] for t in (summary["per_task"] or {})}
    title = f"{summary['selector']}: scores of {scores.size:,} picks"
    png = output_png if output_png is not None else os.path.join(directory, DEFAULT_PNG)
    png = plot_score_histogram(scores, png, by_task, title=title)
    text = format_summary(summary)
    profile = os.path.join(directory, SKILL_PROFILE)
    if os.path.exists(profile):  # a stat subset: its Missing-Skill-Profile too
        skills_png = plot_skill_profile(profile, os.path.join(os.path.dirname(png), SKILLS_PNG))
        text += f"\n  skill profile: {skills_png}"
    return text, png
