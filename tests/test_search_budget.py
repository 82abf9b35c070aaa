"""--search-time is a budget: past it the search starts no new work, says what it skipped,
shows unverified candidates as such (never as "drop inf -> rejected"), and a piped run
still prints a line at least every HEARTBEAT_SECONDS."""

from __future__ import annotations

import json
import time

import pytest
import torch

from edgecnn.report import search_section
from edgecnn.search.budget import Budget, Heartbeat
from edgecnn.search.latency import LatencyTable
from edgecnn.search.solve import solve
from edgecnn.search.space import build_space
from test_search import FAKE_DROP, FAKE_MS, SEARCH_RECIPE, tiny


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_is_spent_after_its_minutes_and_remembers_where():
    clock = Clock()
    budget = Budget(0.5, clock=clock)
    budget.phase = "latency probes"
    clock.now = 29.0
    assert not budget.spent() and budget.left() == pytest.approx(1.0)
    clock.now = 31.0
    assert budget.spent() and budget.spent_in == "latency probes"
    assert not Budget(None, clock=clock).spent()


def test_candidates_past_the_budget_are_not_verified_and_not_rejected():
    space = build_space(tiny(), torch.zeros(1, 3, 8, 8))
    table = LatencyTable({layer: dict(ms) for layer, ms in FAKE_MS.items()})
    checks, lines = [], []

    def verify(config):
        checks.append(config)
        return 5.0, None  # every verified candidate too lossy: the bisection would go on

    result = solve(space, lambda c: table.predict(space, c), lambda u, o: FAKE_DROP[u[2:]][o], verify, max_drop=1.0,
                   max_verify=10, log=lines.append, out_of_time=lambda: len(checks) >= 1)
    assert len(checks) == 1  # no verification started past the budget
    unverified = [c for c in result.verified if c.info.get("not_verified")]
    assert len(unverified) == 1 and unverified[0].feasible is None and unverified[0].drop is None
    assert result.chosen is None and len(result.rejected) == 1
    assert "not verified (time budget)" in lines[-1] and not any("inf" in line for line in lines)
    markdown = "\n".join(search_section({"max_drop": 1.0, "verified": [c.to_dict() for c in result.verified]}))
    assert "not verified (time budget)" in markdown and "inf" not in markdown


def test_probes_past_the_budget_are_estimated_from_macs(tmp_path, torch_one_thread):
    from edgecnn.search import probes

    model = tiny().eval()
    space = build_space(model, torch.zeros(1, 3, 8, 8))
    budget = Budget(1e-9)
    time.sleep(0.01)
    table = probes.build_table(model, space, torch.rand(2, 3, 8, 8), ["fp32", "w7a8"], {"fp32": 1.0, "w7a8": 0.8},
                               tmp_path, timer=None, budget=budget)  # nothing is timed past the budget
    assert table.estimated == space.layers and table.probes == {}
    assert not list(tmp_path.glob("probe-*.onnx"))  # nothing was probed
    assert table.predict(space, space.uniform("fp32")) == pytest.approx(1.0)
    assert any("latency probes" in s for s in budget.skipped)


def test_unscored_pruning_options_are_never_chosen():
    from edgecnn.search.solve import _choices

    space = build_space(tiny(), torch.zeros(1, 3, 8, 8))
    cost = {("q:0", "w6a8"): float("inf")}
    rows = _choices(space, lambda c: 1.0, lambda u, o: cost.get((u, o), 0.0), space.base())
    assert [o for o, _, _ in rows[0]] == ["fp32", "w8a8", "w7a8"]


def test_heartbeat_prints_through_a_long_silent_step():
    lines = []
    budget = Budget(None)
    budget.phase = "latency probes, layer 3 of 26"
    with Heartbeat(budget, lines.append, every=0.05):
        time.sleep(0.4)
    assert len(lines) >= 2 and all(line.startswith("search: latency probes, layer 3 of 26 (") for line in lines)
    quiet = []
    with Heartbeat(budget, quiet.append, every=0.2) as beat:
        for _ in range(8):  # other lines keep coming: no heartbeat needed
            time.sleep(0.05)
            beat.printed()
    assert quiet == []


@pytest.mark.slow
def test_a_tiny_budget_ends_the_search_early_and_says_what_it_skipped(tmp_path, capsys, monkeypatch):
    """End to end on the digits baseline, output captured (not a terminal), progress on."""
    import edgecnn.pipeline.stages.search as search_stage
    from edgecnn.cli import main

    monkeypatch.setattr(search_stage, "HEARTBEAT_SECONDS", 0.5)
    recipe = tmp_path / "search.yaml"
    recipe.write_text(SEARCH_RECIPE.replace("max_verify: 1,", "max_verify: 4, search_time: 0.0001,"))
    out = tmp_path / "out"
    main(["compress", "squeezenet", "--recipe", str(recipe), "-o", str(out)])
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    search = next(s for s in report["stages"] if s["name"] == "search")["summary"]
    budget = search["time_budget"]
    assert budget["spent_in"] and any("latency probes" in s for s in budget["skipped"])
    assert "uniform w7a8" in budget["skipped"]  # not even the uniform setting was started past the budget
    assert not any(c.get("drop") is not None for c in search["verified"])  # no candidate started past the budget
    assert any("sensitivities" in s for s in budget["skipped"])
    assert any("time budget" in n for n in report["notes"])
    assert "drop inf" not in printed and "inf" not in (out / "report.md").read_text().replace("info", "")
    assert "search: " in printed  # heartbeat lines on a pipe
    assert search["chosen_layers"]  # still an answer: the best uniform setting (or FP32)


def test_report_says_what_the_time_budget_cut():
    budget = {"minutes": 0.5, "spent_in": "latency probes, layer 4 of 26", "skipped": ["latency probes of 22 of 26 layers"]}
    markdown = "\n".join(search_section({"max_drop": 1.0, "time_budget": budget}))
    assert "Time budget of 0.5 min spent (during latency probes, layer 4 of 26)" in markdown
    assert "latency probes of 22 of 26 layers" in markdown
