"""The per-layer search (edgecnn.search) and the search/evaluation split."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from edgecnn.data.split import split_folder, split_items
from edgecnn.search.latency import LatencyTable
from edgecnn.search.solve import knapsack, solve
from edgecnn.search.space import build_space


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


# Fake measurements: ms per layer and precision, top-1 drop (points) per layer and precision.
FAKE_MS = {"0": {"fp32": 10, "w8a8": 8, "w7a8": 6, "w6a8": 5},
           "2": {"fp32": 20, "w8a8": 14, "w7a8": 12, "w6a8": 11},
           "6": {"fp32": 2, "w8a8": 1.8, "w7a8": 1.5, "w6a8": 1.4}}
FAKE_DROP = {"0": {"fp32": 0, "w8a8": 0.1, "w7a8": 0.3, "w6a8": 0.6},
             "2": {"fp32": 0, "w8a8": 0.2, "w7a8": 0.3, "w6a8": 0.9},
             "6": {"fp32": 0, "w8a8": 0.05, "w7a8": 0.1, "w6a8": 0.2}}


def _setup(torch_one_thread=None):
    space = build_space(tiny(), torch.zeros(1, 3, 8, 8))
    table = LatencyTable({layer: dict(ms) for layer, ms in FAKE_MS.items()})
    return space, table


def _true_drop(config: dict, penalised: tuple) -> float:
    drop = sum(FAKE_DROP[unit[2:]][option] for unit, option in config.items())
    return drop + (5.0 if tuple(sorted(config.items())) == penalised else 0.0)


def test_space_of_tiny_model():
    space, _ = _setup()
    assert space.layers == ["0", "2", "6"]
    assert [u.name for u in space.units] == ["q:0", "q:2", "q:6"]
    assert space.units[0].options == ("fp32", "w8a8", "w7a8", "w6a8")


def test_search_picks_the_fastest_feasible_configuration_and_rejects_infeasible_ones(torch_one_thread):
    space, table = _setup()
    units = [u.name for u in space.units]
    every = [dict(zip(units, options)) for options in itertools.product(*(u.options for u in space.units))]
    # The configuration the additive proxy likes best is in truth infeasible (an interaction):
    proxy_best = min((c for c in every if _true_drop(c, ()) <= 1.0), key=lambda c: table.predict(space, c))
    penalised = tuple(sorted(proxy_best.items()))
    feasible = [c for c in every if _true_drop(c, penalised) <= 1.0]
    expected = min(table.predict(space, c) for c in feasible)

    def verify(config):
        return _true_drop(config, penalised), None

    result = solve(space, lambda c: table.predict(space, c), lambda u, o: FAKE_DROP[u[2:]][o], verify, max_drop=1.0,
                   max_verify=40)
    assert result.chosen is not None
    assert result.chosen.drop <= 1.0
    assert result.chosen.predicted_ms == pytest.approx(expected)
    assert result.rejected, "the fastest configuration (all W6A8, drop 1.7) must have been tried and rejected"
    assert all(c.drop > 1.0 for c in result.rejected)
    assert all(c.ms >= result.chosen.ms for c in result.verified if c.feasible)


def test_knapsack_is_exact_on_integer_costs():
    choices = [[("a0", 0.0, 0), ("a1", -5.0, 3), ("a2", -7.0, 5)],
               [("b0", 0.0, 0), ("b1", -4.0, 2), ("b2", -6.0, 4)]]
    for budget in range(0, 10):
        best = min((la + lb, (i, j)) for i, (_, la, ca) in enumerate(choices[0]) for j, (_, lb, cb) in enumerate(choices[1])
                   if ca + cb <= budget)
        picks = knapsack(choices, budget, bins=budget * 4 if budget else 1)
        assert choices[0][picks[0]][1] + choices[1][picks[1]][1] == best[0]


# ---------------------------------------------------------------------------- split


def _folder(root: Path, classes: int = 5, per_class: int = 7) -> Path:
    for c in range(classes):
        (root / f"n0000000{c}").mkdir(parents=True)
        for i in range(per_class - (c % 3)):
            (root / f"n0000000{c}" / f"img{c}_{i}.JPEG").write_bytes(b"x")
    return root


def test_split_has_no_image_in_both_parts_and_is_deterministic(tmp_path):
    root = _folder(tmp_path / "sample")
    a = split_folder(root)
    search = {p for p, _ in a.search}
    evaluation = {p for p, _ in a.evaluation}
    assert not search & evaluation
    assert len(search) + len(evaluation) == len(list(root.rglob("*.JPEG")))
    assert abs(len(search) - len(evaluation)) <= 1
    labels = {label for _, label in a.search} | {label for _, label in a.evaluation}
    assert {label for _, label in a.search} == labels  # every class is searched on
    b = split_items(list(reversed(a.search + a.evaluation)), root)
    assert {p for p, _ in b.search} == search  # listing order does not matter
    s, e = a.write_lists(tmp_path / "lists")
    assert len(s.read_text().splitlines()) == len(search) and len(e.read_text().splitlines()) == len(evaluation)


def test_split_of_the_shared_sample(shared_data):
    split = split_folder(shared_data / "imagenet-sample")
    search = {Path(p).resolve() for p, _ in split.search}
    evaluation = {Path(p).resolve() for p, _ in split.evaluation}
    assert not search & evaluation
    assert len(search) + len(evaluation) == 1150


# ---------------------------------------------------------------------------- command line and pipeline

SEARCH_RECIPE = """
data:
  embedded: {input_size: 32, epochs: 2, max_train_images: 300, max_test_images: 60}
  batch_size: 16
stages:
  - fold_bn
  - search: {max_drop: 5.0, precisions: [fp32, w7a8], max_verify: 1, sensitivity_images: 8, threads: 1,
             final_spread_s: 1.0}
  - export
  - measure: {checkpoints: all, latency_runs: 10, warmup: 1, warmup_seconds: 0.0}
"""


@pytest.mark.slow
def test_compress_search_stage_end_to_end(tmp_path):
    import json

    from edgecnn.cli import main

    from test_choose_on import _photos

    recipe = tmp_path / "search.yaml"
    recipe.write_text(SEARCH_RECIPE)
    out = tmp_path / "out"
    photos = _photos(tmp_path / "photos", 12)
    main(["compress", "squeezenet", "--recipe", str(recipe), "-o", str(out), "--quiet", "--max-drop", "5",
          "--choose-on", str(photos), "--choose-images", "8"])
    report = json.loads((out / "report.json").read_text())
    search = next(s for s in report["stages"] if s["name"] == "search")["summary"]
    assert len(search["chosen_layers"]) == 26
    assert {r["precision"] for r in search["chosen_layers"]} <= {"fp32", "w7a8"}
    assert report["data"]["eval_images"] == 30  # the evaluation part only: the search saw the other 30
    assert any("search/evaluation split" in n for n in report["notes"])
    assert (out / "search.svg").read_text().startswith("<svg")
    assert "## Search" in (out / "report.md").read_text()
    for precision, cand in search["uniform"].items():  # every measured drop carries its one-sided bounds
        if precision == "fp32":
            continue  # the reference itself: no drop to bound
        bound = cand["drop_bound"]
        assert bound["lower"] <= bound["estimate"] <= bound["upper"] and bound["verdict"] in ("met", "not met", "not resolved")
    table = search["latency_table"]
    assert table["other_ms"]["int8"] > 0 and set(table["scale"]) <= {"fp32", "w7a8"}
    if search["chosen"] and "uniform" in search["chosen"]:
        assert search["note"].startswith("per-layer search:")
    # The tie-break chose on the 8 reserved photos; each configuration shows them, top-1 on the
    # search part (the gate) and top-1 on the evaluation part (measured after the choice).
    w7a8 = search["uniform"]["w7a8"]
    assert w7a8["choose"]["photos"] == 8 and 0 <= w7a8["choose"]["agree"] <= 100 and w7a8["choose"]["kl"] >= 0
    assert 0 <= w7a8["top1_evaluation"] <= 100
    assert search["choose"]["tie_break_on"].startswith("8 reserved photos of photos/")
    assert search["choose"]["rank_vs_search_top1"]["candidates"] >= 1
    assert any("ties between candidates decided on 8 reserved photos" in n for n in report["notes"])
    assert "agree % (choice photos)" in (out / "report.md").read_text()
    # The final timing, whose ratios the answer claims, spread its rounds as the recipe asked.
    timing = search["final_timing"]
    assert timing["rounds"] == 10 and timing["spread_s"] == 1.0 and timing["window_s"] >= 1.0
    assert "10 rounds spread over 1 s" in (out / "report.md").read_text()


def test_max_drop_flag_puts_a_search_in_place_of_quantize(capsys):
    from edgecnn.cli import main

    main(["compress", "squeezenet", "--max-drop", "0.5", "--search-time", "20", "--confidence", "0.95", "--train", ".", "--print-recipe"])
    text = capsys.readouterr().out
    assert "search:" in text and "max_drop: 0.5" in text and "search_time: 20.0" in text and "quantize" not in text
    assert "confidence: 0.95" in text
    for args, message in ((["--max-drop", "0.5", "--bits", "6"], "--bits and --max-drop"),
                          (["--search-time", "5"], "--search-time needs --max-drop"),
                          (["--confidence", "0.95"], "--confidence needs --max-drop"),
                          (["--max-drop", "1", "--confidence", "1.5"], "confidence")):
        with pytest.raises(SystemExit) as exit_info:
            main(["compress", "squeezenet", *args, "--print-recipe"])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_shift_without_recovery_warns_before_running(tmp_path, capsys):
    from edgecnn.cli import main

    main(["compress", "squeezenet", "--shift", "--dry-run", "-o", str(tmp_path / "never")])
    captured = capsys.readouterr()
    assert "accuracy will collapse" in captured.err
    assert not (tmp_path / "never").exists()
    main(["compress", "squeezenet", "--prune", "0.5", "--prune-mode", "channel", "--dry-run", "-o", str(tmp_path / "never")])
    assert "channel pruning" in capsys.readouterr().err


def test_int8_layer_before_an_fp32_one_costs_its_measured_penalty():
    space, table = _setup()
    table.float_consumer_factor = {"0": 3.0, "2": 3.0}
    mixed = {"q:0": "w7a8", "q:2": "fp32", "q:6": "w7a8"}
    chain = {"q:0": "w7a8", "q:2": "w7a8", "q:6": "w7a8"}
    assert table.predict(space, mixed) == pytest.approx(6 * 3.0 + 20 + 1.5)
    assert table.predict(space, chain) == pytest.approx(6 + 12 + 1.5)


def _timed(name: str, signature: str, rounds: list, agree: float, drop: float, feasible: bool = True):
    from edgecnn.search.solve import Candidate

    cand = Candidate({"name": name}, predicted_ms=0.0, proxy=0.0, drop=drop, feasible=feasible)
    cand.measured_ms = sorted(rounds)[len(rounds) // 2]
    cand.info.update(signature=signature, round_medians_ms=rounds, fp32_agree=agree)
    return cand


def test_final_choice_pools_same_kernel_artifacts_and_prefers_fp32_agreement():
    from edgecnn.search.run import choose

    # W6A8 and W7A8 of one graph: same kernels; W6A8 timed 5 % faster by noise, agrees less with FP32.
    w6 = _timed("w6a8", "int8-graph", [2.9, 3.0, 3.1], agree=95.5, drop=0.5)
    w7 = _timed("w7a8", "int8-graph", [3.1, 3.15, 3.2], agree=97.9, drop=0.7)
    w8 = _timed("w8a8", "u8-graph", [4.0, 4.1, 4.2], agree=98.5, drop=0.1)
    fast_but_infeasible = _timed("pruned", "pruned-graph", [1.0, 1.0, 1.0], agree=60.0, drop=9.0, feasible=False)
    chosen = choose([w6, w7, w8, fast_but_infeasible], fp32_ms=5.0)
    assert chosen is w7
    assert w6.info["pooled_ms"] == w7.info["pooled_ms"] == pytest.approx(3.1)
    # A different graph clearly faster (beyond the timing noise) wins even with less agreement.
    faster = _timed("mixed", "other-graph", [2.5, 2.5, 2.6], agree=94.0, drop=0.9)
    assert choose([w6, w7, w8, faster], fp32_ms=5.0) is faster
    # Nothing faster than FP32: no answer.
    assert choose([w8], fp32_ms=3.0) is None


def test_the_choice_is_never_beaten_on_both_axes_it_was_made_on():
    from edgecnn.search import pareto
    from edgecnn.search.run import choose

    # Within the noise band of each other: "agrees" agrees most with FP32, but "better" is both
    # faster (pooled) and loses less: choosing "agrees" would draw the chosen point dominated.
    agrees = _timed("a", "graph-a", [3.05, 3.06, 3.07], agree=98.0, drop=0.8)
    better = _timed("b", "graph-b", [3.0, 3.0, 3.01], agree=96.0, drop=0.4)
    chosen = choose([agrees, better], fp32_ms=5.0)
    assert chosen is better
    points = [{"label": c.config["name"], "ms": c.info["pooled_ms"], "top1": 70 - c.drop} for c in (agrees, better)]
    assert chosen.config["name"] in [p["label"] for p in pareto.front(points)]


def test_plot_ticks_fall_on_round_values_and_every_point_is_labelled():
    from edgecnn.search.pareto import nice_ticks, svg

    for low, high in ((12.41, 27.3), (1.71, 1.79), (55.2, 71.9), (0.9, 4.2)):
        ticks = nice_ticks(low, high)
        assert len(ticks) >= 3 and all(low <= t <= high for t in ticks)
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** __import__("math").floor(__import__("math").log10(step))
        assert round(mantissa, 6) in (1, 2, 2.5, 5)
        assert all(abs(t / step - round(t / step)) < 1e-6 for t in ticks)
    points = [{"label": f"p{i}", "ms": 1 + i * 0.37, "top1": 60 + i, "kind": kind}
              for i, kind in enumerate(("fp32", "uniform", "candidate", "rejected", "chosen"))]
    text = svg(points, "t")
    assert all(f">p{i}</text>" in text for i in range(5))
    assert "12.41" not in svg([{"label": "x", "ms": 12.41, "top1": 1}, {"label": "y", "ms": 27.3, "top1": 2}], "t")


def test_execution_signature_ignores_weight_values_but_not_types(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecnn.search.latency import execution_signature

    def graph(weight: np.ndarray, name: str, zero_point: int = 0) -> str:
        w = numpy_helper.from_array(weight, "w")
        scale = numpy_helper.from_array(np.array(0.02 if weight.dtype == np.int8 else 0.05, np.float32), "s")
        zero = numpy_helper.from_array(np.array(zero_point, weight.dtype), "z")
        nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]),
                 helper.make_node("Conv", ["x", "wf"], ["y"], kernel_shape=[1, 1])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [w, scale, zero])
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(g), str(path))
        return execution_signature(str(path))

    rng = np.random.default_rng(0)
    six_bit = graph(rng.integers(-31, 32, (2, 2, 1, 1)).astype(np.int8), "six")
    seven_bit = graph(rng.integers(-63, 64, (2, 2, 1, 1)).astype(np.int8), "seven")
    unsigned = graph(rng.integers(0, 255, (2, 2, 1, 1)).astype(np.uint8), "unsigned")
    shifted_zero = graph(rng.integers(-63, 64, (2, 2, 1, 1)).astype(np.int8), "zero", zero_point=3)
    assert six_bit == seven_bit
    assert unsigned != six_bit
    assert shifted_zero != six_bit


def test_a_uniform_answer_says_so_in_one_line():
    from edgecnn.search.run import uniform_note
    from edgecnn.search.solve import Candidate, SearchResult

    mixed = Candidate({"q:0": "fp32"}, 2.0, 0.1, drop=0.2, feasible=True)
    mixed.measured_ms = 3.4
    uniform = Candidate({"q:0": "w7a8"}, 1.9, 0.1, drop=0.3, feasible=True, info={"uniform": "w7a8"})
    note = uniform_note(uniform, SearchResult(mixed, [mixed], 1.0))
    assert note.startswith("per-layer search:") and "uniform W7A8" in note and "1 per-layer" in note and "\n" not in note
    assert uniform_note(mixed, SearchResult(mixed, [mixed], 1.0)) == ""  # a per-layer answer needs no note
    assert "no per-layer configuration was within the budget" in uniform_note(uniform, SearchResult(None, [], 1.0))
