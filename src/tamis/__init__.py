"""tamis: data curation and active learning at scale."""

__version__ = "0.1.0"
