"""Usage errors (a missing argument, an unknown verb or choice, a flag a verb cannot use)
are one ``tamis: error: ...`` line with exit status 2, like every other error."""

from __future__ import annotations

import pytest

from tamis.cli import main

CASES = [
    ([], "required: VERB"),
    (["embedd", "job.yaml"], "invalid choice: 'embedd'"),
    (["embed"], "required: config"),
    (["data", "nonsense", "out.jsonl"], "invalid choice: 'nonsense'"),
    (["report", "out", "--runner=DirectRunner"], "unrecognized arguments: --runner=DirectRunner"),
    (["scaling", "fit", "job.yaml", "--runner=DataflowRunner"], "runs no Beam pipeline"),
    (["select", "job.yaml", "stray"], "unexpected arguments: stray"),
]


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(c[0]) or "none" for c in CASES])
def test_a_usage_error_is_one_line(argv, fragment, capsys):
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse exits from inside parse_known_args
        code = stop.code
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("tamis: error: ") and fragment in lines[0], lines[0]
    assert captured.out == ""
