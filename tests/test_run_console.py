"""The run's console: live displays stay out of log.txt; a pipe still sees progress; stage kinds."""

from __future__ import annotations

import io
import time

from rich.console import Console

from edgecnn.pipeline.console import RunConsole


def _screen(terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=100, highlight=False)


def test_spinners_and_bars_never_reach_the_log():
    run = RunConsole(_screen(terminal=True))
    with run.status("quantize ..."):
        time.sleep(0.3)  # several spinner frames
    with run.bar("measuring", 3) as step:
        for n in range(3):
            step(n, 3, f"row {n}")
            time.sleep(0.1)
    run.print("✓ quantize done")
    assert run.log_text() == "✓ quantize done\n"
    assert "quantize ..." in run.screen.file.getvalue()  # the terminal did get the spinner


def test_a_pipe_gets_progress_lines_and_the_log_does_not():
    run = RunConsole(_screen(terminal=False))
    with run.status("export ..."):
        pass
    with run.bar("measuring", 2) as step:
        step(0, 2, "baseline fp32")
        step(2, 2)
    run.print("✓ measure")
    screen = run.screen.file.getvalue()
    assert "export ..." in screen and "measuring 0/2 baseline fp32" in screen and "measuring 2/2" in screen
    assert run.log_text() == "✓ measure\n"
    quiet = RunConsole(_screen(terminal=False), progress=False)
    with quiet.bar("measuring", 2) as step:
        step(0, 2, "x")
    assert quiet.screen.file.getvalue() == ""


def test_every_pipeline_stage_of_the_recipe_has_its_stage_kind():
    from edgecnn.pipeline.stages import STAGES, stage_for
    from edgecnn.recipe import PIPELINE_STAGES

    assert set(STAGES) == {"transform", *PIPELINE_STAGES}
    assert all(stage_for(name).kind == name for name in PIPELINE_STAGES)
    assert stage_for("quantize").kind == stage_for("fold_bn").kind == "transform"
