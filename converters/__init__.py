"""One module per artifact format, each implementing ``retinaface_export.format_api.ArtifactFormat``.

Installed as ``retinaface_export.converters``; ``retinaface_export.formats.FORMATS`` lists them. Each module
imports its heavy libraries (torch, onnx, ONNX Runtime, OpenVINO, NNCF) inside the functions that need them.
"""
