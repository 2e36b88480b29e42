"""`tamis report DIR`: a short human summary of a subset directory and a score histogram.

A subset directory is what the select stage writes (see `tamis.pipelines.select`):
``subset.parquet`` (``id``, ``rank``, ``score``, ``weight``, ``selector``, the selector's
columns such as ``task``, and with ``join_records: true`` the record's own fields) and
``manifest.json``. A recipe directory (``"stage": "recipe"`` in its manifest) holds one such
directory per stage plus the final subset and a manifest with the stage-by-stage ``funnel``; its
report is the funnel followed by the summary of the final subset, and its PNG draws the funnel.
Everything here only reads the directory; the one thing written is the PNG.
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
FUNNEL_PNG = "funnel.png"
RECIPE_STAGE = "recipe"

# Ids derived from the record's position look like "<file>:<line>" (see records.to_pool_record).
_DERIVED_ID = re.compile(r"^(?P<source>.+):(?P<line>\d+)$")


def _read_subset(directory: str) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The manifest and the subset's columns (as Python lists); InputError if not a subset dir."""
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
    manifest = _read_manifest(os.path.join(directory, MANIFEST_FILE))
    return manifest, _read_columns(os.path.join(directory, SUBSET_FILE))


def _read_manifest(manifest_path: str) -> dict[str, Any]:
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{manifest_path}: cannot read the manifest: {err}") from err
    if not isinstance(manifest, dict):
        raise InputError(f"{manifest_path}: expected a JSON object")
    return manifest


def _read_columns(subset_path: str) -> dict[str, list[Any]]:
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
    return {c: table.column(c).to_pylist() for c in table.column_names}


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


def save_png(fig, path: str) -> str:
    """Lay out and write a figure as PNG (its directory made if needed); return the path."""
    fig.tight_layout()
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def threshold_sweep_png(rows: list[tuple[float, int | None]], threshold: float, n: int,
                        semantics: str) -> bytes:  # fmt: skip
    """Kept items at each dedup threshold (the chosen one marked), as PNG bytes."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    known = [(t, kept) for t, kept in rows if kept is not None]
    fig = Figure(figsize=(6.5, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([t for t, _ in known], [k for _, k in known], marker="o", markersize=3)
    ax.axvline(threshold, color="tab:red", linewidth=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("cosine threshold (an item this similar to another is a duplicate)")
    ax.set_ylabel(f"items kept (of {n:,})")
    ax.set_title(f"semantic dedup ({semantics}): kept items by threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


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
    return save_png(fig, path)


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
    save_png(fig, path)
    return path


# The keys of one funnel step in a recipe manifest, and what each must hold.
_STEP_TEXT = ("name", "selector", "kind")
_STEP_COUNTS = ("in", "kept", "removed")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_step(manifest_path: str, i: int, step: Any) -> dict[str, Any]:
    """One funnel entry, checked and normalised; InputError naming the entry and key if not."""
    where = f"{manifest_path}: funnel[{i}]"
    if not isinstance(step, dict):
        raise InputError(f"{where}: expected an object, got {step!r}")
    if isinstance(step.get("name"), str):
        where += f" ({step['name']})"
    for key in (*_STEP_TEXT, *_STEP_COUNTS):
        if key not in step:
            raise InputError(f"{where}: missing key {key!r}")
    for key in _STEP_TEXT:
        if not isinstance(step[key], str) or not step[key]:
            raise InputError(f"{where}: {key!r} should be a non-empty string, got {step[key]!r}")
    for key in _STEP_COUNTS:
        if not _is_count(step[key]):
            raise InputError(f"{where}: {key!r} should be a count, got {step[key]!r}")
    seconds = step.get("seconds")
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0
    ):
        raise InputError(f"{where}: 'seconds' should be a number, got {seconds!r}")
    skipped = step.get("skipped", False)
    if not isinstance(skipped, bool):
        raise InputError(f"{where}: 'skipped' should be true or false, got {skipped!r}")
    return {
        "name": step["name"],
        "selector": step["selector"],
        "kind": step["kind"],
        "dir": step.get("dir"),
        "in": step["in"],
        "kept": step["kept"],
        "removed": step["removed"],
        "seconds": None if seconds is None else float(seconds),
        "skipped": skipped,
    }


def _read_recipe_manifest(directory: str) -> dict[str, Any] | None:
    """The directory's manifest when it is a recipe's, else None (a plain subset dir or none)."""
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isfile(manifest_path):
        return None
    try:
        manifest = _read_manifest(manifest_path)
    except InputError:
        return None  # _read_subset reports an unreadable manifest as it always has
    return manifest if manifest.get("stage") == RECIPE_STAGE else None


def summarize_recipe(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The funnel of a recipe directory and the summary of its final subset.

    Returns a JSON-able dict: ``directory``, ``pool`` (items in the pool), ``funnel`` (one
    dict per stage, in order: ``name``, ``selector``, ``kind``, ``dir``, ``in``, ``kept``,
    ``removed``, ``seconds``, ``skipped``), ``final_rows`` (rows of the final subset),
    ``warnings`` (counts that do not add up) and ``final`` (`summarize_subset`'s dict of the
    final subset). Raises `InputError` naming the file and key when the manifest's ``pool``,
    ``funnel`` or ``final`` is missing or garbled, or the final subset is missing.
    """
    directory = os.fspath(directory)
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isdir(directory):
        raise InputError(f"{directory}: not a directory (expected a recipe directory)")
    manifest = _read_manifest(manifest_path)
    if manifest.get("stage") != RECIPE_STAGE:
        raise InputError(f"{manifest_path}: not a recipe manifest ('stage' is not 'recipe')")

    pool = manifest.get("pool")
    if not _is_count(pool):
        raise InputError(f"{manifest_path}: 'pool' should be the pool's item count, got {pool!r}")
    funnel = manifest.get("funnel")
    if not isinstance(funnel, list) or not funnel:
        raise InputError(
            f"{manifest_path}: 'funnel' should be a non-empty list of stages, got {funnel!r}"
        )
    steps = [_check_step(manifest_path, i, step) for i, step in enumerate(funnel)]

    final = manifest.get("final", {})
    if not isinstance(final, dict):
        raise InputError(f"{manifest_path}: 'final' should be an object, got {final!r}")
    subset_name = final.get("subset", SUBSET_FILE)
    if not isinstance(subset_name, str) or not subset_name:
        raise InputError(
            f"{manifest_path}: 'final.subset' should be a file name, got {subset_name!r}"
        )
    subset_path = os.path.join(directory, subset_name)
    if not os.path.isfile(subset_path):
        raise InputError(
            f"{subset_path}: the recipe's final subset is missing "
            f"('final.subset' in {manifest_path})"
        )
    columns = _read_columns(subset_path)
    rows = len(columns["id"])

    warnings = []
    previous = pool
    for i, step in enumerate(steps):
        label = f"funnel[{i}] ({step['name']})"
        if step["in"] != previous:
            warnings.append(f"{label}: in {step['in']:,} but the step before kept {previous:,}")
        if step["in"] - step["kept"] != step["removed"]:
            warnings.append(
                f"{label}: in {step['in']:,} - kept {step['kept']:,} != removed {step['removed']:,}"
            )
        previous = step["kept"]
    if previous != rows:
        warnings.append(f"the last stage kept {previous:,} but the final subset has {rows:,} rows")
    if isinstance(final.get("rows"), int) and final["rows"] != rows:
        warnings.append(f"manifest says final rows {final['rows']:,}, the subset has {rows:,}")

    # The recipe manifest has no selector/counts/params of its own: the final subset's
    # selector column names its last selector (or the last stage's, when it has none).
    selector = columns["selector"][0] if columns.get("selector") else steps[-1]["selector"]
    return {
        "directory": directory,
        "pool": pool,
        "funnel": steps,
        "final_rows": rows,
        "warnings": warnings,
        "final": _summarize(directory, {"selector": selector}, columns),
    }


def format_funnel(summary: dict[str, Any]) -> str:
    """The funnel of `summarize_recipe`'s dict: a header line and one aligned line per step."""
    steps = summary["funnel"]
    labels = ["pool"] + [
        f"{i:02d} {s['name']} ({s['selector']}, {s['kind']})" for i, s in enumerate(steps, 1)
    ]
    kept = [f"{summary['pool']:,}"] + [f"{s['kept']:,}" for s in steps]
    removed = [""] + [f"-{s['removed']:,}" for s in steps]
    seconds = [""] + ["" if s["seconds"] is None else f"{s['seconds']:.1f} s" for s in steps]
    lw = max(len(x) for x in labels)
    kw = max(len(x) for x in kept)
    rw = max(len(x) for x in removed)
    sw = max(len(x) for x in seconds)
    lines = [
        f"recipe {summary['directory']}: {summary['pool']:,} pool items -> "
        f"{summary['final_rows']:,} in the final subset",
        f"  {'stage':<{lw}}  {'kept':>{kw}}  {'removed':>{rw}}  {'time':>{sw}}".rstrip(),
        f"  {labels[0]:<{lw}}  {kept[0]:>{kw}}",
    ]
    for i, s in enumerate(steps, 1):
        line = f"  {labels[i]:<{lw}}  {kept[i]:>{kw}}  {removed[i]:>{rw}}  {seconds[i]:>{sw}}"
        if s["skipped"]:
            line += "  (skipped: unchanged)"
        lines.append(line.rstrip())
    lines.extend(f"  warning: {w}" for w in summary["warnings"])
    return "\n".join(lines)


def format_recipe(summary: dict[str, Any]) -> str:
    """The funnel, then the usual summary of the final subset."""
    return format_funnel(summary) + "\n" + format_summary(summary["final"])


# Bar colours per stage kind; other kinds cycle through the rest of tab10.
_KIND_COLORS = {"filter": "tab:blue", "select": "tab:orange", "weight": "tab:green"}


def plot_funnel(
    pool: int,
    funnel: list[dict[str, Any]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> str:
    """Write a PNG of a recipe's funnel: one horizontal bar per step, the pool first.

    Each bar is as long as the step kept; a lighter segment after it shows what the step
    removed (so kept + removed spans the step's input). ``funnel`` holds
    `summarize_recipe`'s steps. Returns the path written.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import StrMethodFormatter

    path = os.fspath(path)
    labels = ["pool"] + [
        f"{i:02d} {s['name']}\n{s['selector']} · {s['kind']}" for i, s in enumerate(funnel, 1)
    ]
    kept = [pool] + [s["kept"] for s in funnel]
    removed = [0] + [s["removed"] for s in funnel]
    spare = colormaps["tab10"].colors[3:]  # tab10's first three are the known kinds'
    by_kind: dict[str, Any] = dict(_KIND_COLORS)
    for kind in dict.fromkeys(s["kind"] for s in funnel):
        if kind not in by_kind:
            by_kind[kind] = spare[(len(by_kind) - len(_KIND_COLORS)) % len(spare)]
    colors = ["tab:gray"] + [by_kind[s["kind"]] for s in funnel]

    fig = Figure(figsize=(8, max(2.5, 0.6 * len(labels) + 1.2)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    y = np.arange(len(labels))
    ax.barh(y, kept, height=0.6, color=colors, edgecolor="white")
    ax.barh(
        y, removed, left=kept, height=0.6, color=colors, alpha=0.3, edgecolor="white", hatch="//"
    )
    widest = max(k + r for k, r in zip(kept, removed, strict=True)) or 1
    for i, (k, r) in enumerate(zip(kept, removed, strict=True)):
        text = f"{k:,}" + ("" if i == 0 else f" kept   -{r:,}")
        if i and funnel[i - 1]["skipped"]:
            text += "  (skipped)"
        ax.text(k + r + widest * 0.01, i, text, va="center", fontsize="small")
    ax.set_yticks(y, labels, fontsize="small")
    ax.invert_yaxis()  # the pool on top, the final stage at the bottom
    ax.set_xlim(0, widest * 1.4)
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_xlabel("items (solid: kept, hatched: removed by the step)")
    ax.set_title(title or f"funnel: {pool:,} pool items -> {kept[-1]:,}")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return save_png(fig, path)


def _report_recipe(directory: str, output_png: str | os.PathLike[str] | None) -> tuple[str, str]:
    summary = summarize_recipe(directory)
    png = output_png if output_png is not None else os.path.join(directory, FUNNEL_PNG)
    name = os.path.basename(os.path.normpath(directory))
    title = f"funnel of {name}: {summary['pool']:,} pool items -> {summary['final_rows']:,}"
    png = plot_funnel(summary["pool"], summary["funnel"], png, title=title)
    return format_recipe(summary), png


def report(
    directory: str | os.PathLike[str], output_png: str | os.PathLike[str] | None = None
) -> tuple[str, str]:
    """Summarise a subset directory and plot its scores: (text, PNG path).

    The PNG goes to ``output_png``, by default ``<directory>/scores.png``. A recipe directory
    (its manifest says ``"stage": "recipe"``) gets its funnel (`format_funnel`) followed by
    the summary of its final subset, and the PNG draws the funnel (`plot_funnel`), by default
    at ``<directory>/funnel.png``.
    """
    directory = os.fspath(directory)
    if os.path.isdir(directory) and _read_recipe_manifest(directory) is not None:
        return _report_recipe(directory, output_png)
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
