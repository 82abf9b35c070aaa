"""The search stage: the fastest configuration within ``max_drop`` (edgecnn.search), in place of
quantize / channel_prune / shift. From here on the run reports accuracy on the evaluation
part of the labelled images only (the search never saw it)."""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from edgecnn.data.images import iter_batches
from edgecnn.errors import UserError
from edgecnn.fileio import write_text_atomic
from edgecnn.models.weights import cache_dir
from edgecnn.pipeline.load import subset
from edgecnn.pipeline.stages.transform import finish_transform
from edgecnn.pipeline.state import RunState, StageOutcome
from edgecnn.recipe import Stage as RecipeStage
from edgecnn.search.budget import Budget, Heartbeat

HEARTBEAT_SECONDS = 30.0  # the longest silence of a running search (piped output included)


def _use_evaluation_part(state: RunState, items: list) -> None:
    """The evaluation set (and its arrays) become the evaluation part of the split."""
    keep = {str(p) for p, _ in items}
    state.eval_set = subset(state.eval_set, [i for i, (p, _) in enumerate(state.eval_set.items) if str(p) in keep])
    xs, ys = [], []
    for x, y in iter_batches(state.eval_set, state.preprocess, state.recipe.data.batch_size):
        xs.append(x)
        ys.append(y)
    state.eval_arrays, state.eval_labels, state.eval_stream = np.concatenate(xs), np.concatenate(ys), None
    state.data_info["eval_images"] = len(state.eval_set)
    state.data_info["eval_part"] = "evaluation part of the search split (the search saw only the other part)"


class SearchStage:
    kind = "search"
    own_progress = True

    def run(self, state: RunState, spec: RecipeStage) -> StageOutcome:
        from edgecnn.search import pareto
        from edgecnn.search.stage import run_search_stage

        if state.eval_set is None or not state.eval_set.labelled:
            raise UserError("stage search needs labelled images to measure the top-1 drop: pass --data DIR (class sub-folders)")
        train = state.recipe.data.train
        budget = Budget(spec.config.search_time)
        console = state.console
        heartbeat = Heartbeat(budget, lambda line: console.screen.print(f"[dim]{line}[/]"), every=HEARTBEAT_SECONDS)

        def log(*objects, **kwargs):
            console.print(*objects, **kwargs)
            heartbeat.printed()

        with tempfile.TemporaryDirectory(prefix="edgecnn-search-") as tmp, (heartbeat if console.progress else nullcontext()):
            result = run_search_stage(state.module, state.preprocess, state.eval_set, spec.config, Path(tmp), train=train,
                                      cache_root=cache_dir() / "teacher-logits", log=log, budget=budget)
        state.notes.extend(result.notes)
        _use_evaluation_part(state, result.evaluation)
        front = result.summary.get("front_search_part")  # the size objective has no latency front
        if front is not None:
            write_text_atomic(state.work / "search.svg", pareto.svg(front["points"], "search: top-1 (search part) vs measured latency"))
            result.summary["plot"] = "search.svg"
        return finish_transform(state, spec.name, result.model, result.summary, result.layers)
