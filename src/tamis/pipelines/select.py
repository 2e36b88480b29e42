"""`tamis select`: the configured stages over finished embeddings. ``selection:`` is one
stage (`stage.run_stage`); ``recipe:`` chains several (`recipe.run_recipe`).

An output directory holds one job. Running the same job again reruns it (a recipe resumes,
skipping finished stages); a different job (its config or its input files changed) is
refused unless ``overwrite``, as `tamis embed` does.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Callable
from typing import Any

from apache_beam.io.filesystems import FileSystems

from tamis.config import Config, ConfigError, make_output_dir, require
from tamis.pipelines.embed import OutputConflictError
from tamis.pipelines.recipe import (
    path_fingerprint,
    plan_recipe,
    run_recipe,
    stage_fingerprint,
    stage_fingerprints,
)
from tamis.pipelines.stage import MANIFEST, StagePlan, plan_stage, read_kept, run_stage
from tamis.records import InputError, read_json

STAGE_DIR = re.compile(r"^\d\d-")


def plan_selection(config: Config) -> list[StagePlan]:
    """Every stage of the config, checked before any work (selectors, parameters, budgets)."""
    if config.recipe is not None:
        return plan_recipe(config)
    selection = require(config.selection, "selection")
    output = require(selection.output, "selection.output")
    query_dir = FileSystems.join(output, "queries")
    return [plan_stage("selection", "select", selection, output, query_dir)]


def selection_fingerprint(config: Config) -> str:
    """What decides a one-stage selection's result (the recipe stage's fingerprint; the
    candidates dir stands where a recipe has the previous stage)."""
    selection = require(config.selection, "selection")
    previous = path_fingerprint(selection.candidates) or "" if selection.candidates else ""
    return stage_fingerprint(config, selection, previous)


def check_select_outputs(config: Config, overwrite: bool = False) -> None:
    """Refuse to write into another job's output (before any work); with `overwrite`,
    clear what the other job left that this one would not replace."""
    if config.recipe is not None:
        _check_recipe_output(config, overwrite)
        return
    selection = require(config.selection, "selection")
    output = require(selection.output, "selection.output")
    make_output_dir(output, "selection.output", create=False)
    existing = _manifest_in(output)
    if existing is None:
        return
    if existing.get("fingerprint") != selection_fingerprint(config):
        if not overwrite:
            if existing.get("stage") == "recipe":
                held = "a recipe's results"
            else:
                changes = changed_keys(
                    existing.get("config", {}).get("selection"),
                    dataclasses.asdict(selection),
                    "selection",
                )
                held = "the subset of a different job (" + (
                    f"changed: {changes})" if changes else "its input files changed)"
                )
            raise OutputConflictError(
                f"selection.output: {output} holds {held}; choose another selection.output "
                "or pass --overwrite"
            )
        _clear_dir(output, keep={"queries"})


def _check_recipe_output(config: Config, overwrite: bool) -> None:
    recipe = require(config.recipe, "recipe")
    output = require(recipe.output, "recipe.output")
    make_output_dir(output, "recipe.output", create=False)
    if not os.path.isdir(output):
        return
    plans = plan_recipe(config)
    problems = []
    top = _manifest_in(output)
    if top is not None and top.get("stage") != "recipe":
        problems.append("the subset of a one-stage selection")
    planned = {os.path.basename(p.output) for p in plans}
    extra = sorted(
        e.name for e in os.scandir(output)
        if e.is_dir() and STAGE_DIR.match(e.name) and e.name not in planned
    )  # fmt: skip
    if extra:
        problems.append(f"stages this recipe does not have ({', '.join(extra)})")
    fingerprints = stage_fingerprints(config, plans)
    for i, (plan, fingerprint) in enumerate(zip(plans, fingerprints, strict=True)):
        existing = _manifest_in(plan.output)
        if existing is not None and existing.get("fingerprint") != fingerprint:
            old_stages = (existing.get("config", {}).get("recipe") or {}).get("stages") or []
            old = old_stages[i] if i < len(old_stages) else None
            changes = changed_keys(old, dataclasses.asdict(plan.spec), plan.key)
            why = f"changed: {changes}" if changes else "its inputs or an earlier stage changed"
            problems.append(
                f"stage {os.path.basename(plan.output)} of a different run ({why}); with "
                "--overwrite it reruns with every later stage, earlier ones are kept"
            )
            break
    if not problems:
        return
    if not overwrite:
        raise OutputConflictError(
            f"recipe.output: {output} holds {'; '.join(problems)}; choose another "
            "recipe.output or pass --overwrite"
        )
    for name in extra:
        shutil.rmtree(os.path.join(output, name))
    if top is not None and top.get("stage") != "recipe":
        _clear_dir(output, keep=planned | {"queries"})


def changed_keys(old: Any, new: Any, prefix: str, limit: int = 3) -> str:
    """'selection.budget 100 -> 200, ...': the leaf keys whose values differ."""
    if not isinstance(old, dict):
        return ""
    changes = [
        f"{key} {_short(a)} -> {_short(b)}" for key, a, b in _leaf_differences(old, new, prefix)
    ]
    shown = ", ".join(changes[:limit])
    return shown + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def _leaf_differences(old: Any, new: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _leaf_differences(old.get(key), new.get(key), f"{prefix}.{key}")
        return out
    return [] if old == new else [(prefix, old, new)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _manifest_in(directory: str) -> dict | None:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        manifest = read_json(path)
    except InputError:
        return {}  # a damaged manifest: not this job's
    return manifest if isinstance(manifest, dict) else {}


def _clear_dir(directory: str, keep: set[str]) -> None:
    for entry in os.scandir(directory):
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry.path)
        else:
            os.remove(entry.path)


def run_select(
    config: Config,
    beam_args: list[str] | None = None,
    on_stage: Callable[[StagePlan, dict, bool], None] | None = None,
    overwrite: bool = False,
    rerun: bool = False,
) -> dict:
    """Run the stages; return the manifest (the recipe's, or the one stage's).
    `overwrite`: replace another job's output. `rerun`: a recipe runs every stage, finished
    and unchanged or not."""
    plans = plan_selection(config)
    check_select_outputs(config, overwrite)
    if config.recipe is not None:
        return run_recipe(config, beam_args, on_stage, rerun)
    if config.selection is None:
        raise ConfigError("selection: required key missing (or a recipe section)")
    (plan,) = plans
    previous = None
    if config.selection.candidates:
        try:
            previous = read_kept(config.selection.candidates)
        except InputError as err:
            raise InputError(f"selection.candidates: {err}") from None
    manifest = run_stage(config, plan, previous, beam_args, selection_fingerprint(config))
    if on_stage is not None:
        on_stage(plan, manifest, False)
    return manifest
