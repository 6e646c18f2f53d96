"""Progress display: counters from stage code rendered as lines for a non-terminal stream."""

from __future__ import annotations

import io

from pipeline.tools import progress


def test_final_line_reports_every_stage_and_percent_done():
    stream = io.StringIO()
    with progress.ProgressDisplay(total_rows=10, stream=stream):
        progress.add("read", 10)
        progress.add("verified", 8)
        progress.add("scored", 8)
        progress.add("written", 8)
        progress.add("errors", 2)
    line = stream.getvalue().strip().splitlines()[-1]
    assert line.startswith("[herolabel] 100.0% of 10 rows")
    assert "read 10 | verified 8 | verifier_cached 0 | scored 8 | written 8 | errors 2" in line


def test_disabled_display_prints_nothing_and_counters_reset_per_run():
    stream = io.StringIO()
    progress.add("read", 5)
    with progress.ProgressDisplay(total_rows=3, stream=stream, enabled=False):
        progress.add("read", 3)
        assert progress.snapshot() == {"read": 3}
    assert stream.getvalue() == ""
