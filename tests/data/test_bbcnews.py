"""The quickstart pool converter (`tamis data bbcnews`)."""

import json
from collections import Counter

from tamis.cli import main as tamis_main


def test_bbcnews_converter_writes_all_articles_in_sorted_order(tmp_path, capsys):
    out = tmp_path / "bbc.jsonl"
    assert tamis_main(["data", "bbcnews", str(out)]) == 0
    assert "2,225" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2225
    assert Counter(r["topic"] for r in records) == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }
    assert [r["file"] for r in records] == sorted(r["file"] for r in records)
    assert records[0]["id"] == "bbc-business-001"
    assert records[0]["text"].startswith("Ad sales boost Time Warner profit\n")
    assert len({r["id"] for r in records}) == 2225
    # The one Windows-1252 article (a bare pound sign) is decoded, not mangled.
    sport = next(r for r in records if r["file"] == "sports/199.txt")
    assert "\ufffd" not in sport["text"] and "£" in sport["text"]


def test_held_out_queries_leave_the_pool(tmp_path, capsys):
    out = tmp_path / "bbc.jsonl"
    assert tamis_main(["data", "bbcnews", str(out), "--queries", "tech,sports"]) == 0
    pool = [json.loads(line) for line in out.read_text().splitlines()]
    tech = [
        json.loads(line) for line in (tmp_path / "bbc_queries_tech.jsonl").read_text().splitlines()
    ]
    sports = (tmp_path / "bbc_queries_sports.jsonl").read_text().splitlines()
    assert len(tech) == 5 and len(sports) == 5
    assert {r["topic"] for r in tech} == {"tech"}
    assert not {r["id"] for r in tech} & {r["id"] for r in pool}
    # The corpus repeats some articles: two tech queries have a copy that stays in the pool
    # (configs/quickstart.yaml's decontaminate stage removes them).
    assert len({r["text"] for r in tech} & {r["text"] for r in pool}) == 2
    assert len(pool) == 2225 - 10
