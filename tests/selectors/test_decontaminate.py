"""Decontamination: planted copies and paraphrases of evaluation items are all found at the
documented thresholds (cosine 0.9 with the default encoder, plus the 13-gram rule), no
unrelated article is removed; the n-gram rule equals a plain implementation."""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest

from conftest import write_jsonl
from tamis.config import ConfigError, config_from_dict
from tamis.pipelines.embed import run_embed
from tamis.pipelines.select import run_select
from tamis.selectors import make_selector
from tamis.selectors.decontaminate import ngram_hits, ngram_owners, words

SWAPS = {"said": "stated", "the": "this", "is": "was", "has": "had", "will": "would",
         "year": "season", "and": "&", "but": "yet", "new": "fresh", "people": "folks"}  # fmt: skip


def plain_ngram_matches(pool: dict[str, str], evals: list[str], n: int) -> set[str]:
    """The rule as a person would write it: sets of word n-grams, intersected."""

    def grams(text: str) -> set[tuple[str, ...]]:
        tokens = re.sub(r"[^\w\s]", " ", text.lower()).split()
        return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}

    eval_grams = set().union(*(grams(t) for t in evals))
    return {rid for rid, text in pool.items() if grams(text) & eval_grams}


def test_ngram_rule_equals_a_plain_implementation(bbc_records):
    evals = [r["text"] for r in bbc_records[:40]]
    pool = {r["id"]: r["text"] for r in bbc_records[40:400]}
    pool["copy"] = evals[3]
    pool["quote"] = "As reported: " + " ".join(words(evals[7])[20:34]) + ". More text follows."
    pool["short"] = " ".join(words(evals[9])[:12])  # 12 words: no 13-gram
    for n in (5, 8, 13):
        expected = plain_ngram_matches(pool, evals, n)
        hits = ngram_hits(pool.items(), ngram_owners(evals, n), n)
        assert set(hits) == expected, n
        for rid, (owner, gram) in hits.items():
            assert " ".join(gram) in " ".join(words(evals[owner]))
            assert " ".join(gram) in " ".join(words(pool[rid]))
    assert {"copy", "quote"} <= set(hits) and "short" not in hits


@pytest.fixture(scope="module")
def planted(tmp_path_factory, bbc_records):
    """100 unrelated articles, and copies / paraphrases of 10 evaluation articles."""
    root = tmp_path_factory.mktemp("decontaminate")
    evals = bbc_records[0:2225:220][:10]
    eval_ids = {r["id"] for r in evals}
    eval_texts = {r["text"] for r in evals}
    unrelated = [r for r in bbc_records[5::21] if r["id"] not in eval_ids
                 and r["text"] not in eval_texts][:100]  # fmt: skip
    pool = [{"id": r["id"], "text": r["text"]} for r in unrelated]
    variants = {
        "copy": lambda t: t,
        "spacing": lambda t: "  " + t.replace(". ", ".  ") + "\n",
        "swaps": lambda t: " ".join(SWAPS.get(w, w) for w in t.split()),
        "retitled": lambda t: "BREAKING: " + " ".join(SWAPS.get(w, w) for w in t.split()),
        "lower_no_punctuation": lambda t: re.sub(r"[^\w\s]", "", t.lower()),
    }
    for r in evals:
        for name, make in variants.items():
            pool.append({"id": f"{name}:{r['id']}", "text": make(r["text"])})
    write_jsonl(root / "pool.jsonl", pool)
    write_jsonl(root / "test_set.jsonl", [{"id": r["id"], "text": r["text"]} for r in evals])
    data = {
        "pool": {"path": str(root / "pool.jsonl")},
        "embedding": {"output": str(root / "emb"), "max_length": 256},
    }
    run_embed(config_from_dict(data), progress=False)
    return root, data, pool


@pytest.mark.slow
def test_planted_copies_and_paraphrases_are_all_found(planted):
    root, data, pool = planted
    against = {"test": {"path": str(root / "test_set.jsonl")}}
    results = {}
    for rules in ({"threshold": 0.9}, {"threshold": None, "ngram": 13},
                  {"threshold": 0.9, "ngram": 13}):  # fmt: skip
        output = root / f"out-{len(results)}"
        selection = {"selector": "decontaminate", "params": {"against": against, **rules},
                     "output": str(output)}  # fmt: skip
        manifest = run_select(config_from_dict({**data, "selection": selection}))
        table = pq.read_table(output / "contamination.parquet").to_pylist()
        results[len(results)] = ({r["id"] for r in table}, manifest, table)
    planted_ids = {r["id"] for r in pool if ":" in r["id"]}
    by_embedding, _, table = results[0]
    # Copies and word-level paraphrases are >= 0.9 similar; nothing unrelated is (lower-cased
    # copies without punctuation fall to 0.82-0.93: the n-gram rule is for those).
    lowered = {i for i in planted_ids if i.startswith("lower_no_punctuation")}
    assert planted_ids - lowered <= by_embedding <= planted_ids
    assert all(r["similarity"] >= 0.9 and r["eval_id"] == r["id"].split(":")[1] for r in table)
    by_ngram, _, table = results[1]
    # Copies, respaced copies and lower-cased ones share 13-grams; word swaps every few words
    # break most of them.
    verbatim = {i for i in planted_ids if i.startswith(("copy", "spacing", "lower"))}
    assert verbatim <= by_ngram <= planted_ids
    both, manifest, table = results[2]
    assert both == planted_ids  # every planted item, nothing else
    counts = manifest["counts"]
    assert counts["contaminated"] == len(planted_ids) == 50
    assert counts["selected"] + counts["contaminated"] == counts["candidates"] == len(pool)
    test_set = counts["eval_sets"]["test"]
    assert test_set["items"] == 10 and test_set["removed"] == 50
    assert test_set["by_embedding"] == len(by_embedding)
    kept = pq.read_table(root / "out-2" / "subset.parquet").column("id").to_pylist()
    assert set(kept) == {r["id"] for r in pool} - planted_ids


def test_decontaminate_parameter_errors():
    for params, message in (
        ({}, "against: name at least one evaluation set"),
        ({"against": {"t": {}}}, r"against.t: give exactly one"),
        ({"against": {"t": {"embeddings": "e"}}, "ngram": 13}, "n-gram rule needs the records"),
        ({"against": {"t": {"path": "p"}}, "threshold": None}, "give a threshold, an ngram"),
        ({"against": {"t": {"path": "p"}}, "threshold": 1.5}, r"threshold: must be in \(0, 1\]"),
    ):
        with pytest.raises(ConfigError, match=message):
            make_selector("decontaminate", params).validate()
