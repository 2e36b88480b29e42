"""Progress output off a terminal: a few lines, not one per update."""

import io

from tamis.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_at_most_one_line_per_tenth_of_the_work():
    log = io.StringIO()
    bar = progress_bar(1000, "embed", "text", file=log, mininterval=0)  # time no limit here
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = [line for line in log.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    assert 2 <= len(lines) <= 12 and "1000/1000" in lines[-1]


def test_a_log_waits_ten_seconds_between_lines():
    log = io.StringIO()
    bar = progress_bar(1000, "embed", "text", file=log)
    for _ in range(1000):
        bar.update(1)  # all within far less than 10 s: no line but the last
    bar.close()
    lines = [line for line in log.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) <= 3


def test_a_terminal_keeps_tqdms_live_bar():
    screen = Terminal()
    bar = progress_bar(100, "embed", "text", file=screen, mininterval=0)
    for _ in range(100):
        bar.update(1)
    bar.close()
    assert screen.getvalue().count("\r") > 20
