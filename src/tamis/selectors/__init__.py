"""Selectors: one module per method; each core is a pure function over arrays.

Importing this package registers the built-in selectors.
"""

from tamis.selectors import coreset, random_baseline, rds, stat, stream_al  # noqa: F401
