"""Mining on Beam workers: the index is saved beside the output, each worker loads it once
(`DoFn.setup`) and searches whole query parts; the driver reads the parts' results in
order. Gives the candidates `mine_top_k` gives on one machine."""

from __future__ import annotations

import io

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from tamis.config import IndexConfig, RunnerConfig
from tamis.embeddings.store import read_part
from tamis.index.faiss_index import EmbeddingIndex
from tamis.index.mining import MinedCandidates, concat_candidates, mine_top_k
from tamis.records import atomic_write, read_bytes

MINED_DIR = "_mined"
INDEX_FILE = "_index/corpus.faiss"


class MineQueryPart(beam.DoFn):
    """One query embeddings part -> its top-k corpus candidates, written as an .npz file."""

    def __init__(self, index_path: str, index_config: IndexConfig, k: int, output: str):
        self.index_path, self.index_config = index_path, index_config
        self.k, self.output = k, output
        self.index: EmbeddingIndex | None = None

    def setup(self):
        c = self.index_config
        self.index = EmbeddingIndex.load(
            self.index_path, c.device, nprobe=c.nprobe, ef_search=c.ef_search
        )

    def process(self, part: tuple[str, int], self_positions: list | None):
        path, first_query = part
        vectors = read_part(path).vectors
        own = None
        if self_positions is not None:
            own = np.asarray(self_positions[first_query : first_query + len(vectors)], np.int64)
        batch = self.index_config.batch_size
        mined = mine_top_k(self.index, vectors, self.k, own, batch, first_query)
        buffer = io.BytesIO()
        np.savez(buffer, query=mined.query, doc=mined.doc, rank=mined.rank, score=mined.score)
        target = FileSystems.join(self.output, MINED_DIR, f"part-{first_query:012d}.npz")
        atomic_write(target, buffer.getvalue())
        yield target


def mine_on_beam(
    runner_config: RunnerConfig,
    beam_args: list[str] | None,
    index_config: IndexConfig,
    k: int,
    index: EmbeddingIndex,
    query_parts: list[tuple[str, int]],
    self_positions: np.ndarray | None,
    output: str,
) -> MinedCandidates:
    """Mine on Beam workers: the index is saved beside the output, each worker loads it
    once and searches whole query parts; the driver reads the parts' results in order."""
    from tamis.runners.options import make_runner

    index_path = FileSystems.join(output, INDEX_FILE)
    index.save(index_path)
    runner, options = make_runner(runner_config, beam_args)
    own = None if self_positions is None else self_positions.tolist()
    mine = MineQueryPart(index_path, index_config, k, output)
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        owned = pipeline | "SelfPositions" >> beam.Create([own])
        _ = (
            pipeline
            | "QueryParts" >> beam.Create(query_parts)
            | "Spread" >> beam.Reshuffle()
            | "Mine" >> beam.ParDo(mine, self_positions=beam.pvalue.AsSingleton(owned))
        )
    parts = []
    for _, first in sorted(query_parts, key=lambda part: part[1]):
        target = FileSystems.join(output, MINED_DIR, f"part-{first:012d}.npz")
        with np.load(io.BytesIO(read_bytes(target))) as data:
            parts.append(MinedCandidates(data["query"], data["doc"], data["rank"], data["score"]))
    # Intermediate files only: the index can be as large as the corpus.
    FileSystems.delete([FileSystems.join(output, MINED_DIR), FileSystems.split(index_path)[0]])
    return concat_candidates(parts)
