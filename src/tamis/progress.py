"""Progress bars that suit where they are shown: on a terminal, tqdm's live bar; elsewhere
(CI logs, Dataflow worker logs, a file) at most one line per 10 seconds and per 10% of
the work, instead of a line per update."""

from __future__ import annotations

import math
import sys
from typing import IO, Any

LOG_INTERVAL_S = 10.0


def progress_bar(total: int | None, desc: str, unit: str, file: IO[str] | None = None,
                 **options: Any) -> Any:  # fmt: skip
    """A tqdm bar for `total` units of work, throttled when `file` (stderr) is no terminal."""
    from tqdm.auto import tqdm

    stream = file if file is not None else sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        options.setdefault("mininterval", LOG_INTERVAL_S)
        options.setdefault("maxinterval", math.inf)
        if total:
            options.setdefault("miniters", max(1, math.ceil(total / 10)))
    return tqdm(total=total, desc=desc, unit=unit, file=stream, **options)
