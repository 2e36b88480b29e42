"""Recipes: stages chained over one pool; a selector defined here runs through the CLI
and inside a recipe; resumption after a kill; imported vectors select like embedded ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import write_jsonl
from tamis.cli import main as tamis_main
from tamis.config import config_from_dict
from tamis.embeddings.store import read_embeddings
from tamis.pipelines.embed import OutputConflictError, run_embed
from tamis.pipelines.select import run_select
from tamis.selectors.base import (
    EMBEDDINGS,
    Selection,
    SelectionInputs,
    Selector,
    candidate_mask,
    ids_at,
    register,
)

COLUMNS = ["id", "rank", "score", "weight"]


@register
class FarFromMeanSelector(Selector):
    """Defined in this test only: the items farthest from the pool's mean vector."""

    name = "test_far_from_mean"
    needs = frozenset({EMBEDDINGS})

    @dataclass
    class Params:
        scale: float = 1.0

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        vectors = np.concatenate(list(inputs.blocks()))
        distance = self.params.scale * ((vectors - vectors.mean(axis=0)) ** 2).sum(axis=1)
        distance[~candidate_mask(inputs)] = -np.inf
        index = np.lexsort((np.arange(len(distance)), -distance))[:budget]
        table = pa.table({"id": pa.array(ids_at(inputs.ids, np.arange(len(vectors)))),
                          "distance": pa.array(distance)})  # fmt: skip
        return Selection(
            selector=self.name,
            index=index,
            ids=ids_at(inputs.ids, index),
            score=distance[index],
            outputs={"distances.parquet": table},
        )


@pytest.fixture(scope="module")
def pool_job(tmp_path_factory, bbc_records):
    """25 articles per topic (two exact copies added), skills = [topic, length class], an
    evaluation missing tech and short skills, 3 held-out queries for tech and sports."""
    root = tmp_path_factory.mktemp("recipe")
    by_topic: dict[str, list] = {}
    for r in bbc_records:
        by_topic.setdefault(r["topic"], []).append(r)
    pool, queries = [], {}
    for topic, rows in sorted(by_topic.items()):
        queries[topic] = rows[:3]
        for r in rows[3:28]:
            text = r["text"][:400]
            length = "long" if len(r["text"]) > 2000 else "short"
            pool.append({"id": r["id"], "text": text, "topic": topic, "skills": [topic, length]})
    pool.append({**pool[3], "id": "copy-a"})
    pool.append({**pool[40], "id": "copy-b"})
    write_jsonl(root / "pool.jsonl", pool)
    for topic in ("tech", "sports"):
        write_jsonl(root / f"q_{topic}.jsonl", [{"text": r["text"][:400]} for r in queries[topic]])
    write_jsonl(
        root / "evaluation.jsonl",
        [
            {"correct": False, "missing_skills": ["tech"]},
            {"correct": False, "missing_skills": ["tech", "short"]},
            {"correct": True, "missing_skills": []},
        ],
    )
    data = {
        "pool": {"path": str(root / "pool.jsonl")},
        "embedding": {"output": str(root / "emb"), "max_length": 64},
        "queries": {
            "tech": {"path": str(root / "q_tech.jsonl")},
            "sports": {"path": str(root / "q_sports.jsonl")},
        },
    }
    run_embed(config_from_dict(data), progress=False)
    return root, data, pool


def stages(root) -> list[dict]:
    return [
        {"name": "dedup", "selector": "exact_dedup"},
        {"name": "target", "selector": "rds", "budget": 40, "distributed": True,
         "params": {"tasks": ["tech", "sports"]}},  # fmt: skip
        {"name": "balance", "selector": "stat",
         "params": {"evaluation": str(root / "evaluation.jsonl"), "mix_uniform": 0.2}},
    ]  # fmt: skip


def subset(directory) -> dict[str, list]:
    table = pq.read_table(directory / "subset.parquet")
    return {c: table.column(c).to_pylist() for c in COLUMNS}


def test_a_selector_defined_in_a_test_runs_through_tamis_select_and_a_recipe(
    pool_job, tmp_path, capsys
):
    root, data, pool = pool_job
    selection = {"selector": "test_far_from_mean", "budget": 10, "params": {"scale": 2.0}}
    config = {**data, "selection": {**selection, "output": str(tmp_path / "far")}}
    path = tmp_path / "far.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert tamis_main(["select", str(path)]) == 0
    assert "selected 10 of 127 candidates with test_far_from_mean" in capsys.readouterr().out
    ids, vectors = read_embeddings(str(root / "emb"))
    distance = 2.0 * ((vectors - vectors.mean(axis=0)) ** 2).sum(axis=1)
    expected = [ids[i] for i in np.lexsort((np.arange(len(ids)), -distance))[:10]]
    assert subset(tmp_path / "far")["id"] == expected
    extra = pq.read_table(tmp_path / "far" / "distances.parquet")
    assert extra.num_rows == 127 and np.allclose(extra.column("distance").to_numpy(), distance)

    recipe = {**data, "recipe": {"output": str(tmp_path / "recipe"), "stages": [
        {"name": "dedup", "selector": "exact_dedup"},
        {"name": "far", "selector": "test_far_from_mean", "budget": 10},
    ]}}  # fmt: skip
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert tamis_main(["select", str(path)]) == 0
    copies = {"copy-a", "copy-b"}
    kept = subset(tmp_path / "recipe" / "02-far")["id"]
    allowed = [i for i in np.lexsort((np.arange(len(ids)), -distance)) if ids[i] not in copies]
    assert kept == [ids[i] for i in allowed[:10]]
    assert (tmp_path / "recipe" / "02-far" / "distances.parquet").exists()
    final = pq.read_table(tmp_path / "recipe" / "subset.parquet")
    assert final.column("id").to_pylist() == kept and "text" in final.column_names


def test_a_recipe_equals_its_stages_run_by_hand(pool_job, tmp_path):
    root, data, pool = pool_job
    job = {**data, "recipe": {"output": str(tmp_path / "recipe"), "stages": stages(root)}}
    recipe = run_select(config_from_dict(job))
    previous = None
    for number, stage in enumerate(stages(root), start=1):
        selection = {k: v for k, v in stage.items() if k != "name"}
        selection.update(output=str(tmp_path / f"hand{number}"), candidates=previous)
        run_select(config_from_dict({**data, "selection": selection}))
        previous = str(tmp_path / f"hand{number}")
        by_recipe = subset(tmp_path / "recipe" / f"{number:02d}-{stage['name']}")
        assert by_recipe == subset(tmp_path / f"hand{number}"), stage["name"]

    first_of_text: dict[str, str] = {}
    copies = {}  # a later copy -> the first record with its text (brute force)
    for record in pool:
        first = first_of_text.setdefault(record["text"], record["id"])
        if first != record["id"]:
            copies[record["id"]] = first
    assert {"copy-a", "copy-b"} <= set(copies)
    funnel = recipe["funnel"]
    assert recipe["pool"] == 127
    unique = 127 - len(copies)
    assert [(s["in"], s["kept"], s["removed"]) for s in funnel] == [
        (127, unique, len(copies)),
        (unique, 40, unique - 40),
        (40, funnel[2]["kept"], 40 - funnel[2]["kept"]),
    ]
    assert [s["kind"] for s in funnel] == ["filter", "select", "weight"]
    final = pq.read_table(tmp_path / "recipe" / "subset.parquet")
    assert final.column("id").to_pylist() == subset(tmp_path / "hand3")["id"]
    # The final subset is a fine-tuning set: records joined, weights from the stat stage.
    assert {"text", "topic", "skills", "weight"} <= set(final.column_names)
    hand2 = dict(zip(*(subset(tmp_path / "hand2")[c] for c in ("id", "weight")), strict=True))
    assert set(final.column("id").to_pylist()) <= set(hand2)
    duplicates = pq.read_table(tmp_path / "recipe" / "01-dedup" / "duplicates.parquet")
    found = dict(
        zip(*(duplicates.column(c).to_pylist() for c in ("id", "matched_id")), strict=True)
    )
    assert found == copies


PLUGIN = textwrap.dedent(
    """
    import os, time
    from tamis.selectors.base import register
    from tamis.selectors.rds import RdsSelector

    @register
    class BlockingRds(RdsSelector):
        name = "rds_blocking"  # rds that, when asked to, signals and then hangs in select

        def select(self, inputs, budget, seed):
            marker = os.environ.get("TAMIS_TEST_BLOCK")
            if marker:
                open(marker, "w").close()
                time.sleep(600)
            return super().select(inputs, budget, seed)
    """
)


@pytest.mark.slow
def test_kill_during_stage_two_then_rerun_resumes(pool_job, tmp_path):
    root, data, pool = pool_job
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "blocking_plugin.py").write_text(PLUGIN)
    steps = stages(root)
    steps[1] = {"name": "target", "selector": "rds_blocking", "budget": 40}
    job = {**data, "recipe": {"output": str(tmp_path / "recipe"), "stages": steps}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    code = "import sys, blocking_plugin; from tamis.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, "run", str(tmp_path / "job.yaml"), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "plugin")}
    marker = tmp_path / "in-stage-2"
    process = subprocess.Popen(command, env={**env, "TAMIS_TEST_BLOCK": str(marker)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "stage 2 never started"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stage_one = tmp_path / "recipe" / "01-dedup" / "manifest.json"
    assert stage_one.exists() and not (tmp_path / "recipe" / "02-target" / "manifest.json").exists()
    first_write = stage_one.stat().st_mtime_ns

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "dedup: unchanged since the last run, skipped" in rerun.stdout
    assert stage_one.stat().st_mtime_ns == first_write
    # The same recipe run cleanly elsewhere gives the same files.
    sys.path.insert(0, str(tmp_path / "plugin"))
    try:
        import blocking_plugin  # noqa: F401  (registers rds_blocking here too)

        clean = {**job, "recipe": {**job["recipe"], "output": str(tmp_path / "clean")}}
        run_select(config_from_dict(clean))
    finally:
        sys.path.remove(str(tmp_path / "plugin"))
    for name in ("01-dedup", "02-target", "03-balance"):
        assert subset(tmp_path / "recipe" / name) == subset(tmp_path / "clean" / name), name
    assert subset(tmp_path / "recipe") == subset(tmp_path / "clean")

    # Change stage 3's parameters: stages 1 and 2 are skipped, stage 3 reruns.
    times = {n: (tmp_path / "recipe" / n / "manifest.json").stat().st_mtime_ns
             for n in ("01-dedup", "02-target", "03-balance")}  # fmt: skip
    steps[2]["params"]["mix_uniform"] = 0.5
    # Another job's results are not replaced silently: the error names the changed stage.
    with pytest.raises(OutputConflictError, match=r"stage 03-balance of a different run \(changed: "
                       r"recipe.stages\[2\].params.mix_uniform"):  # fmt: skip
        run_select(config_from_dict(job))
    manifest = run_select(config_from_dict(job), overwrite=True)
    assert [s["skipped"] for s in manifest["funnel"]] == [True, True, False]
    for name in ("01-dedup", "02-target"):
        assert (tmp_path / "recipe" / name / "manifest.json").stat().st_mtime_ns == times[name]
    assert (tmp_path / "recipe" / "03-balance" / "manifest.json").stat().st_mtime_ns != times[
        "03-balance"
    ]
    again = run_select(config_from_dict(job))  # nothing changed: everything skipped
    assert [s["skipped"] for s in again["funnel"]] == [True, True, True]
    forced = run_select(config_from_dict(job), rerun=True)  # tamis select --rerun
    assert [s["skipped"] for s in forced["funnel"]] == [False, False, False]
    assert subset(tmp_path / "recipe" / "02-target") == subset(tmp_path / "clean" / "02-target")


def test_imported_vectors_select_like_embedded_ones(pool_job, tmp_path, capsys):
    root, data, pool = pool_job
    ids, vectors = read_embeddings(str(root / "emb"))
    pq.write_table(
        pa.table({"doc": ids, "vec": pa.array(list(vectors), pa.list_(pa.float32()))}),
        tmp_path / "vectors.parquet",
    )
    command = ["embeddings", "import", str(tmp_path / "vectors.parquet"), str(tmp_path / "imp"),
               "--id-column", "doc"]  # fmt: skip
    assert tamis_main(command) == 0
    assert "imported 127 vectors of dimension 384" in capsys.readouterr().out
    selection = {"selector": "rds", "budget": 30}
    for name, emb in (("embedded", root / "emb"), ("imported", tmp_path / "imp")):
        config = {**data, "embedding": {**data["embedding"], "output": str(emb)},
                  "selection": {**selection, "output": str(tmp_path / name)}}  # fmt: skip
        run_select(config_from_dict(config))
    assert subset(tmp_path / "imported") == subset(tmp_path / "embedded")


def test_recipe_config_errors_name_the_stage(pool_job, tmp_path):
    from tamis.config import ConfigError
    from tamis.records import InputError

    root, data, _ = pool_job
    bad = [
        ({"stages": []}, "recipe.stages: name at least one stage"),
        ({"stages": [{"selector": "rds"}, {"selector": "rds"}]}, r"\[1\].name: 'rds' is used"),
        ({"stages": [{"selector": "rds"}]}, r"stages\[0\].budget: required key missing"),
        ({"stages": [{"selector": "rds", "budget": 5, "params": {"x": 1}}]},
         r"recipe.stages\[0\].params.x: unknown key"),
        ({"stages": [{"selector": "exact_dedup"}, {"selector": "cet"}]},
         r"^recipe.stages\[1\].params.qrels: cet needs"),
    ]  # fmt: skip
    for recipe, message in bad:
        with pytest.raises(ConfigError, match=message):
            config = config_from_dict({**data, "recipe": {"output": str(tmp_path), **recipe}})
            run_select(config)
    selection = {"selector": "random", "budget": 3, "output": str(tmp_path / "s")}
    with pytest.raises(InputError, match=r"selection.candidates: .*nowhere: no subset.parquet"):
        run_select(config_from_dict({**data, "selection": {**selection, "candidates": "nowhere"}}))
    (tmp_path / "ghosts").mkdir()
    pq.write_table(pa.table({"id": ["ghost-1", "ghost-2"], "weight": [1.0, 1.0]}),
                   tmp_path / "ghosts" / "subset.parquet")  # fmt: skip
    with pytest.raises(InputError, match=r"2 ids kept by .*ghosts are not in this stage's pool"):
        ghosts = {**selection, "candidates": str(tmp_path / "ghosts")}
        run_select(config_from_dict({**data, "selection": ghosts}))
    # Errors found while a stage runs name the stage too.
    dedup = {"selector": "dedup", "params": {"keep": "field", "field": "quality"}}
    with pytest.raises(ConfigError, match=r"^recipe.stages\[0\].params.field: 127 records"):
        run_select(config_from_dict({**data, "recipe": {"output": str(tmp_path / "r"),
                                                        "stages": [dedup]}}))  # fmt: skip
    with pytest.raises(ConfigError, match="either selection"):
        config_from_dict({**data, "selection": {"selector": "rds"},
                          "recipe": {"stages": [{"selector": "rds"}]}})  # fmt: skip
