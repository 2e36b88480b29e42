"""Recipes: stages chained over one pool (dedup -> decontaminate -> select -> reweight).

Stage k's candidates are the ids stage k-1 kept; weights multiply along the way (each
stage's subset holds the product so far). Under ``recipe.output``:

- ``NN-name/``: each stage's subset dir (written by `stage.run_stage`);
- ``subset.parquet`` / ``subset.jsonl``: the final subset, records joined;
- ``manifest.json``: the funnel (pool -> each stage: in, kept, removed, seconds, skipped).

Resuming: each stage's manifest holds a fingerprint of its config, of the files it reads and
of the stage before it. A re-run skips a finished stage whose fingerprint is unchanged; a
changed stage reruns, and with it every later one. A stage killed midway has no manifest
and runs again from the start (and so do the stages after it). tamis's own version is part
of the fingerprint; `tamis select --rerun` reruns every stage. A recipe dir whose stages
were made by a different config is refused unless ``--overwrite`` (`select.check_select_outputs`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from apache_beam.io.filesystems import FileSystems

import tamis
from tamis.config import Config, RecipeStageConfig, SelectionConfig, require
from tamis.pipelines.embed import versions
from tamis.pipelines.stage import (
    MANIFEST,
    SUBSET_JSONL,
    SUBSET_PARQUET,
    KeptItems,
    StagePlan,
    plan_stage,
    read_kept,
    record_fields,
    run_stage,
    subset_rows,
    write_subset,
)
from tamis.records import read_json, read_table_files, write_json_atomic

log = logging.getLogger(__name__)

# Files larger than this are fingerprinted by size and modification time, not content.
HASHED_BYTES = 256 * 2**20


def stage_dir(output: str, number: int, name: str) -> str:
    return FileSystems.join(output, f"{number:02d}-{name}")


def plan_recipe(config: Config) -> list[StagePlan]:
    """Every stage, checked before any work."""
    recipe = require(config.recipe, "recipe")
    output = require(recipe.output, "recipe.output")
    query_dir = FileSystems.join(output, "queries")
    plans = []
    for i, stage in enumerate(recipe.stages):
        name = stage.name or stage.selector
        directory = stage_dir(output, i + 1, name)
        plans.append(plan_stage(f"recipe.stages[{i}]", name, stage, directory, query_dir))
    return plans


def path_fingerprint(path: str) -> str | None:
    """What identifies a local file or directory's content: a content hash (a size and
    mtime past HASHED_BYTES); for a dir with a manifest (embeddings), the fingerprint the
    manifest records (a re-run that skipped every shard rewrites the manifest, not the
    vectors), else the manifest's hash; None if absent or remote."""
    if not os.path.exists(path):
        return None
    if os.path.isdir(path):
        manifest = os.path.join(path, MANIFEST)
        if os.path.isfile(manifest):
            try:
                recorded = read_json(manifest).get("fingerprint")
            except (ValueError, OSError, AttributeError):
                recorded = None
            return recorded or path_fingerprint(manifest)
        entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path))
        return hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    stat = os.stat(path)
    if stat.st_size > HASHED_BYTES:
        return f"size={stat.st_size},mtime_ns={stat.st_mtime_ns}"
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _paths_in(value: Any) -> list[str]:
    """Strings inside a config value that name existing local paths."""
    if isinstance(value, str):
        return [value] if value and os.path.exists(value) else []
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths_in(v)]
    return []


def stage_fingerprint(
    config: Config, stage: RecipeStageConfig | SelectionConfig, previous: str
) -> str:
    """A hash of what decides the stage's result: its own keys, the sections its inputs
    come from, the content of every file they name, and the previous stage's fingerprint."""
    sections = {
        "stage": dataclasses.asdict(stage),
        "pool": None if config.pool is None else dataclasses.asdict(config.pool),
        "embedding": dataclasses.asdict(config.embedding),
        "queries": {k: dataclasses.asdict(v) for k, v in config.queries.items()},
        "index": dataclasses.asdict(config.index),
        "previous": previous,
        "tamis": tamis.__version__,  # a new release reruns (edits within one do not: rerun)
    }
    files = _paths_in(sections["stage"]["params"]) + _paths_in(sections["queries"])
    if config.pool is not None:
        files += _paths_in(sections["pool"]["path"])
    if config.embedding.output:
        files += _paths_in(config.embedding.output)
    sections["files"] = {path: path_fingerprint(path) for path in sorted(set(files))}
    text = json.dumps(sections, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def stage_fingerprints(config: Config, plans: list[StagePlan]) -> list[str]:
    """Each stage's fingerprint, chained (a stage's includes the one before it)."""
    fingerprints: list[str] = []
    for plan in plans:
        previous = fingerprints[-1] if fingerprints else ""
        fingerprints.append(stage_fingerprint(config, plan.spec, previous))
    return fingerprints


def finished_manifest(directory: str, fingerprint: str) -> dict | None:
    """The stage dir's manifest if it finished with this fingerprint."""
    path = FileSystems.join(directory, MANIFEST)
    if not FileSystems.exists(path) or not FileSystems.exists(
        FileSystems.join(directory, SUBSET_PARQUET)
    ):
        return None
    try:
        manifest = read_json(path)
    except (ValueError, OSError):
        return None
    return manifest if manifest.get("fingerprint") == fingerprint else None


def _clear(path: str) -> None:
    """Remove a stale stage dir or final file before it is written anew."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif FileSystems.exists(path):
        FileSystems.delete([path])


def run_recipe(
    config: Config,
    beam_args: list[str] | None = None,
    on_stage: Callable[[StagePlan, dict, bool], None] | None = None,
    rerun: bool = False,
) -> dict:
    """Run (or resume) the recipe; write the final subset and the funnel manifest.
    `rerun`: run every stage, finished or not (e.g. after changing tamis itself)."""
    started = time.perf_counter()
    recipe = require(config.recipe, "recipe")
    output = require(recipe.output, "recipe.output")
    plans = plan_recipe(config)
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    previous: KeptItems | None = None
    funnel: list[dict] = []
    pool = None
    # Once a stage runs, every later one runs too.
    for plan, fingerprint in zip(plans, stage_fingerprints(config, plans), strict=True):
        manifest = None if rerun else finished_manifest(plan.output, fingerprint)
        skipped = manifest is not None
        rerun = not skipped
        if skipped:
            log.info("%s: unchanged since its last run, skipped", plan.name)
        else:
            for stale in (MANIFEST, SUBSET_PARQUET, SUBSET_JSONL):
                _clear(FileSystems.join(output, stale))
            _clear(plan.output)
            manifest = run_stage(config, plan, previous, beam_args, fingerprint)
        kept = read_kept(plan.output)
        if pool is None:
            pool = manifest["counts"]["pool"]
        entering = pool if previous is None else len(previous.ids)
        funnel.append(
            {
                "name": plan.name,
                "selector": plan.selector.name,
                "kind": plan.selector.kind,
                "dir": os.path.basename(plan.output),
                "in": entering,
                "kept": len(kept.ids),
                "removed": entering - len(kept.ids),
                "seconds": manifest["seconds"]["wall"],
                "skipped": skipped,
            }
        )
        if on_stage is not None:
            on_stage(plan, manifest, skipped)
        previous = kept

    final = read_table_files(FileSystems.join(plans[-1].output, SUBSET_PARQUET))
    fields = record_fields(config, set(final.column("id").to_pylist())) if (
        recipe.join_records and config.pool is not None) else None  # fmt: skip
    write_subset(output, subset_rows(final, fields))
    manifest = {
        "stage": "recipe",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pool": pool,
        "funnel": funnel,
        "final": {"rows": final.num_rows, "subset": SUBSET_PARQUET},
        "config": config.to_dict(),
        "seconds": {"wall": round(time.perf_counter() - started, 3)},
        "versions": versions(),
    }
    write_json_atomic(FileSystems.join(output, MANIFEST), manifest)
    return manifest
