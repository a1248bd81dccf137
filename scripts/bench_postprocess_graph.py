"""Time raw outputs + numpy post-processing against an ``nms`` artifact (issue 13), in turns.

mobilenet0.25 at a fixed size on the letterboxed crowd photo, ONNX Runtime (optimisation on) and
OpenVINO (CPU, f32, latency hint): per run, the raw model followed by the Detector's numpy decode + NMS
(priors cached, as the Detector has them), then the ``nms`` artifact, so both see the same machine load.
Pre-processing is the same for both and not timed. Prints medians in milliseconds and the faces found.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import onnx

REPO = Path(__file__).resolve().parents[1]

from retinaface_export.checkpoint import load_checkpoint  # noqa: E402
from retinaface_export.converters.onnx.postprocess import add_postprocess  # noqa: E402
from retinaface_export.converters.onnx.runtime import session  # noqa: E402
from retinaface_export.converters.openvino.postprocess import match_reference_nms  # noqa: E402
from retinaface_export.converters.openvino.runtime import compile_model, compiled_runner, openvino_module  # noqa: E402
from retinaface_export.detection.letterbox import Letterbox  # noqa: E402
from retinaface_export.detection.postprocess import DetectionConfig, postprocess  # noqa: E402
from retinaface_export.detection.priors import prior_boxes  # noqa: E402
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint  # noqa: E402
from retinaface_export.postprocess.settings import NmsSettings  # noqa: E402
from retinaface_export.preprocess import to_network_input  # noqa: E402
from retinaface_export.sizes import InputSize  # noqa: E402


def _onnxruntime(model: onnx.ModelProto, threads: int | None):
    # Several sessions take turns on the same cores: a session's threads spinning after its run would
    # slow down the next one (measured: the second of two sessions run in turns looked 50% slower).
    opened = session(
        model.SerializeToString(), optimize=True, threads=threads, config={"session.intra_op.allow_spinning": "0"}
    )
    return lambda data: opened.run(None, {"data": data})


def _openvino(model: onnx.ModelProto, folder: Path, name: str, threads: int | None):
    onnx.save(model, folder / f"{name}.onnx")
    converted = openvino_module().convert_model(folder / f"{name}.onnx")
    match_reference_nms(converted)
    return compiled_runner(compile_model(converted, threads))


def main() -> int:
    """Export, build the four models per threshold, time them in turns, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=REPO.parent / "shared/weights/mobilenet0.25_Final.pth")
    parser.add_argument("--image", type=Path, default=REPO.parent / "shared/images/crowd_selfie.jpg")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.02])
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's)")
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.weights)
    anchors = checkpoint.variant.anchors
    size = InputSize(args.size, args.size)
    image = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    box = Letterbox.fit(image.shape[0], image.shape[1], size.height, size.width)
    data = to_network_input(box.apply(image))
    priors = prior_boxes(anchors, size.height, size.width)
    scale = (size.width, size.height)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = export_checkpoint(checkpoint, ExportOptions(sizes=(size,), formats=("onnx",)), folder / "export")
        raw = onnx.load(folder / "export" / result.added[0].path)
        print("| runtime | threshold | faces | net ms | numpy post ms | net + post ms | nms artifact ms | saved |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for threshold in args.thresholds:
            settings = NmsSettings(score_threshold=threshold)
            config = DetectionConfig(score_threshold=threshold, nms_threshold=settings.nms_iou)
            nms_model = add_postprocess(raw, anchors, "nms", settings, size)
            runners = {
                "onnxruntime": (_onnxruntime(raw, args.threads), _onnxruntime(nms_model, args.threads)),
                "openvino": (
                    _openvino(raw, folder, "raw", args.threads),
                    _openvino(nms_model, folder, f"nms{threshold}", args.threads),
                ),
            }
            times: dict[str, dict[str, list[float]]] = {name: {"net": [], "post": [], "nms": []} for name in runners}
            faces: dict[str, tuple[int, int]] = {}
            for run_index in range(args.runs + 3):  # 3 warm-up runs
                for name, (raw_run, nms_run) in runners.items():
                    start = time.perf_counter()
                    loc, conf, pre = raw_run(data)
                    mid = time.perf_counter()
                    found = postprocess(loc[0], conf[0], pre[0], priors, anchors.variance, scale, config)
                    end = time.perf_counter()
                    _, num = nms_run(data)
                    done = time.perf_counter()
                    faces[name] = (len(found[0]), int(num[0]))
                    if run_index >= 3:
                        times[name]["net"].append(mid - start)
                        times[name]["post"].append(end - mid)
                        times[name]["nms"].append(done - end)
            for name, series in times.items():
                net, post, nms = (1e3 * statistics.median(series[k]) for k in ("net", "post", "nms"))
                sums = [1e3 * (a + b) for a, b in zip(series["net"], series["post"], strict=True)]
                total = statistics.median(sums)
                numpy_faces, graph_faces = faces[name]
                assert numpy_faces == graph_faces, (name, threshold, faces[name])
                print(
                    f"| {name} | {threshold} | {numpy_faces} | {net:.1f} | {post:.2f} | {total:.1f} | {nms:.1f} "
                    f"| {total - nms:+.1f} ms |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
