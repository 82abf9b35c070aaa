"""The size objective of the search (edgecnn.search.size): smallest shipped .ecnn within a top-1 budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecnn.passes.share_alloc import index_cost_bytes
from edgecnn.passes.weight_share import SHARE_ATTR
from edgecnn.search.run import SearchConfig
from edgecnn.search.size import coded_bytes, drop_upper_bound, magnitude_mask, size_search


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module")
def tiny_data():
    """A tiny model and images labelled by the model itself (FP32 is 100 % right: any drop is the sharing's)."""
    model = tiny()
    images = torch.randn(120, 3, 12, 12, generator=torch.Generator().manual_seed(1)).numpy()
    with torch.no_grad():
        labels = model(torch.from_numpy(images)).argmax(1).numpy()
    return model, images, labels


def _config(**fields) -> SearchConfig:
    return SearchConfig(**{"max_drop": 2.0, "sensitivity_images": 16, "prune_densities": [], "max_verify": 4, **fields})


def test_coded_bytes_counts_zeros_as_one_more_symbol():
    assign = np.array([0, 0, 1, 2, 2, 2, 3, 3])
    assert coded_bytes(assign, 4) == pytest.approx(index_cost_bytes(assign, 4))
    assert coded_bytes(assign, 4, zeros=8) > coded_bytes(assign, 4)  # more symbols to code
    assert coded_bytes(assign, 4, zeros=8) < coded_bytes(np.arange(16) % 4, 4)  # but a zero is cheaper than an index


def test_magnitude_mask_keeps_the_largest_weights():
    weight = torch.tensor([0.1, -3.0, 0.5, 2.0, -0.2, 0.05])
    assert magnitude_mask(weight, 0.5).tolist() == [False, True, True, True, False, False]
    assert magnitude_mask(weight, 1.0).all()


def test_drop_bound_is_one_sided_and_paired():
    base = np.array([1] * 80 + [0] * 20, bool)
    same = base.copy()
    assert drop_upper_bound(base, same) == (0.0, 0.0)
    worse = base.copy()
    worse[:10] = False  # 10 of 100 images lost
    drop, upper = drop_upper_bound(worse * 0 + base, worse)
    assert drop == pytest.approx(10.0) and upper > drop


def test_size_search_returns_the_smallest_shipped_artifact_within_the_budget(tiny_data, tmp_path, torch_one_thread):
    model, images, labels = tiny_data
    outcome = size_search(model, images, labels, _config(), tmp_path, log=lambda m: None)
    feasible = [c for c in outcome.uniform + outcome.searched if c.feasible]
    assert outcome.chosen is not None and outcome.chosen.feasible and outcome.chosen.drop <= 2.0
    assert all(c.drop <= 2.0 for c in feasible) and all(c.drop > 2.0 for c in outcome.uniform + outcome.searched if not c.feasible)
    shipped = [c.shipped_bytes for c in feasible if c.shipped_bytes is not None]
    assert outcome.chosen.shipped_bytes == min(shipped)
    assert outcome.chosen.shipped_bytes < 4 * sum(p.numel() for p in model.parameters())  # below float32
    # uniform widths are tried from 8 bit down to the first one over the budget
    assert [c.label for c in outcome.uniform][0] == "uniform 8 bit" and not outcome.uniform[-1].feasible
    # the chosen model is what was measured: every layer shared at its chosen bits
    for name, module in outcome.chosen_model.named_modules():
        if name in outcome.chosen.choice:
            bits = outcome.chosen.choice[name][0]
            assert getattr(module, SHARE_ATTR).bits == bits
            assert len(torch.unique(module.weight)) <= 2 ** bits + 1
    assert len(outcome.layers) == 3 and {r["bits"] for r in outcome.layers} <= set(range(2, 9))


def test_channels_of_very_different_scale_are_stored_scaled_and_compute_the_same():
    from edgecnn.search.size import ChannelScaled, channel_spread, scale_channels

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.Conv2d(4, 4, 3, groups=4, bias=False))
    with torch.no_grad():
        model[1].weight[0] *= 200  # what BN folding does to a depthwise channel
    x = torch.randn(2, 3, 9, 9)
    before = model(x)
    assert channel_spread(model[1].weight) > 8 and 1 < channel_spread(model[0].weight) < 8
    assert scale_channels(model, spread=8) == ["1"]
    assert isinstance(model[1], ChannelScaled) and isinstance(model[0], nn.Conv2d)
    assert torch.allclose(model(x), before, rtol=1e-4, atol=1e-4)
    assert model[1].conv.weight.abs().amax().item() == pytest.approx(1.0)
    assert scale_channels(model) == ["0"]  # by default every conv whose channels differ at all
    assert torch.allclose(model(x), before, rtol=1e-4, atol=1e-4)


def test_sensitivity_is_measured_on_the_output_and_catches_errors_that_add_up_in_one_kernel():
    """A 3x3 edge filter (weights summing to zero) after a layer with a large mean: a per-weight
    error moves its output by the summed error times that mean. The measured KL prices it high,
    while the same error on a layer whose weights see a zero-mean input costs little."""
    from edgecnn.search.size import measured_options

    torch.manual_seed(0)
    edge = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    other = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    with torch.no_grad():
        kernel = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.1]])
        edge.weight.copy_(kernel.expand(4, 1, 3, 3) * torch.linspace(0.5, 1.5, 4).view(4, 1, 1, 1))
        other.weight.copy_(torch.randn(4, 1, 3, 3))
    model = nn.Sequential(edge, other, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    images = torch.randn(16, 4, 8, 8) * 0.1 + 5.0  # a large mean: what a ReLU6 output has
    layers = [("0", edge), ("1", other)]
    before = [m.weight.detach().clone() for _, m in layers]
    options, clusterings = measured_options(model, layers, images, [1, 4], [1.0])
    assert options["0"][(1, 1.0)][1] > options["0"][(4, 1.0)][1] >= 0  # fewer bits, larger KL
    assert options["0"][(1, 1.0)][1] > options["1"][(1, 1.0)][1]
    assert all(torch.equal(m.weight, w) for (_, m), w in zip(layers, before))  # every weight put back
    assert set(clusterings) == {(n, b, 1.0) for n in ("0", "1") for b in (1, 4)}


def test_a_zero_budget_keeps_only_lossless_artifacts(tiny_data, tmp_path, torch_one_thread):
    model, images, labels = tiny_data
    outcome = size_search(model, images, labels, _config(max_drop=0.0, bit_choices=[3, 8]), tmp_path, log=lambda m: None)
    assert outcome.chosen is not None and outcome.chosen.drop <= 0.0


def test_every_candidate_is_recovered_and_stays_tied(tiny_data, tmp_path, torch_one_thread):
    model, images, labels = tiny_data
    calls = []

    def recover(student, steps):  # stands in for distillation: nudges the weights like an optimizer step
        calls.append(steps)
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.001)

    config = _config(max_drop=100.0, bit_choices=[2, 4], prune_densities=[0.3], recovery_steps=7)
    outcome = size_search(model, images, labels, config, tmp_path, recovery=recover, log=lambda m: None)
    pruned = [c for c in outcome.searched if any(d < 1 for _, d in c.choice.values())]
    assert pruned, "with a budget this loose, the allocation must prune"
    measured = outcome.uniform + outcome.searched
    assert len(calls) == len(measured) and set(calls) == {7}  # uniform widths get the same training
    sized = {c.shipped_bytes for c in outcome.uniform + outcome.searched if c.shipped_bytes is not None}
    assert len(sized) >= 2 and outcome.chosen.shipped_bytes == min(sized)  # several finalists packed, the smallest wins
    for name, module in pruned[0].model.named_modules():
        if name in pruned[0].choice:
            bits, density = pruned[0].choice[name]
            values = module.weight.detach()
            assert len(torch.unique(values[values != 0])) <= 2 ** bits  # still tied after recovery
            if density < 1:
                assert (values == 0).float().mean() >= 0.5
    calls.clear()
    unpruned = size_search(model, images, labels, config.model_copy(update={"prune_densities": []}), tmp_path / "b",
                           recovery=recover, log=lambda m: None)
    assert all(d == 1.0 for c in unpruned.uniform + unpruned.searched for _, d in c.choice.values())
    assert len(calls) == len(unpruned.uniform + unpruned.searched)


def test_objective_flag_sets_the_search_stage(capsys):
    from edgecnn.cli import main

    main(["compress", "squeezenet", "--max-drop", "1", "--objective", "size", "--print-recipe"])
    text = capsys.readouterr().out
    assert "objective: size" in text and "quantize" not in text
    main(["compress", "squeezenet", "--max-drop", "1", "--objective", "size", "--prune", "0.5", "--print-recipe"])
    assert "prune_densities:" in capsys.readouterr().out
    for args, message in ((["--objective", "size"], "--objective needs --max-drop"),
                          (["--objective", "smallest", "--max-drop", "1"], "smallest"),
                          (["--objective", "size", "--max-drop", "1", "--prune", "0.5", "--prune-mode", "channel"],
                           "--objective size prunes single weights")):
        with pytest.raises(SystemExit) as exit_info:
            main(["compress", "squeezenet", *args, "--print-recipe"])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


SIZE_RECIPE = """
data:
  embedded: {input_size: 32, epochs: 2, max_train_images: 300, max_test_images: 60}
  batch_size: 16
stages:
  - fold_bn
  - search: {objective: size, max_drop: 5.0, bit_choices: [3, 5, 8], max_verify: 2, sensitivity_images: 8}
  - export
  - measure: {checkpoints: all, latency_runs: 10, warmup: 1, warmup_seconds: 0.0}
"""


@pytest.mark.slow
def test_compress_with_the_size_objective_end_to_end(tmp_path):
    from edgecnn.cli import main

    recipe = tmp_path / "size.yaml"
    recipe.write_text(SIZE_RECIPE)
    out = tmp_path / "out"
    main(["compress", "squeezenet", "--recipe", str(recipe), "-o", str(out), "--quiet"])
    report = json.loads((out / "report.json").read_text())
    search = next(s for s in report["stages"] if s["name"] == "search")["summary"]
    assert search["objective"] == "size" and len(search["chosen_layers"]) == 26
    assert report["data"]["eval_images"] == 30  # the evaluation part only
    rows = {r["stage"]: r for r in report["results"]}
    assert rows["search"]["shipped_bytes"] < rows["fold_bn"]["shipped_bytes"]
    assert "## Search (size)" in (out / "report.md").read_text()
    assert not (out / "search.svg").exists()


def test_a_spent_time_budget_scores_the_widest_width_only_and_still_answers(tiny_data, tmp_path, torch_one_thread):
    """--search-time bounds the layer scoring: the widest width is scored for every layer (no
    choice exists without it), narrower ones are left out and said so, the answer still comes."""
    from edgecnn.report import size_search_section
    from edgecnn.search.budget import Budget
    from edgecnn.search.size import summary

    model, images, labels = tiny_data
    now = [0.0]
    budget = Budget(1.0, clock=lambda: now[0])
    now[0] = 3600.0  # the minute is long gone before the first score
    outcome = size_search(model, images, labels, _config(max_drop=100.0, bit_choices=[2, 4, 8]), tmp_path,
                          log=lambda m: None, budget=budget)
    assert [c.label for c in outcome.uniform] == ["uniform 8 bit"]
    assert all(bits == 8 for c in outcome.searched for bits, _ in c.choice.values())
    assert outcome.chosen is not None and outcome.chosen.shipped_bytes
    assert budget.skipped[0] == "layer scores at 4 bit (0 of 3 layers scored) and at 2 bit"
    assert any("bisection" in s for s in budget.skipped)
    info = {**summary(outcome, 100.0), "time_budget": budget.summary()}
    assert any("not done: layer scores at 4 bit" in line for line in size_search_section(info))


def test_without_a_time_budget_every_width_is_scored(tiny_data):
    from edgecnn.models.layer_select import select_layers
    from edgecnn.search.budget import Budget
    from edgecnn.search.size import measured_options

    model, images, _ = tiny_data
    layers = select_layers(model)
    budget = Budget(None)
    options, _ = measured_options(model, layers, torch.from_numpy(images[:16]), [2, 4, 8], [1.0], budget=budget)
    assert all(set(o) == {(2, 1.0), (4, 1.0), (8, 1.0)} or max(v[1] for v in o.values()) > 2.0 for o in options.values())
    assert budget.skipped == []


def test_pruned_options_are_refit_before_they_are_scored(tiny_data):
    """A pruned layer's kept weights are refit to its old output (edgecnn.passes.reconstruct): the
    option the knapsack prices moves the output less than magnitude pruning alone, and its
    clustering (what a candidate applies) holds the refit weights."""
    from edgecnn.models.layer_select import select_layers
    from edgecnn.passes.reconstruct import input_grams
    from edgecnn.search.size import measured_options

    model, images, _ = tiny_data
    layers = select_layers(model)
    scored, fit = torch.from_numpy(images[:16]), torch.from_numpy(images[16:48])
    grams = input_grams(model, layers, [fit])
    plain, _ = measured_options(model, layers, scored, [8], [1.0, 0.5])
    refit, clusterings = measured_options(model, layers, scored, [8], [1.0, 0.5], grams=grams)
    assert sum(refit[n][(8, 0.5)][1] for n, _ in layers) < 0.7 * sum(plain[n][(8, 0.5)][1] for n, _ in layers)
    assert all(refit[n][(8, 1.0)] == plain[n][(8, 1.0)] for n, _ in layers)  # unpruned options unchanged
    name, module = layers[1]
    centroids, assign, nonzero = clusterings[(name, 8, 0.5)]
    kept = magnitude_mask(module.weight, 0.5)
    assert np.array_equal(nonzero, kept)  # the magnitude mask, with other values on it
    assert not np.allclose(centroids[assign], module.weight.detach().reshape(-1).numpy()[kept], atol=1e-2)
