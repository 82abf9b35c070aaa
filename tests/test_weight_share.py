"""Weight sharing: k-means over non-zeros, zeros stay zero, centroid fine-tuning stays tied."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.passes import PassContext, run_pass
from edgecnn.passes.weight_share import centroid_gradient_hook, kmeans_1d, shared_layers, tie_to_centroids


def _net(sparsity: float = 0.6) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight[torch.rand_like(m.weight) < sparsity] = 0
    return net


def _sgd_step(net: nn.Module, lr: float) -> None:
    """Plain SGD without torch.optim (whose first step imports torch._dynamo: seconds)."""
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p -= lr * p.grad
                p.grad = None


def _nonzero_distinct(weight: torch.Tensor) -> int:
    w = weight.detach().flatten()
    return int(torch.unique(w[w != 0]).numel())


def test_kmeans_1d_linear_init_and_bounded_clusters():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-1, 0.1, 2000), rng.normal(2, 0.3, 500), [10.0]])
    centroids, assign = kmeans_1d(values, 8)
    assert len(centroids) <= 8 and np.all(np.diff(centroids) > 0)
    assert assign.min() >= 0 and assign.max() < len(centroids)
    # Linear initialisation keeps the lone large weight as its own centroid.
    assert np.isclose(centroids[-1], 10.0)
    # Every value is assigned to its nearest centroid.
    nearest = np.abs(values[:, None] - centroids[None, :]).argmin(1)
    np.testing.assert_array_equal(assign, nearest)


def test_linear_nonzero_init_uses_every_centroid_on_pruned_weights():
    rng = np.random.default_rng(1)
    values = rng.uniform(-1, 1, 20000)
    values = values[np.abs(values) > 0.6]  # pruning left a wide gap around zero
    linear, _ = kmeans_1d(values, 16)
    spread, _ = kmeans_1d(values, 16, init="linear_nonzero")
    assert len(linear) < 16 and len(spread) == 16


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_pass_keeps_zeros_and_at_most_2_pow_bits_values(bits):
    net = _net()
    before = {n: m.weight.detach().clone() for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    ctx = PassContext(progress=False)
    net = run_pass("weight_share", net, {"bits": bits}, ctx)
    report = ctx.reports[-1]
    assert report.name == "weight_share" and len(report.rows) == 3
    for row in report.rows:
        module = dict(net.named_modules())[row["layer"]]
        w0, w = before[row["layer"]], module.weight.detach()
        assert torch.equal(w0 == 0, w == 0), "zeros must stay zero and non-zeros stay non-zero"
        assert _nonzero_distinct(w) <= 2**bits
        assert row["distinct"] == _nonzero_distinct(w) and row["bits"] == bits
        assert row["nonzeros"] == int((w0 != 0).sum())


def test_layer_overrides_and_excludes():
    net = _net()
    ctx = PassContext(progress=False)
    original_fc = net[6].weight.detach().clone()
    run_pass("weight_share", net, {"bits": 6, "layer_bits": {"2": 3}, "exclude": ["6"]}, ctx)
    rows = {r["layer"]: r for r in ctx.reports[-1].rows}
    assert rows["2"]["bits"] == 3 and _nonzero_distinct(net[2].weight) <= 8
    assert rows["0"]["bits"] == 6
    assert "6" not in rows and torch.equal(net[6].weight, original_fc)
    with pytest.raises(UserError, match="bits"):
        run_pass("weight_share", _net(), {"bits": 9})
    with pytest.raises(UserError, match="matches no layer"):
        run_pass("weight_share", _net(), {"include": ["nope.*"]})


def test_fine_tuning_stays_tied_to_centroids():
    net = run_pass("weight_share", _net(), {"bits": 3}, PassContext(progress=False))
    zeros = {n: (m.weight == 0).clone() for n, m in shared_layers(net)}
    handles = centroid_gradient_hook(net)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    before = net[2].weight.detach().clone()
    for _ in range(3):
        nn.functional.cross_entropy(net(x), y).backward()
        # Gradients are shared per centroid: equal within a cluster, zero on pruned weights.
        grad = net[2].weight.grad
        assert torch.all(grad[zeros["2"]] == 0)
        index = net[2]._edgecnn_weight_share.index
        member = grad[index == 0]
        assert torch.allclose(member, member[0].expand_as(member))
        _sgd_step(net, 0.5)
        tie_to_centroids(net)
    for h in handles:
        h.remove()
    for name, module in shared_layers(net):
        assert torch.equal(module.weight == 0, zeros[name])
        assert _nonzero_distinct(module.weight) <= 8
    assert not torch.equal(before, net[2].weight), "centroids should have moved"


def test_training_loop_unaware_of_sharing_still_trains_tied_centroids():
    net = run_pass("weight_share", _net(), {"bits": 2}, PassContext(progress=False))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(3):  # no tie_to_centroids call: the pre-forward hook re-ties
        nn.functional.cross_entropy(net(x), y).backward()
        with torch.no_grad():  # per-weight steps (like Adam's) pull cluster members apart
            for p in net.parameters():
                p -= 0.05 * torch.sign(p.grad) * torch.rand_like(p)
                p.grad = None
    assert _nonzero_distinct(net[0].weight) > 4  # the last step is not tied yet
    net.eval()(x)
    assert _nonzero_distinct(net[0].weight) <= 4


def test_shared_model_packs_small_and_decodes_exactly(tmp_path):
    import onnx
    import onnxruntime as ort

    from edgecnn.pack import decode_model, pack_model

    net = run_pass("weight_share", _net(0.7), {"bits": 4}, PassContext(progress=False)).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 16, 16), str(path), opset_version=17, dynamo=False, input_names=["x"])
    model = onnx.load(str(path))
    data, stats = pack_model(model)
    enc = {t.name: t.encoding for t in stats.tensors}
    assert all(enc[f"{i}.weight"] in ("dense", "sparse") for i in (0, 2, 6))
    decoded = decode_model(data)
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_array_equal(run(model), run(decoded))
    with torch.no_grad():
        np.testing.assert_allclose(run(decoded), net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
