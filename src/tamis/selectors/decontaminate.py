"""`decontaminate`: remove pool items too close to evaluation items (a filter stage;
ALGORITHMS.md, "Decontamination against evaluation sets").

``against`` names evaluation sets, each records (embedded like the pool) or an embeddings
dir. Two rules, per set:
- embedding: a pool item whose cosine to some evaluation item is >= ``threshold``;
- n-gram (``ngram: 13``, GPT-3's rule, as datatrove's): a pool item sharing an n-gram of
  lower-cased words (punctuation stripped) with an evaluation item's text (records only).

``contamination.parquet`` lists every removed item once per set and rule that caught it:
``id``, ``eval_set``, ``eval_id`` (the most similar evaluation item, or the first holding
the shared n-gram), ``rule``, ``similarity`` (cosine), ``ngram`` (the shared words).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from tamis.config import ConfigError, QuerySource
from tamis.selectors.base import (
    EMBEDDINGS,
    EVAL_SETS,
    TEXTS,
    Selection,
    SelectionInputs,
    Selector,
    candidate_mask,
    ids_at,
    register,
)

CONTAMINATION = "contamination.parquet"
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased words, punctuation stripped (what the n-gram rule compares)."""
    return _WORD.findall(text.lower())


def word_ngrams(text: str, n: int) -> Iterator[tuple[str, ...]]:
    tokens = words(text)
    return (tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def ngram_owners(texts: list[str], n: int) -> dict[tuple[str, ...], int]:
    """Each n-gram of the evaluation texts -> the first text (index) holding it."""
    owners: dict[tuple[str, ...], int] = {}
    for i, text in enumerate(texts):
        for gram in word_ngrams(text, n):
            owners.setdefault(gram, i)
    return owners


def ngram_hits(
    pool: Iterable[tuple[str, str]], owners: dict[tuple[str, ...], int], n: int
) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Pool id -> (evaluation text index, the first shared n-gram) for every pool text that
    shares one."""
    hits = {}
    for rid, text in pool:
        for gram in word_ngrams(text, n):
            owner = owners.get(gram)
            if owner is not None:
                hits.setdefault(rid, (owner, gram))
                break
    return hits


def max_similarity(
    blocks: Iterable[np.ndarray], targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per pool item (blocks in pool order): the highest cosine to a target and which."""
    best, which = [], []
    for block in blocks:
        sims = np.asarray(block, dtype=np.float32) @ targets.T
        where = sims.argmax(axis=1)
        which.append(where)
        best.append(sims[np.arange(len(sims)), where])
    if not best:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(best), np.concatenate(which).astype(np.int64)


@register
class DecontaminateSelector(Selector):
    name = "decontaminate"
    kind = "filter"
    budget_required = False

    @dataclass
    class Params:
        # name -> {path: records} (embedded like the pool) or {embeddings: dir}
        against: dict[str, QuerySource] = field(default_factory=dict)
        threshold: float | None = 0.9  # cosine; null: no embedding rule
        ngram: int | None = None  # e.g. 13: the n-gram rule (records only)

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        base = {EMBEDDINGS, EVAL_SETS}
        return frozenset(base | {TEXTS}) if self.params.ngram else frozenset(base)

    def validate(self) -> None:
        p = self.params
        if not p.against:
            raise ConfigError("selection.params.against: name at least one evaluation set")
        for name, source in p.against.items():
            if (source.path is None) == (source.embeddings is None):
                raise ConfigError(
                    f"selection.params.against.{name}: give exactly one of 'path' or 'embeddings'"
                )
            if p.ngram and source.path is None:
                raise ConfigError(
                    f"selection.params.against.{name}: the n-gram rule needs the records "
                    "(path), not only embeddings"
                )
        if p.threshold is None and not p.ngram:
            raise ConfigError("selection.params: give a threshold, an ngram, or both")
        if p.threshold is not None and not 0 < p.threshold <= 1:
            raise ConfigError(f"selection.params.threshold: must be in (0, 1], got {p.threshold}")
        if p.ngram is not None and p.ngram < 1:
            raise ConfigError(f"selection.params.ngram: must be >= 1, got {p.ngram}")

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        p = self.params
        allowed = candidate_mask(inputs)
        contaminated = np.zeros(len(inputs.ids), dtype=bool)
        columns = ("id", "eval_set", "eval_id", "rule", "similarity", "ngram")
        rows: dict[str, list] = {k: [] for k in columns}
        per_set: dict[str, dict[str, int]] = {}
        position = {rid: i for i, rid in enumerate(ids_at(inputs.ids, np.arange(len(inputs.ids))))}
        for name, evaluation in inputs.eval_sets.items():
            caught = np.zeros(len(inputs.ids), dtype=bool)
            counts = {"items": len(evaluation.ids), "by_embedding": 0, "by_ngram": 0}
            if p.threshold is not None:
                best, which = max_similarity(inputs.blocks(), evaluation.vectors)
                hit = np.flatnonzero((best >= p.threshold) & allowed)
                counts["by_embedding"] = len(hit)
                caught[hit] = True
                self._rows(rows, inputs, hit, name, [evaluation.ids[w] for w in which[hit]],
                           "embedding", best[hit], [None] * len(hit))  # fmt: skip
            if p.ngram:
                owners = ngram_owners(evaluation.texts, p.ngram)
                hits = ngram_hits(inputs.texts.stream(), owners, p.ngram)
                found = [(position[rid], owner, gram) for rid, (owner, gram) in hits.items()
                         if rid in position and allowed[position[rid]]]  # fmt: skip
                found.sort()
                where = np.asarray([f[0] for f in found], dtype=np.int64)
                counts["by_ngram"] = len(where)
                caught[where] = True
                owner_ids = [evaluation.ids[f[1]] for f in found]
                grams = [" ".join(f[2]) for f in found]
                self._rows(
                    rows, inputs, where, name, owner_ids, "ngram", [None] * len(where), grams
                )
            counts["removed"] = int(caught.sum())
            per_set[name] = counts
            contaminated |= caught
        kept = np.flatnonzero(allowed & ~contaminated)[:budget]
        table = pa.table(
            {
                "id": pa.array(rows["id"], pa.string()),
                "eval_set": pa.array(rows["eval_set"], pa.string()),
                "eval_id": pa.array(rows["eval_id"], pa.string()),
                "rule": pa.array(rows["rule"], pa.string()),
                "similarity": pa.array(rows["similarity"], pa.float64()),
                "ngram": pa.array(rows["ngram"], pa.string()),
            }
        )
        return Selection(
            selector=self.name,
            index=kept,
            ids=ids_at(inputs.ids, kept),
            score=np.ones(len(kept)),
            counts={"contaminated": int((contaminated & allowed).sum()), "eval_sets": per_set},
            info={"threshold": p.threshold, "ngram": p.ngram},
            outputs={CONTAMINATION: table},
        )

    @staticmethod
    def _rows(rows, inputs, where, name, eval_ids, rule, similarity, grams) -> None:
        rows["id"] += ids_at(inputs.ids, where)
        rows["eval_set"] += [name] * len(where)
        rows["eval_id"] += list(eval_ids)
        rows["rule"] += [rule] * len(where)
        rows["similarity"] += [None if s is None else float(s) for s in similarity]
        rows["ngram"] += list(grams)

    def summary(self, manifest: dict, output: str) -> list[str]:
        c, info = manifest["counts"], manifest["info"]
        rules = []
        if info["threshold"] is not None:
            rules.append(f"cosine >= {info['threshold']:g}")
        if info["ngram"]:
            rules.append(f"a shared {info['ngram']}-gram")
        lines = [
            f"decontaminate ({' or '.join(rules)}): kept {c['selected']:,} of "
            f"{c['candidates']:,}; {c['contaminated']:,} removed"
        ]
        for name, s in c["eval_sets"].items():
            lines.append(
                f"  {name} ({s['items']:,} items): {s['removed']:,} removed "
                f"({s['by_embedding']:,} by embedding, {s['by_ngram']:,} by n-gram)"
            )
        lines.append(f"  contamination: {output}/{CONTAMINATION}")
        return lines
