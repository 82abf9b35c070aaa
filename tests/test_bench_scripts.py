"""Every bench script runs for real on tiny input and writes what it says it writes.

A bench script calls the library the way a user's code does, so a changed library signature
breaks it silently until the next 20-minute run; these smoke runs (a few images, one step,
into a temporary folder) are the guard. Scripts that need ../shared, an optional peer
(openvino, nncf, nvidia-modelopt) or qemu-user skip with the reason. The fast tests below
keep bench/ itself in shape: every script listed in bench/README.md, each under 400 lines,
no import cycles. The scripts whose smallest real run takes minutes (``heavy``) run only with
``EDGECNN_BENCH_SMOKE=all``, so that the default slow suite stays near a minute; CI runs them
all after the suite (``.ci/run``).
"""

from __future__ import annotations

import ast
import json
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"


def listed_scripts() -> list[str]:
    """The bench files named in bench/README.md's "Every script here" table."""
    text = (BENCH / "README.md").read_text()
    section = text[text.index("## Every script here"):].splitlines()
    table = "\n".join(line for line in section if line.startswith("|"))
    return sorted(set(re.findall(r"`([\w/]+(?:\.py|/))`", table)))


@dataclass
class Smoke:
    """How one script runs on tiny input: its arguments ({tmp} is the temporary folder, {data} the
    shared data), what it must leave there, and what it needs."""

    args: list[str]
    writes: list[str] = field(default_factory=list)  # globs under {tmp}, each must match a non-empty file
    shared: bool = False  # needs ../shared/data
    modules: tuple[str, ...] = ()  # optional peers it needs
    tool: str = ""  # an executable it needs
    printed: str = ""  # a line fragment stdout must hold
    heavy: int = 0  # seconds its smallest real run took on 2 shared cores, when far over this file's budget


SMOKE = {
    "run.py": Smoke(["--quick", "--models", "squeezenet1_1", "--engines", "ort_fp32,edgecnn_int8", "--eval-limit", "8",
                     "--calib", "4", "--rounds", "1", "--no-op-profile", "--peak-seconds", "0.05",
                     "--data", "{tmp}/no-data", "--out", "{tmp}"],
                    writes=["*-quick.md", "*-quick.json"]),
    "run_report.py": Smoke(["run.py", "--from-json", "{tmp}/run.json"], writes=["run.md"]),
    "peak_macs.py": Smoke(["--seconds", "0.02"], printed='"int8"'),
    "trt_peer.py": Smoke(["--from-json", "{tmp}/trt_peer.json", "--out", "{tmp}/trt_peer.md"], writes=["trt_peer.md"]),
    "search.py": Smoke(["--render", "{tmp}/search.json", "--out", "{tmp}/search"], writes=["search.md"]),
    "search_report.py": Smoke(["search.py", "--render", "{tmp}/search.json", "--out", "{tmp}/search"], writes=["search.md"]),
    "latency_check.py": Smoke(["--models", "squeezenet1_1", "--images", "8", "--spread", "0", "--out", "{tmp}/latency_check"],
                              writes=["latency_check.md", "latency_check.json"], shared=True, heavy=600),
    "timing_states.py": Smoke(["--models", "squeezenet1_1", "--images", "8", "--timings", "2", "--pause", "0",
                                "--rounds", "2", "--spreads", "0,0.5", "--out", "{tmp}/ts"], writes=["ts.md", "ts.json"],
                               shared=True, heavy=16),
    "timing_order.py": Smoke(["--models", "squeezenet1_1", "--rounds", "5", "--repeats", "1", "--out", "{tmp}/to"],
                             writes=["to.md", "to.json"], modules=("openvino",)),
    "recovery_check.py": Smoke(["--steps", "1", "--images", "8", "--size", "64", "--limit", "16", "--out", "{tmp}/rc.md"],
                               writes=["rc.md"], shared=True, heavy=100),
    "quantize_accuracy.py": Smoke(["--calib", "4", "--limit", "12", "--models", "squeezenet1_1", "--no-cost",
                                   "--out", "{tmp}/q.md"], writes=["q.md"], shared=True, heavy=45),
    "shift_distill.py": Smoke(["--limit", "4", "--models", "squeezenet1_1", "--out", "{tmp}/sd.md"], writes=["sd.md"],
                              shared=True),
    "deep_compression.py": Smoke(["--quick", "--limit", "2", "--sections", "D", "--output", "{tmp}/dc.md"],
                                 writes=["dc.md"], shared=True, heavy=57),
    "deep_compression_fisher.py": Smoke(["deep_compression.py", "--quick", "--limit", "2", "--sections", "E",
                                         "--output", "{tmp}/dce.md"], writes=["dce.md"], shared=True, heavy=79),
    "size_search.py": Smoke(["--models", "squeezenet1_1", "--images", "8", "--max-verify", "1", "--prune", "0.5",
                             "--train", "{data}/distill", "--recovery-steps", "1", "--recovery-images", "8",
                             "--output", "{tmp}/ss.md"], writes=["ss.md"], shared=True, heavy=135),
    "prune_reconstruct.py": Smoke(["--models", "squeezenet1_1", "--densities", "0.5", "--calib", "4", "--limit", "8",
                                   "--out", "{tmp}/pr.md"], writes=["pr.md", "pr.json"], shared=True),
    "arm_kernels.py": Smoke(["--images", "2", "--levels", "rpi4", "--models", "squeezenet1_1", "--out", "{tmp}/ak.md",
                             "--work", "{tmp}/work"], writes=["ak.md"], shared=True, tool="qemu-aarch64", heavy=167),
}
# Shared code, run by the scripts above: imported here so a broken import shows by name.
HELPERS = {"_models.py", "_stats.py", "_workers.py", "_deep_compression_parts.py", "_run_model.py", "_shift_data.py",
           "_shift_report.py", "engines/"}
# Committed results that the renderers re-render (a copy, into the temporary folder).
RENDER_INPUTS = {"run.json": "2026-12-03-amd-epyc-2cpu.json", "trt_peer.json": "trt_peer.json", "search.json": "search.json"}


def test_readme_lists_every_bench_script():
    on_disk = {p.name for p in BENCH.glob("*.py")} | {"engines/"}
    listed = set(listed_scripts())
    assert on_disk - listed == set(), "add these to bench/README.md's table"
    assert listed - on_disk == set(), "bench/README.md names files that do not exist"
    assert listed == set(SMOKE) | HELPERS, "every listed script needs a smoke run here (or is a helper)"


@pytest.mark.parametrize("path", sorted(BENCH.rglob("*.py")), ids=lambda p: str(p.relative_to(BENCH)))
def test_bench_file_is_under_400_lines(path):
    assert len(path.read_text().splitlines()) < 400, "split it into cohesive modules"


def _bench_imports(path: Path, names: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & names


def test_bench_has_no_import_cycles():
    modules = {p.stem: p for p in BENCH.glob("*.py")}
    modules["engines"] = BENCH / "engines" / "__init__.py"
    graph = {name: _bench_imports(path, set(modules)) - {name} for name, path in modules.items()}
    for path in (BENCH / "engines").glob("*.py"):  # the package's modules count as "engines"
        graph["engines"] |= _bench_imports(path, set(modules)) - {"engines"}
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError("import cycle in bench/: " + " -> ".join(trail[trail.index(node):] + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize("helper", sorted(HELPERS))
def test_helper_imports(helper, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    name = helper.rstrip("/").removesuffix(".py")
    spec = importlib.util.find_spec(name)
    assert spec is not None and Path(spec.origin).is_relative_to(BENCH)
    __import__(name)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_bench_script_smoke_run(script, tmp_path, request):
    smoke = SMOKE[script]
    if smoke.heavy and os.environ.get("EDGECNN_BENCH_SMOKE") != "all":
        pytest.skip(f"{script}'s smallest run takes ~{smoke.heavy} s; EDGECNN_BENCH_SMOKE=all runs it")
    data = request.getfixturevalue("shared_data") if smoke.shared else None  # skips when ../shared is absent
    for module in smoke.modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{script} needs {module} (pip install -r bench/requirements.txt)")
    if smoke.tool and shutil.which(smoke.tool) is None:
        pytest.skip(f"{script} needs {smoke.tool} (qemu-user) on PATH")
    for copy, committed in RENDER_INPUTS.items():
        shutil.copy(RESULTS / committed, tmp_path / copy)
    args = [a.replace("{tmp}", str(tmp_path)).replace("{data}", str(data)) for a in smoke.args]
    target = args.pop(0) if args and args[0].endswith(".py") else script
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "2"}
    # CI runs two smokes at a time on two cores (each with two threads): up to 3x a lone run.
    result = subprocess.run([sys.executable, str(BENCH / target), *args], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=max(300, 3 * smoke.heavy))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for pattern in smoke.writes:
        written = list(tmp_path.glob(pattern))
        assert written and all(p.stat().st_size > 0 for p in written), f"{script} wrote no {pattern}"
    assert smoke.printed in result.stdout


def test_latency_check_judges_each_configuration_by_the_bounds_of_its_ratio_error(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import latency_check

    assert latency_check.error_verdict(-5.0, 5.0, 10.0) == "met"
    assert latency_check.error_verdict(-30.0, -12.0, 10.0) == "not met"
    assert latency_check.error_verdict(-12.0, 3.0, 10.0) == "not resolved"  # the point may be inside, the bound is not
    fp32 = {"round_medians_ms": [10.0, 10.5, 9.8, 10.2, 10.1]}
    steady = {"round_medians_ms": [5.0, 5.25, 4.9, 5.1, 5.05], "predicted_vs_fp32": 0.5}  # half of FP32 in every round
    assert latency_check.ratio_error_bounds(steady, fp32) == pytest.approx((0.0, 0.0), abs=1e-9)
    noisy = {"round_medians_ms": [4.0, 6.5, 4.9, 5.9, 4.2], "predicted_vs_fp32": 0.5}
    low, high = latency_check.ratio_error_bounds(noisy, fp32)
    assert low < -10 < 10 < high  # five noisy rounds cannot resolve a 10 % goal
    committed = json.loads((RESULTS / "latency_check.json").read_text())
    text = latency_check.render(committed)
    assert "-> not met" in text and "-> met" not in text


def test_timing_states_names_the_timings_that_disagree_beyond_their_bounds(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import timing_states

    def timing(estimate, half_width):
        return {"vs_fp32": {"w7a8": {"estimate": estimate, "lower": estimate - half_width, "upper": estimate + half_width}}}

    # Two steady timings of 1.25x and one of 1.04x whose bounds do not reach them: two disagreeing pairs.
    timings = [timing(1.25, 0.05), timing(1.04, 0.05), timing(1.23, 0.05)]
    assert timing_states.disagreements(timings, "w7a8") == [(1, 2), (2, 3)]
    assert timing_states.disagreements([timing(1.25, 0.2), timing(1.04, 0.2)], "w7a8") == []  # wide bounds cover both


def test_shift_goal_verdict_comes_from_the_bounds_of_top1(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from _shift_report import goal_verdict

    assert goal_verdict({"top1_after": 22.9}, 34.0, 384)[0] == "not met"  # 11 points short: the bound agrees
    assert goal_verdict({"top1_after": 33.0}, 34.0, 384)[0] == "not resolved"  # short by less than 384 images resolve
    assert goal_verdict({"top1_after": 45.0}, 34.0, 384)[0] == "met"


@pytest.mark.parametrize("host, asked, built", [("x86-vnni", "openvino", "ov-x86-vnni"), ("x86-avx2", "openvino", "ov-x86"),
                                                ("x86-avx2", "ov-x86-vnni", None), ("x86-avx2", "trt", None)])
def test_the_search_bench_takes_openvino_targets_the_other_scripts_do_not(host, asked, built, monkeypatch):
    """bench/search.py searches, evaluates and times an OpenVINO target's files in OpenVINO (its
    report says so); the scripts comparing ONNX Runtime kernels keep refusing it."""
    monkeypatch.syspath_prepend(str(BENCH))
    from engines import host_ort_target
    from search_report import _target_runtime

    from edgecnn import cpu

    monkeypatch.setattr(cpu, "host_class", lambda: host)
    resolved, unfit = host_ort_target(asked, ("ort", "openvino"))
    assert (unfit is None) == (built is not None) and (built is None or resolved == built)
    if built:
        assert "not an ONNX Runtime target" in host_ort_target(asked)[1]
        assert _target_runtime({"mobilenet_v2": {"target": built}}) == "openvino"
    assert _target_runtime({"target": "ort-x86"}) == "ort" and _target_runtime({}) == "ort"


@pytest.mark.parametrize("host, asked, built", [("x86-vnni", "x86", "ort-x86-vnni"), ("x86-avx2", "x86", "ort-x86"),
                                                ("x86-vnni", "ort-x86", "ort-x86"), ("x86-avx2", "ort-x86-vnni", None),
                                                ("x86-avx2", "trt", None)])
def test_run_builds_edgecnn_artifacts_for_this_cpus_target(host, asked, built, monkeypatch, capsys):
    """bench/run.py times edgecnn's artifact for the CPU it runs on (a VNNI CPU gets its U8S8 full 8-bit
    file), and refuses a target whose kernels here are not the deployed ones (saturating, or not ORT)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import run

    from edgecnn import cpu

    monkeypatch.setattr(cpu, "host_class", lambda: host)
    if built is None:  # refused in one line before any work, by every script that times a target
        import latency_check
        import search

        for parse in (run.parse_args, search.main, latency_check.main):
            with pytest.raises(SystemExit) as exit_info:
                parse(["--target", asked])
            assert exit_info.value.code == 2 and "--target" in capsys.readouterr().err
    else:
        args = run.parse_args(["--target", asked])
        assert args.target == built
        ready, skipped = run.select_engines(["edgecnn_int8", "edgecnn_int8_u8u8"], args.target)
        # the ort-x86 (U8U8) form is timed beside the run's own INT8 file only where the two differ
        assert ("edgecnn_int8_u8u8" in ready) == (built != "ort-x86")
