"""`tamis data` writers: an output path they cannot write is one `tamis: error:` line naming
it (exit 2, no traceback), before any work."""

import pytest

from conftest import cli_error
from tamis.config import ConfigError


@pytest.fixture
def blocker(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return path


def test_bbcnews_output_under_a_file_or_a_directory(tmp_path, capsys, blocker):
    target = blocker / "pool.jsonl"
    line = cli_error(capsys, "data", "bbcnews", str(target))
    assert (
        line == f"tamis: error: output: cannot write {target}: {blocker} is a file, not a directory"
    )
    (tmp_path / "a-dir").mkdir()
    line = cli_error(capsys, "data", "bbcnews", str(tmp_path / "a-dir"))
    assert f"output: {tmp_path / 'a-dir'} is a directory" in line
    line = cli_error(capsys, "data", "bbcnews", str(tmp_path / "p.jsonl"), "--queries", "nope")
    assert "--queries: unknown BBC News topic 'nope'" in line
    assert not (tmp_path / "p.jsonl").exists()


def test_humaneval_output_that_is_or_is_under_a_file(capsys, blocker):
    line = cli_error(capsys, "data", "humaneval", str(blocker))
    assert line == f"tamis: error: output: {blocker} is a file, not a directory"
    line = cli_error(capsys, "data", "humaneval", str(blocker / "he"))
    assert f"output: cannot create the directory {blocker / 'he'}: {blocker} is a file" in line


def test_judged_pool_output_under_a_file_fails_before_reading(tmp_path, blocker):
    from tamis.data.pooled_judgements import write_judged_pool

    with pytest.raises(ConfigError, match=rf"^output: cannot create the directory {blocker}"):
        write_judged_pool(str(blocker / "judged"), str(tmp_path / "no-embeddings"))
