"""The compression pipeline: recipe -> model -> stages -> ONNX per target -> measurements -> report.

``state.py`` holds what a run knows (:class:`~edgecnn.pipeline.state.RunState`); ``stages/``
has one stage type per kind (transform, distill, export, compile, measure); ``load.py`` reads
the model and images; ``runner.py`` runs them in order and writes the report; ``output.py``
makes the output folder appear atomically; ``console.py`` shows progress and keeps log.txt.
"""

from edgecnn.pipeline.output import OutputFolder
from edgecnn.pipeline.runner import Pipeline, run_recipe
from edgecnn.recipe import PIPELINE_STAGES

__all__ = ["Pipeline", "OutputFolder", "run_recipe", "PIPELINE_STAGES"]
