"""`tamis select`: the configured stages over finished embeddings. ``selection:`` is one
stage (`stage.run_stage`); ``recipe:`` chains several (`recipe.run_recipe`)."""

from __future__ import annotations

from collections.abc import Callable

from apache_beam.io.filesystems import FileSystems

from tamis.config import Config, ConfigError, require
from tamis.pipelines.recipe import plan_recipe, run_recipe
from tamis.pipelines.stage import StagePlan, plan_stage, read_kept, run_stage
from tamis.records import InputError


def plan_selection(config: Config) -> list[StagePlan]:
    """Every stage of the config, checked before any work (selectors, parameters, budgets)."""
    if config.recipe is not None:
        return plan_recipe(config)
    selection = require(config.selection, "selection")
    output = require(selection.output, "selection.output")
    query_dir = FileSystems.join(output, "queries")
    return [plan_stage("selection", "select", selection, output, query_dir)]


def run_select(
    config: Config,
    beam_args: list[str] | None = None,
    on_stage: Callable[[StagePlan, dict, bool], None] | None = None,
    rerun: bool = False,
) -> dict:
    """Run the stages; return the manifest (the recipe's, or the one stage's). `rerun`: a
    recipe runs every stage, finished or not."""
    if config.recipe is not None:
        return run_recipe(config, beam_args, on_stage, rerun)
    if config.selection is None:
        raise ConfigError("selection: required key missing (or a recipe section)")
    (plan,) = plan_selection(config)
    previous = None
    if config.selection.candidates:
        try:
            previous = read_kept(config.selection.candidates)
        except InputError as err:
            raise InputError(f"selection.candidates: {err}") from None
    manifest = run_stage(config, plan, previous, beam_args)
    if on_stage is not None:
        on_stage(plan, manifest, False)
    return manifest
