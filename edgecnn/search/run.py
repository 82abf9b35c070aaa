"""The whole search for one model: space -> latency table -> sensitivities -> solve -> artifact.

Inputs are plain: the float model, its search images (arrays + labels, the *search* part
of a split), calibration batches, optionally a recovery dataset (for pruning / shift). The
caller evaluates the chosen artifact on the *evaluation* part, which the search never sees.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgecnn.measure import interleave
from edgecnn.measure.interleave import Timer
from edgecnn.search import latency as lat
from edgecnn.search.budget import Budget
from edgecnn.search import sensitivity
from edgecnn.search.probes import export
from edgecnn.search.proxy import ChooseSet, choose_summary, compare, logits_of
from edgecnn.search.solve import Candidate, SearchResult, config_key, solve
from edgecnn.search.space import PRECISIONS, Space, apply_config, build_space, needs_recovery
from edgecnn.stats import CONFIDENCE, drop_verdict, ratio_bound
from edgecnn.targets import CPU_BACKENDS, DEFAULT_TARGET, get_target, resolve_target_name, targets_on_backend


class SearchConfig(BaseModel):
    """What the search may change and how much it may measure (recipe stage ``search``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    max_drop: float = Field(1.0, ge=0, description="Largest top-1 drop in points (measured on held-out labelled images) the fastest artifact may have.")
    target: str = Field(DEFAULT_TARGET, description="target whose runtime the layers are timed in (a CPU target: ONNX Runtime or OpenVINO)")
    precisions: list[str] = Field(default_factory=lambda: list(PRECISIONS))
    prune_densities: list[float] = Field(default_factory=lambda: [0.75], description="channel fractions a group may keep (with recovery images only); objective size: fractions of each layer's weights kept by magnitude")
    shift: bool = Field(False, description="also try shift substitution of spatial convs (with recovery images only)")
    sensitivity_images: int = Field(64, ge=1)
    max_verify: int = Field(6, ge=1, description="configurations built and measured at most")
    search_time: Optional[float] = Field(None, gt=0, description="Minutes of search: past them no new probe, sensitivity step or candidate starts (docs/search.md: the overshoot).")
    confidence: Optional[float] = Field(None, ge=0.5, lt=1, description="Keep a configuration only when the one-sided upper bound of its drop at this confidence (e.g. 0.95) is within --max-drop (default: the measured drop; the bound is shown either way).")
    threads: int = Field(2, ge=1)
    recovery_steps: int = Field(200, ge=1, description="distillation steps of a candidate needing recovery")
    recovery_size: int = Field(128, ge=32, description="training resolution of the recovery")
    recovery_lr: float = Field(1e-4, gt=0)
    objective: Literal["latency", "size"] = Field("latency", description="latency: the fastest artifact; size: the smallest shipped .ecnn (edgecnn.search.size)")
    choose_on: Optional[str] = Field(None, description="folder of unlabelled photos: a reserved, fixed subset of them (choose_images) decides between candidates the timing cannot tell apart, by agreement with FP32; kept out of recovery training (docs/search.md)")
    choose_images: int = Field(2000, ge=1, description="photos of choose_on reserved for the choice")
    bit_choices: list[int] = Field(default_factory=lambda: [2, 3, 4, 5, 6, 7, 8], description="objective size: weight-sharing bits a layer may take")
    final_spread_s: Optional[float] = Field(None, ge=0, description="seconds the final timing's rounds (whose ratios the answer and report claim) are spread over; default edgecnn.measure.interleave.CLAIM_SPREAD_S")

    @field_validator("target")
    @classmethod
    def _ort_target(cls, value: str) -> str:
        from edgecnn import cpu

        value = resolve_target_name(value)
        target, host = get_target(value), cpu.host_class()
        if target.backend not in CPU_BACKENDS:
            cpu_targets = [t for b in CPU_BACKENDS for t in targets_on_backend(b)]
            raise ValueError(f"the search times layers in a CPU runtime on this machine; '{value}' runs elsewhere "
                             f"(use {', '.join(cpu_targets)})")
        if host in target.saturates_on:  # its timings and answers here would be the saturating kernels'
            raise ValueError(f"the search times layers on this machine: {target.unfit_reason(host)}")
        return value

    @field_validator("precisions")
    @classmethod
    def _precisions(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if p not in PRECISIONS]
        if unknown or "fp32" not in value:
            raise ValueError(f"precisions must include fp32 and come from {', '.join(PRECISIONS)}")
        return value

    @field_validator("bit_choices")
    @classmethod
    def _bit_choices(cls, value: list[int]) -> list[int]:
        if not value or any(not 2 <= b <= 8 for b in value):
            raise ValueError(f"bit_choices are weight-sharing bits between 2 and 8, e.g. [3, 4, 5, 6, 8]; got {value}")
        return sorted(set(value))

    @field_validator("prune_densities")
    @classmethod
    def _densities(cls, value: list[float]) -> list[float]:
        if any(not 0 < d < 1 for d in value):
            raise ValueError("prune_densities are kept channel fractions between 0 and 1, e.g. [0.75, 0.5]")
        return value


@dataclass
class SearchData:
    images: np.ndarray  # search part, preprocessed NCHW float32
    labels: np.ndarray
    calib: list  # torch batches
    recovery: Optional[Callable[[nn.Module, int], dict]] = None  # (student, steps) -> summary, trains in place
    choose: Optional[ChooseSet] = None  # reserved unlabelled photos the tie-break chooses on (edgecnn.search.proxy)


@dataclass
class Outcome:
    space: Space
    table: lat.LatencyTable
    scores: dict
    result: SearchResult
    uniform: dict[str, Candidate]
    fp32_path: Path
    chosen_path: Optional[Path]
    chosen_model: Optional[nn.Module] = None  # None: no configuration kept the drop within the limit
    artifacts: dict[int, Path] = field(default_factory=dict)  # id(candidate) -> ONNX
    seconds: dict[str, float] = field(default_factory=dict)
    table_check: list = field(default_factory=list)
    fp32_top1: float = 0.0  # on the search part
    budget: dict = field(default_factory=dict)  # Budget.summary(): the time budget and what it cut
    note: str = ""  # one line when the answer is a uniform setting (no per-layer mix measured faster)
    confidence: Optional[float] = None  # the feasibility gate's confidence (None: the measured drop)
    choose: dict = field(default_factory=dict)  # what the tie-break chose on, and how the proxy ranks the candidates


def top1_of(path: Path, images: np.ndarray, threads: int = 2, batch: int = 32, backend: str = "ort") -> np.ndarray:
    """Predicted class per image through ``backend``'s CPU runtime (the target's: ORT or OpenVINO)."""
    from edgecnn.measure.latency import open_runner

    runner = open_runner(path, backend, threads)
    return np.concatenate([runner.run(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])


class _Builder:
    """Builds, measures and remembers configurations (one ONNX each)."""

    def __init__(self, model, space, data: SearchData, config: SearchConfig, work: Path, log, budget: Budget):
        self.model, self.space, self.data, self.config, self.work, self.log = model, space, data, config, work, log
        self.budget = budget
        self.size = data.images.shape[-1]
        self.paths: dict[str, Path] = {}
        self.models: dict[Path, nn.Module] = {}
        self.backend = get_target(config.target).backend  # every artifact, FP32 too, runs in the target's runtime
        self.fp32_path = export(copy.deepcopy(model).eval(), work / "fp32.onnx", self.size, config.target)
        self.fp32_pred = top1_of(self.fp32_path, data.images, config.threads, backend=self.backend)
        self.fp32_top1 = float((self.fp32_pred == data.labels).mean() * 100)
        self.agreement: dict[str, float] = {}  # artifact -> % of search images on FP32's class
        self.uniform_drop: dict[str, float] = {"fp32": 0.0}  # precision -> measured drop of its uniform setting
        self.agreement[str(self.fp32_path)] = 100.0
        self.bounds: dict[str, dict] = {}  # artifact -> drop with its one-sided bounds and verdict (edgecnn.stats)
        self.timer = Timer(config.threads, backend=self.backend)  # every timing of the search: one protocol, one process per model
        self.proxy: dict[str, dict] = {}  # artifact -> agreement / KL with FP32 on the reserved photos
        self.choose_ref = (logits_of(self.fp32_path, data.choose.images, config.threads, backend=self.backend)
                           if data.choose else None)

    def build(self, config: dict, name: str) -> Path:
        model = apply_config(self.model, self.space, config, self.data.calib, quantize=False)
        if needs_recovery(self.space, config) and self.data.recovery is not None:
            summary = self.data.recovery(model, self.config.recovery_steps)
            self.log(f"  recovery of {name}: {summary}")
        precision_only = {k: v for k, v in config.items() if k.startswith("q:")}
        space = Space([u for u in self.space.units if u.kind == "precision"], self.space.layers, self.space.layer_kinds, self.space.layer_macs)
        model = apply_config(model, space, precision_only, self.data.calib, target=self.config.target)
        path = export(model, self.work / f"{name}.onnx", self.size, self.config.target)
        self.paths[name] = path
        self.models[path] = model
        return path

    def drop(self, path: Path) -> float:
        pred = top1_of(path, self.data.images, self.config.threads, backend=self.backend)
        self.agreement[str(path)] = float((pred == self.fp32_pred).mean() * 100)
        if self.choose_ref is not None:
            self.proxy[str(path)] = compare(self.choose_ref, logits_of(path, self.data.choose.images, self.config.threads,
                                                                       backend=self.backend))
        self.bounds[str(path)] = drop_verdict(self.fp32_pred == self.data.labels, pred == self.data.labels, self.config.max_drop,
                                              self.config.confidence or CONFIDENCE)
        return self.fp32_top1 - float((pred == self.data.labels).mean() * 100)

    def attach_proxy(self, candidates: list, artifacts: dict) -> None:
        """``info["choose"]``: agreement / KL with FP32 on the reserved photos, for the tie-break and the report."""
        for cand in candidates:
            if str(artifacts.get(id(cand), "")) in self.proxy:
                cand.info["choose"] = self.proxy[str(artifacts[id(cand)])]

    def gate(self, path: Path, drop: float) -> float:
        """What the feasibility test compares with ``max_drop``: the measured drop, or its upper
        bound when ``confidence`` is set."""
        return self.bounds[str(path)]["upper"] if self.config.confidence else drop

    def timed(self, path: Path) -> float:
        """Whole-model ms, interleaved with FP32 and scaled to the FP32 reference of the table."""
        times = self.timer.time({"fp32": self.fp32_path, "cand": path})
        return times["cand"].median_ms / times["fp32"].median_ms

    def out_of_time(self) -> bool:
        return self.budget.spent()


def measure_table(builder: _Builder, space: Space, log) -> lat.LatencyTable:
    """Whole-model timing of each uniform precision (one interleaved run), then per-layer probes."""
    from edgecnn.search import probes

    cfg = builder.config
    paths = {"fp32": str(builder.fp32_path)}
    for precision in [p for p in cfg.precisions if p != "fp32"]:
        if builder.budget.spent():
            builder.budget.skip(f"uniform {precision}")
            continue
        builder.budget.phase = f"building and checking uniform {precision}"
        path = builder.build(space.uniform(precision), f"uniform-{precision}")
        builder.uniform_drop[precision] = builder.drop(path)  # part of the unit: a built setting is a checked one
        paths[precision] = str(path)
    builder.budget.phase = "timing the uniform precisions"
    whole = builder.timer.time(paths)
    log("  uniform: " + ", ".join(f"{p} {v.median_ms:.2f} ms" for p, v in whole.items()))
    images = torch.from_numpy(builder.data.images[:4])
    table = probes.build_table(builder.model, space, images, cfg.precisions, {p: v.median_ms for p, v in whole.items()},
                               builder.work / "probes", builder.timer, cfg.target, budget=builder.budget)
    if table.estimated:
        log(f"  latency probes stopped (time budget): {len(table.estimated)} of {len(space.layers)} layers estimated from MACs")
    return table


def final_timing(result: SearchResult, uniform: dict, artifacts: dict, builder: _Builder, config: SearchConfig) -> Optional[Candidate]:
    """Every feasible configuration (searched or uniform) timed together, interleaved, with FP32;
    the fastest is the answer (``result.chosen`` is updated). A per-layer table cannot see every
    cost of a mixed graph (e.g. a Quantize on a large tensor after an FP32 first conv): the
    measurement decides between what the table proposed and the uniform settings."""
    timed = [c for c in result.verified if c.feasible] + [c for p, c in uniform.items() if p != "fp32"]
    paths = {"fp32": str(builder.fp32_path), **{f"c{i}": str(artifacts[id(c)]) for i, c in enumerate(timed) if id(c) in artifacts}}
    spread = interleave.CLAIM_SPREAD_S if config.final_spread_s is None else config.final_spread_s
    builder.budget.phase = f"final timing of {len(paths)} artifacts (rounds spread over {spread:g} s)"
    times = builder.timer.time_claim(paths, spread_s=spread)
    result.final_timing = {"rounds": len(times["fp32"].round_medians_ms), "spread_s": spread, "window_s": times["fp32"].window_s}
    fp32_ms = times["fp32"].median_ms
    if "fp32" in uniform:
        uniform["fp32"].measured_ms = fp32_ms
        uniform["fp32"].info["round_medians_ms"] = times["fp32"].round_medians_ms
    for i, cand in enumerate(timed):
        if f"c{i}" in times:
            cand.measured_ms = times[f"c{i}"].median_ms
            cand.info["final_timing"] = True
            cand.info["fp32_agree"] = builder.agreement.get(paths[f"c{i}"])
            cand.info["signature"] = lat.execution_signature(paths[f"c{i}"])
            cand.info["round_medians_ms"] = times[f"c{i}"].round_medians_ms
            cand.info["speedup_bound"] = ratio_bound(times["fp32"].round_medians_ms, times[f"c{i}"].round_medians_ms).to_dict()
    chosen = choose(timed, fp32_ms)
    result.chosen = chosen
    for precision, cand in uniform.items():
        cand.info["uniform"] = precision
    return chosen


def choose(timed: list[Candidate], fp32_ms: float, noise: float = 0.03) -> Optional[Candidate]:
    """The fastest feasible candidate, where "fastest" allows for what timing cannot resolve.

    Candidates with one execution signature run the same kernels: their round medians are
    pooled into one time (``pooled_ms``). Among candidates within ``noise`` of the fastest pooled
    time and not beaten by another on both pooled time and drop, the one agreeing most with FP32
    wins (then the smaller KL, then the smaller measured drop): on the reserved photos when the
    search has them (``info["choose"]``), else on the search images. Agreement is a paired count
    over every image, far less noisy than a top-1 difference.
    """
    pool = [c for c in timed if c.feasible and c.measured_ms is not None]
    signature = lambda c: c.info.get("signature", str(id(c)))  # noqa: E731 (no signature: its own group)
    groups: dict[str, list[float]] = {}
    for cand in pool:
        groups.setdefault(signature(cand), []).extend(cand.info.get("round_medians_ms") or [cand.measured_ms])
    for cand in pool:
        cand.info["pooled_ms"] = statistics.median(groups[signature(cand)])
    if not pool:
        return None
    fastest = min(c.info["pooled_ms"] for c in pool)
    close = [c for c in pool if c.info["pooled_ms"] <= fastest * (1 + noise)]
    # Never one that another beats on both axes the choice is made on (pooled time, measured drop).
    close = [c for c in close if not any(o.info["pooled_ms"] < c.info["pooled_ms"] and o.drop < c.drop for o in close)]
    if all("choose" in c.info for c in close):
        key = lambda c: (c.info["choose"]["agree"], -c.info["choose"]["kl"], -c.drop, -c.info["pooled_ms"])  # noqa: E731
    else:
        key = lambda c: (c.info.get("fp32_agree") or 0.0, -c.drop, -c.info["pooled_ms"])  # noqa: E731
    chosen = max(close, key=key)
    return chosen if chosen.info["pooled_ms"] < fp32_ms else None


def search(model: nn.Module, data: SearchData, config: SearchConfig, work: Path, log=print,
           budget: Optional[Budget] = None) -> Outcome:
    """Run the search; the artifacts land in ``work``. ``budget`` (default: ``config.search_time``
    from now) bounds what it starts (:mod:`edgecnn.search.budget`)."""
    budget = budget or Budget(config.search_time)
    work.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval()
    seconds, t0 = {}, time.perf_counter()
    example = torch.from_numpy(data.images[:1])
    space = build_space(model, example, tuple(config.precisions), tuple(config.prune_densities), config.shift)
    budget.phase = "exporting FP32"
    builder = _Builder(model, space, data, config, work, log, budget)
    log(f"search space: {len(space.units)} units; FP32 top-1 on the search part {builder.fp32_top1:.2f} %")
    table = measure_table(builder, space, log)
    seconds["latency_table_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    images = torch.from_numpy(data.images[: config.sensitivity_images])
    if budget.spent():  # no candidate could be verified: measuring sensitivities would only spend more time
        budget.skip("sensitivities and the candidate search (only the uniform precisions were compared)")
        scores = {}
    else:
        budget.phase = "sensitivity"
        scores = sensitivity.measure(model, space, images, data.calib, config.target, budget=budget)
    seconds["sensitivity_s"] = time.perf_counter() - t1
    built: dict[tuple, Path] = {}
    fp32_ms: list[float] = []  # timed at the first verification (none when the time is spent before)

    def verify(cfg: dict):
        if not fp32_ms:
            budget.phase = "timing FP32"
            fp32_ms.append(table.measured.get("fp32") or builder.timer.time({"fp32": builder.fp32_path})["fp32"].median_ms)
        budget.phase = f"building and checking candidate {len(built)}"
        path = builder.build(cfg, f"candidate-{len(built)}")
        built[config_key(cfg)] = path
        drop = builder.drop(path)
        return drop, builder.timed(path) * fp32_ms[0], {"gate": builder.gate(path, drop), "drop_bound": builder.bounds[str(path)]}

    t2 = time.perf_counter()
    # Deltas around the fastest uniform setting: a layer is judged in the int8 chain it would sit in.
    reference = min((space.uniform(p) for p in config.precisions), key=lambda c: table.predict(space, c))
    if scores:
        result = solve(space, lambda c: table.predict(space, c), lambda u, o: scores[(u, o)].kl, verify, config.max_drop,
                       reference=reference, max_verify=config.max_verify, log=log, out_of_time=budget.spent)
    else:
        result = SearchResult(None, [], config.max_drop)
    unverified = sum(1 for c in result.verified if c.info.get("not_verified"))
    if unverified:
        budget.skip(f"verification of {unverified} candidate{'s' if unverified > 1 else ''}")
    seconds["solve_s"] = time.perf_counter() - t2
    budget.phase = "collecting the uniform settings"
    artifacts = {id(c): built[config_key(c.config)] for c in result.verified if config_key(c.config) in built}
    uniform = {}
    for precision in config.precisions:
        if precision != "fp32" and f"uniform-{precision}" not in builder.paths:
            continue  # not built (time budget)
        cfg = space.uniform(precision)
        path = builder.paths.get(f"uniform-{precision}", builder.fp32_path)
        cand = Candidate(cfg, table.predict(space, cfg), sensitivity.proxy(space, cfg, scores) if scores else float("nan"))
        cand.drop = builder.uniform_drop[precision]
        bound = builder.bounds.get(str(path))
        cand.feasible = (builder.gate(path, cand.drop) if bound else cand.drop) <= config.max_drop
        if bound:
            cand.info["drop_bound"] = bound
        artifacts[id(cand)] = path
        uniform[precision] = cand
    builder.attach_proxy([*result.verified, *[c for p, c in uniform.items() if p != "fp32"]], artifacts)
    chosen = final_timing(result, uniform, artifacts, builder, config)
    builder.timer.close()  # the workers also exit on their own when this process ends
    chosen_path = artifacts.get(id(chosen)) if chosen else builder.fp32_path
    chosen_model = copy.deepcopy(model).eval() if chosen_path == builder.fp32_path else builder.models.get(chosen_path)
    measured = {f"candidate {i}": c.measured_ms for i, c in enumerate(result.verified) if c.measured_ms}
    check = lat.check(table, space, {f"candidate {i}": c.config for i, c in enumerate(result.verified)}, measured)
    seconds["total_s"] = time.perf_counter() - t0
    note = uniform_note(chosen, result)
    if note:
        log(note)
    return Outcome(space, table, scores, result, uniform, builder.fp32_path, chosen_path, chosen_model,
                   artifacts, {k: round(v, 1) for k, v in seconds.items()}, check, builder.fp32_top1, budget.summary(),
                   note, config.confidence, choose_summary(data.choose, [*result.verified, *uniform.values()], builder.fp32_top1))


def uniform_note(chosen: Optional[Candidate], result: SearchResult) -> str:
    """The one line saying that the answer is a uniform setting, not a per-layer one."""
    if chosen is None or "uniform" not in chosen.info:
        return ""
    mixed = [c for c in result.verified if c.feasible and c.measured_ms is not None]
    why = (f"the {len(mixed)} per-layer configuration(s) within the budget measured no faster" if mixed
           else "no per-layer configuration was within the budget")
    return (f"per-layer search: {why}; the answer is uniform {chosen.info['uniform'].upper()} "
            f"(why a mix rarely pays on this runtime: docs/search.md)")


def summary(outcome: Outcome, names: Optional[dict] = None) -> dict:
    """JSON-ready account of a search: candidates, uniform settings, the chosen per-layer table."""
    result = outcome.result
    chosen = result.chosen
    return {
        "max_drop": result.max_drop,
        "confidence": outcome.confidence,
        "units": len(outcome.space.units),
        "fp32_top1_search_part": outcome.fp32_top1,
        "final_timing": result.final_timing,
        "seconds": outcome.seconds,
        "time_budget": outcome.budget,
        "latency_table_check": outcome.table_check,
        "uniform": {p: c.to_dict() for p, c in outcome.uniform.items()},
        "verified": [{**c.to_dict(), "artifact": str(outcome.artifacts.get(id(c), ""))} for c in result.verified],
        "chosen": chosen.to_dict() if chosen else None,
        "note": outcome.note,
        "choose": outcome.choose,
        "latency_table": {"scale": outcome.table.scale, "boundary_ms": outcome.table.boundary_ms, "other_ms": outcome.table.other_ms},
        "chosen_artifact": str(outcome.chosen_path) if outcome.chosen_path else None,
        "chosen_layers": outcome.space.describe(chosen.config if chosen else outcome.space.base()),
        # None: not scored (time budget)
        "sensitivity": {f"{u}={o}": round(s.kl, 6) if np.isfinite(s.kl) else None for (u, o), s in outcome.scores.items()},
    }
