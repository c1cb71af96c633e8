"""core.progress: a line per 10 % when the output is not a terminal, never carriage returns."""
import io

from core.progress import Progress


def test_a_line_per_ten_percent_off_a_terminal():
    out = io.StringIO()  # not a tty
    bar = Progress(range(1000), desc="work", unit="img", stream=out)
    for _ in bar:
        bar.set_postfix(loss=0.5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0].startswith("work: 10% 100/1000 img") and lines[-1].startswith("work: 100% 1000/1000 img")
    assert lines[-1].endswith("loss=0.5")


def test_open_ended_loops_report_at_the_end_and_slow_rates_read_as_seconds_per_unit():
    out = io.StringIO()
    bar = Progress(total=None, desc="video", unit="frame", stream=out)
    bar.update(3)
    bar.start -= 30  # as if 30 s had passed: 0.1 frame/s reads as 10.0 s/frame
    bar.close()
    assert out.getvalue().splitlines() == ["video: 3 frame, 10.0 s/frame"]
    quiet = io.StringIO()
    bar = Progress(range(5), desc="x", disable=True, stream=quiet)
    assert list(bar) == list(range(5)) and quiet.getvalue() == ""
