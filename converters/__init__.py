"""One package per artifact format, each exporting ``FORMAT`` (a ``retinaface_export.format_api.ArtifactFormat``).

Installed as ``retinaface_export.converters``; ``retinaface_export.formats.FORMATS`` lists them. A format's
runtime library (ONNX Runtime, OpenVINO, ...) is imported in its own package only (``make lint`` checks it).
"""
