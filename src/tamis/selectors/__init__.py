"""Selectors: one module per method; each core is a pure function over arrays.

Importing this package registers the built-in selectors.
"""

from tamis.selectors import (  # noqa: F401
    cet,
    coreset,
    random_baseline,
    rds,
    scaling_law,
    stat,
    stream_al,
)
