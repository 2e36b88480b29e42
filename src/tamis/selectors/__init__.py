"""Selectors: one module per method; each core is a pure function over arrays.

Importing this package registers the built-in selectors; `make_selector` builds one by name
(a selector registered elsewhere with `tamis.selectors.base.register` works the same way).
"""

from typing import Any

from tamis.selectors import (  # noqa: F401
    cet,
    coreset,
    decontaminate,
    dedup,
    exact_dedup,
    random_baseline,
    rds,
    scaling_law,
    stat,
    stream_al,
)
from tamis.selectors.base import Selector, build_selector


def make_selector(name: str, params: dict[str, Any], key: str = "selection") -> Selector:
    """The named selector with its parameters validated (errors name KEY.params.X)."""
    return build_selector(name, params, key)
