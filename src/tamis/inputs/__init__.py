"""The inputs selectors declare, one loader per name (see `context`); importing this package
registers them all."""

from tamis.inputs import (  # noqa: F401
    buckets,
    embeddings,
    eval_sets,
    probabilities,
    retrieval,
    skills,
    stream_items,
    texts,
)
from tamis.inputs.context import SelectionInputs, StageContext, load_inputs

__all__ = ["SelectionInputs", "StageContext", "load_inputs"]
