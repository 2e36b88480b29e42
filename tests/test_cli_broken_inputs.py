"""Every CLI verb, fed a broken input of each kind it reads: exit 2, one `tamis: error:`
line naming the file or key (the last line on stderr), no Python traceback.

One small world (a pool with probabilities, skills, stream and bucket fields, embedded
once) gives each verb a working job first; each case then breaks one file or key of it.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import cli_error, write_jsonl
from tamis.cli import main

ROOT = Path(__file__).parents[1]
OBSERVATIONS = ROOT / "configs" / "data" / "scaling_observations.csv"
BUCKETS = ["top0-10%", "top10-20%", "top20-30%", "top30-40%"]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "lambda", "mu", "nu", "xi"]  # fmt: skip


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    records = []
    for i in range(16):
        probs = np.full(3, 0.1)
        probs[i % 3] = 0.8
        records.append(
            {
                "id": f"r{i}",
                "text": f"record {i}: " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(8)),
                "probs": probs.tolist(),
                "labeled": i < 2,
                "skills": [["algebra"], ["geometry"], ["algebra", "strings"]][i % 3],
                "order": i,
                "bucket": BUCKETS[i % 4],
                "quality_score": 1.0 - i / 16,
            }
        )
    write_jsonl(root / "pool.jsonl", records)
    write_jsonl(root / "queries.jsonl", [{"id": "q0", "text": records[0]["text"]}])
    write_jsonl(
        root / "evaluation.jsonl",
        [
            {"id": "e0", "correct": False, "missing_skills": ["algebra"]},
            {"id": "e1", "rewards": [0.2, 0.4], "missing_skills": ["geometry"]},
        ],
    )
    write_jsonl(
        root / "qrels.jsonl", [{"query_id": f"r{i}", "doc_id": f"r{i + 3}"} for i in range(8)]
    )
    write_jsonl(
        root / "provenance.jsonl",
        [
            {"query_id": "r0", "doc_id": f"r{d}", "retriever": "weak", "rank": d}
            for d in range(1, 6)
        ],
    )
    base = {
        "pool": {"path": str(root / "pool.jsonl")},
        "embedding": {"output": str(root / "emb"), "max_length": 32},
        "queries": {"target": {"embeddings": str(root / "emb")}},
    }
    (root / "embed.yaml").write_text(yaml.safe_dump(base))
    assert main(["embed", str(root / "embed.yaml"), "--no-progress"]) == 0
    scaling = {"scaling": {"observations": str(OBSERVATIONS), "pool_size": "12.8M",
                           "fit": {"a": 0.025, "d": 0.1}, "compute": ["32M", "3.2B"],
                           "output": str(root / "scaling")}}  # fmt: skip
    (root / "scaling.yaml").write_text(yaml.safe_dump(scaling))
    assert main(["scaling", "fit", str(root / "scaling.yaml")]) == 0
    return root, base


SELECTIONS: dict[str, dict] = {
    "rds": {"selector": "rds", "budget": 4},
    "pcoreset": {"selector": "pcoreset", "budget": 3, "params": {"labeled_field": "labeled"}},
    "stat": {"selector": "stat", "budget": "100%",
             "params": {"evaluation": "{root}/evaluation.jsonl"}},
    "stream_al": {"selector": "stream_al", "budget": "50%", "params": {"w": 4}},
    "scaling_law": {"selector": "scaling_law", "params": {"fit": "{root}/scaling/fit.json",
                                                          "compute": "64M"}},
    "cet": {"selector": "cet", "params": {"qrels": "{root}/qrels.jsonl",
            "provenance": "{root}/provenance.jsonl", "k": 15, "negatives_per_query": 2}},
    "dedup": {"selector": "dedup"},
    "decontaminate": {"selector": "decontaminate",
                      "params": {"against": {"evalset": {"path": "{root}/queries.jsonl"}}}},
}  # fmt: skip


def _fill(value, root: Path):
    if isinstance(value, str):
        return value.replace("{root}", str(root))
    if isinstance(value, dict):
        return {k: _fill(v, root) for k, v in value.items()}
    return value


def select_job(world, tmp_path: Path, selector: str, **changes) -> Path:
    """A working select job for `selector` in tmp_path, with `changes` applied (dotted keys
    under selection, e.g. params.labeled=...; pool / queries / embedding replace sections)."""
    root, base = world
    data = json.loads(json.dumps(base))
    selection = _fill(json.loads(json.dumps(SELECTIONS[selector])), root)
    selection["output"] = str(tmp_path / "subset")
    for key, value in changes.items():
        if key in ("pool", "queries", "embedding"):
            data[key] = value
            continue
        target = selection
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    data["selection"] = selection
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("selector", list(SELECTIONS))
def test_every_selector_runs_on_the_world(world, tmp_path, capsys, selector):
    """The unbroken jobs work: each broken case below differs from one of them by one thing."""
    code, out, err = run_cli(["select", select_job(world, tmp_path, selector)], capsys)
    assert code == 0, err
    assert (tmp_path / "subset" / "manifest.json").exists()


def _cut(path: Path, into: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    into.write_bytes(data[: int(len(data) * keep)])
    return into


def _gz(path: Path, into: Path) -> Path:
    into.write_bytes(gzip.compress(path.read_bytes()))
    return into


def _nan_embeddings(root: Path, into: Path) -> Path:
    shutil.copytree(root / "emb", into)
    part = sorted(into.glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).copy()
    vectors[1, 0] = math.nan
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    pq.write_table(table.set_column(1, "embedding", column), part)
    return into


# (name, verb builder, fragment the error names). A builder gets (world, tmp_path) and
# returns the argv.
Case = tuple[str, Callable[[tuple, Path], list], str]


def _embed_job(world, tmp_path: Path, pool: dict | None = None, **embedding) -> Path:
    root, base = world
    data = {
        "pool": pool or base["pool"],
        "embedding": {"output": str(tmp_path / "emb"), "max_length": 32, **embedding},
    }
    path = tmp_path / "embed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _config_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def _file(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


CASES: list[Case] = [
    # ---- configs and flags (every job verb reads them the same way)
    ("config missing", lambda w, t: ["embed", t / "nope.yaml"], "nope.yaml"),
    ("config not YAML", lambda w, t: ["embed", _config_text(t, "pool: [\n")], "job.yaml"),
    ("config a list", lambda w, t: ["select", _config_text(t, "- 1\n")], "job.yaml"),
    ("unknown key", lambda w, t: ["embed", _config_text(t, "embeding: {}\n")], "embeding"),
    ("bad --set", lambda w, t: ["embed", _embed_job(w, t), "--set", "pool.path"], "--set"),
    ("typo flag", lambda w, t: ["embed", _embed_job(w, t), "--strcit"], "--strict"),
    # ---- embed: the pool and the output
    ("pool missing", lambda w, t: ["embed", _embed_job(w, t, {"path": str(t / "x.jsonl")})],
     "x.jsonl"),
    ("pool empty", lambda w, t: ["embed", _embed_job(w, t, {"path": str(_file(t, "e.jsonl", ""))})],
     "e.jsonl"),
    ("pool cut .gz, strict", lambda w, t: ["embed", _embed_job(w, t, {"path": str(
        _cut(_gz(w[0] / "pool.jsonl", t / "p.jsonl.gz"), t / "cut.jsonl.gz"))}), "--strict"],
     "cut.jsonl.gz"),
    ("pool not Parquet", lambda w, t: ["embed", _embed_job(w, t, {"path": str(
        _file(t, "p.parquet", b"PAR1 not really"))})], "p.parquet"),
    ("pool.format parquet on JSONL", lambda w, t: ["embed", _embed_job(
        w, t, {"path": str(w[0] / "pool.jsonl"), "format": "parquet"})], "pool.jsonl"),
    ("bad line, strict", lambda w, t: ["embed", _embed_job(w, t, {"path": str(
        _file(t, "b.jsonl", '{"id": "a", "text": "x"}\n{"id": "b", "text": 5}\n'))}),
        "--strict"], "b.jsonl"),
    ("output is a file", lambda w, t: ["embed", _embed_job(
        w, t, output=str(_file(t, "out", "x")))], "out"),
    ("output under a file", lambda w, t: ["embed", _embed_job(
        w, t, output=str(_file(t, "f", "x") / "emb"))], "f"),
    ("layer out of range", lambda w, t: ["embed", _embed_job(w, t, layer=99)], "embedding.layer"),
    # ---- select: embeddings, queries, each selector's files, the output
    ("embeddings missing", lambda w, t: ["select", select_job(w, t, "rds", embedding={
        "output": str(t / "none")})], "embedding.output"),
    ("embeddings part cut", lambda w, t: ["select", select_job(w, t, "rds", embedding={
        "output": str(_cut_part(w[0], t / "emb"))})], "part-"),
    ("embeddings NaN", lambda w, t: ["select", select_job(w, t, "rds", embedding={
        "output": str(_nan_embeddings(w[0], t / "emb"))})], "NaN"),
    ("embeddings NaN, on Beam", lambda w, t: ["select", select_job(w, t, "rds", distributed=True,
        embedding={"output": str(_nan_embeddings(w[0], t / "emb"))})], "NaN"),
    ("queries missing", lambda w, t: ["select", select_job(w, t, "rds", queries={
        "target": {"path": str(t / "q.jsonl")}})], "q.jsonl"),
    ("queries NaN", lambda w, t: ["select", select_job(w, t, "rds", queries={
        "target": {"embeddings": str(_nan_embeddings(w[0], t / "qemb"))}})], "queries.target"),
    ("probabilities missing", lambda w, t: ["select", select_job(
        w, t, "pcoreset", **{"params.probabilities": str(t / "p.parquet")})], "p.parquet"),
    ("probabilities ghost ids", lambda w, t: ["select", select_job(
        w, t, "pcoreset", **{"params.probabilities": str(_ghost_probabilities(w[0], t))})],
     "'ghost'"),
    ("probabilities lack pool ids", lambda w, t: ["select", select_job(
        w, t, "pcoreset", **{"params.probabilities": str(_ghost_probabilities(w[0], t, 12))})],
     "'r12'"),
    ("labeled missing", lambda w, t: ["select", select_job(
        w, t, "pcoreset", **{"params.labeled": str(t / "l.txt"),
                            "params.labeled_field": None})], "l.txt"),
    ("labeled strings", lambda w, t: ["select", select_job(
        w, t, "pcoreset", pool={"path": str(_pool_with(w[0], t, labeled="yes"))})], "'labeled'"),
    ("evaluation empty rewards", lambda w, t: ["select", select_job(
        w, t, "stat", **{"params.evaluation": str(write_jsonl(t / "ev.jsonl", [
            {"id": "e0", "rewards": [], "missing_skills": ["algebra"]}]))})], "ev.jsonl"),
    ("resume not JSON", lambda w, t: ["select", select_job(
        w, t, "stream_al", **{"params.resume": str(_file(t, "s.json", "{"))})], "s.json"),
    ("fit.json partial", lambda w, t: ["select", select_job(
        w, t, "scaling_law", **{"params.fit": str(_file(t, "fit.json", '{"a": 1'))})],
     "fit.json"),
    ("qrels bad columns", lambda w, t: ["select", select_job(
        w, t, "cet", **{"params.qrels": str(write_jsonl(t / "qr.jsonl", [
            {"q": "r0", "d": "r3"}]))})], "qr.jsonl"),
    ("against missing", lambda w, t: ["select", select_job(
        w, t, "decontaminate", **{"params.against": {"evalset": {
            "path": str(t / "ev.jsonl")}}})], "ev.jsonl"),
    ("selection.output a file", lambda w, t: ["select", select_job(
        w, t, "rds", output=str(_file(t, "o", "x")))], "selection.output"),
    ("budget 0", lambda w, t: ["select", select_job(w, t, "rds", budget=0)], "selection.budget"),
    ("candidates missing", lambda w, t: ["select", select_job(
        w, t, "rds", candidates=str(t / "earlier"))], "selection.candidates"),
    ("pool not the embedded one", lambda w, t: ["select", select_job(
        w, t, "rds", join_records=True, pool={"path": str(_other_pool(w[0], t))})],
     "pool.path"),
    ("another job's subset", lambda w, t: ["select", _second_job(w, t)], "selection.budget"),
    ("run: bad budget before embedding", lambda w, t: ["run", select_job(w, t, "rds", budget=0)],
     "selection.budget"),
    # ---- scaling
    ("observations missing", lambda w, t: ["scaling", "fit", _scaling_job(
        w, t, observations=str(t / "obs.csv"))], "obs.csv"),
    ("observations out of range", lambda w, t: ["scaling", "fit", _scaling_job(
        w, t, observations=str(_file(t, "o.csv", "bucket,samples_seen,error\na,10,1.7\n")))],
     "o.csv"),
    ("scaling: a Beam flag", lambda w, t: ["scaling", "fit", _scaling_job(w, t),
                                           "--runner=DataflowRunner"], "runs no Beam pipeline"),
    ("plan: fit.json partial", lambda w, t: ["scaling", "plan", _scaling_job(
        w, t, output=str(_fit_dir(t, '{"a": 0.1, "d": 0.1, "z": 0.5, "buckets": {"x": {}}}')))],
     "fit.json"),
    # ---- data, report, embeddings import
    ("data: output under a file", lambda w, t: ["data", "bbcnews", _file(t, "f", "x") / "p.jsonl"],
     "f"),
    ("data: humaneval output a file", lambda w, t: ["data", "humaneval", _file(t, "h", "x")], "h"),
    ("data: judged without embeddings", lambda w, t: ["data", "bbcnews-judged", t / "j",
                                                      "--embeddings", t / "none"], "none"),
    ("report: no dir", lambda w, t: ["report", t / "none"], "none"),
    ("report: manifest not JSON", lambda w, t: ["report", _broken_subset_dir(w, t)], "manifest"),
    ("import: source missing", lambda w, t: ["embeddings", "import", t / "v.parquet", t / "o"],
     "v.parquet"),
    ("import: NaN vectors", lambda w, t: ["embeddings", "import", _nan_vectors(t), t / "o"],
     "NaN"),
    ("import: output a file", lambda w, t: ["embeddings", "import", w[0] / "emb",
                                            _file(t, "o", "x")], "o"),
]  # fmt: skip


def _cut_part(root: Path, into: Path) -> Path:
    shutil.copytree(root / "emb", into)
    part = sorted(into.glob("part-*.parquet"))[0]
    _cut(part, part, keep=0.5)
    return into


def _ghost_probabilities(root: Path, tmp_path: Path, n_pool: int = 16) -> Path:
    """Probabilities for the first n_pool pool ids, plus one id the pool does not have."""
    ids = [f"r{i}" for i in range(n_pool)] + ["ghost"]
    probs = [[0.8, 0.1, 0.1]] * len(ids)
    path = tmp_path / "probs.parquet"
    pq.write_table(pa.table({"id": ids, "probs": probs}), path)
    return path


def _pool_with(root: Path, tmp_path: Path, **values) -> Path:
    records = [json.loads(line) for line in (root / "pool.jsonl").read_text().splitlines()]
    return write_jsonl(tmp_path / "pool2.jsonl", [{**r, **values} for r in records])


def _other_pool(root: Path, tmp_path: Path) -> Path:
    records = [json.loads(line) for line in (root / "pool.jsonl").read_text().splitlines()]
    return write_jsonl(tmp_path / "other.jsonl", [{**r, "id": "o" + r["id"]} for r in records])


def _second_job(world, tmp_path: Path) -> Path:
    assert main(["select", str(select_job(world, tmp_path, "rds"))]) == 0
    return select_job(world, tmp_path, "rds", budget=5)


def _scaling_job(world, tmp_path: Path, **changes) -> Path:
    root, _ = world
    data = yaml.safe_load((root / "scaling.yaml").read_text())
    data["scaling"].update(changes)
    path = tmp_path / "scaling.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _fit_dir(tmp_path: Path, text: str) -> Path:
    (tmp_path / "fitdir").mkdir()
    (tmp_path / "fitdir" / "fit.json").write_text(text)
    return tmp_path / "fitdir"


def _broken_subset_dir(world, tmp_path: Path) -> Path:
    assert main(["select", str(select_job(world, tmp_path, "rds"))]) == 0
    (tmp_path / "subset" / "manifest.json").write_text("{ not json")
    return tmp_path / "subset"


def _nan_vectors(tmp_path: Path) -> Path:
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "v": [[1.0, 0.0], [math.nan, 1.0]]}), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name, build, fragment", CASES, ids=[c[0] for c in CASES])
def test_a_broken_input_is_one_error_line(world, tmp_path, capsys, name, build, fragment):
    error = cli_error(capsys, *build(world, tmp_path))
    assert fragment in error, error


@pytest.mark.slow
def test_a_pool_edited_after_embedding_with_the_same_ids_is_still_the_pool(
    world, tmp_path, capsys, caplog
):
    """Labels change between active-learning rounds; the vectors stay valid."""
    root, _ = world
    records = [json.loads(line) for line in (root / "pool.jsonl").read_text().splitlines()]
    edited = write_jsonl(tmp_path / "pool.jsonl", [{**r, "labeled": r["id"] in ("r5", "r6")}
                                                   for r in records])  # fmt: skip
    job = select_job(world, tmp_path, "rds", join_records=True, pool={"path": str(edited)})
    with caplog.at_level(logging.INFO, logger="tamis"):
        code, out, err = run_cli(["select", job], capsys)
    assert code == 0, err
    assert "changed since it was embedded (same ids)" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "subset" / "subset.jsonl").open()]
    assert all("text" in row for row in rows)


@pytest.mark.slow
def test_duplicate_ids_in_a_joined_pool_are_an_error(world, tmp_path, capsys):
    root, base = world
    pool = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "one thing"},
                       {"id": "b", "text": "another"}, {"id": "a", "text": "a third"}])  # fmt: skip
    data = {"pool": {"path": str(pool)}, "embedding": {"output": str(tmp_path / "emb"),
            "max_length": 16}, "queries": {"t": {"embeddings": str(tmp_path / "emb")}},
            "selection": {"selector": "rds", "budget": 3, "join_records": True,
                          "output": str(tmp_path / "subset")}}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    code, out, err = run_cli(["run", tmp_path / "job.yaml", "--no-progress"], capsys)
    assert "warning: 1 ids occur more than once (e.g. a)" in out
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"tamis: error: pool.path: id 'a' is used by two records ({pool}:1 and {pool}:3), so "
        "the subset cannot join its record; give every record its own id (pool.id_field) and "
        "embed again"
    )


@pytest.mark.slow
def test_a_partly_bad_query_file_is_said_where_it_is_seen(world, tmp_path, capsys, caplog):
    queries = write_jsonl(tmp_path / "q.jsonl", [{"id": "q0", "text": "alpha beta"},
                          {"id": "q1", "text": 5}, {"id": "q2", "text": "gamma"}])  # fmt: skip
    job = select_job(world, tmp_path, "rds", queries={"target": {"path": str(queries)}})
    with caplog.at_level(logging.INFO, logger="tamis"):
        code, out, err = run_cli(["select", job], capsys)
    assert code == 0, err
    expected = "queries.target: 1 of 3 query records rejected (text_not_string 1), selecting"
    assert f"{expected} with the other 2" in caplog.text


@pytest.mark.slow
def test_a_budget_too_large_fails_before_query_sets_are_embedded(world, tmp_path, capsys):
    root, _ = world
    queries = {"target": {"path": str(root / "queries.jsonl")}}
    job = select_job(world, tmp_path, "rds", budget=500, queries=queries)
    error = cli_error(capsys, "select", job)
    assert "selection.budget: 500 is larger than the pool (16 candidates)" in error
    assert not (tmp_path / "subset" / "queries").exists()
