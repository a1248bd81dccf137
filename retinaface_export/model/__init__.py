"""RetinaFace in plain torch with biubug6's state-dict keys."""

from retinaface_export.model.retinaface import RetinaFace, build_model

__all__ = ["RetinaFace", "build_model"]
