"""The transcription of the reference WIDER FACE evaluator, kept once in ``scripts/widerface_reference.py``
(``scripts/bench_eval.py`` times it, and scripts do not import from tests); loaded from there by path."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "widerface_reference.py"
_spec = importlib.util.spec_from_file_location("widerface_reference", _PATH)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

reference_evaluate = _module.reference_evaluate
bbox_overlaps = _module.bbox_overlaps
vectorised_overlaps = _module.vectorised_overlaps
read_pred_file = _module.read_pred_file
evaluation = _module.evaluation
