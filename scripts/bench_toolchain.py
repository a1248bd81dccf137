"""Time the whole export + convert matrix three ways, each in a fresh process, one after the other.

The matrix: both backbones, five sizes, TorchScript, ONNX, onnxsim, OpenVINO FP32 and FP16 (50 artifacts).

- ``baseline``: the straightforward sequential script of the issue: per backbone and size, trace
  (``torch.jit.trace`` as it comes), ``torch.onnx.export``, ``onnxsim.simplify``, ``openvino.convert_model``
  and ``save_model`` in FP32 and FP16. Nothing is verified.
- ``toolchain``: what ``retinaface-export`` + ``retinaface-convert --to onnxsim`` + ``retinaface-convert
  --to openvino --precision fp32 fp16`` run (the library calls, in one process), every artifact verified.
- ``build-only``: the same through the library's public switch that skips verification
  (``ExportOptions(verify=False)``, ``ConvertOptions(verify=False)``), to show what the building costs on
  its own (measurement only: the commands always verify). Nothing private is patched; a library without
  that switch makes this mode fail at once, naming what is missing, rather than measure something else.

Prints a Markdown table with seconds and ratios to the baseline; ``--markdown`` also writes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet0.25_Final.pth"
SIZES = (320, 416, 512, 608, 640)
MODES = ("baseline", "toolchain", "build-only")


def _checkpoints():
    from retinaface_export.checkpoint import load_checkpoint
    from retinaface_export.synthetic import synthetic_checkpoint
    from retinaface_export.variants import get_variant

    return {"mobilenet0.25": load_checkpoint(WEIGHTS), "resnet50": synthetic_checkpoint(get_variant("resnet50"))}


def _baseline(out: Path) -> None:
    import onnx
    import onnxsim
    import openvino as ov
    import torch

    for name, checkpoint in _checkpoints().items():
        model = checkpoint.model.eval()
        for size in SIZES:
            stem = out / f"{name}_{size}"
            example = torch.zeros(1, 3, size, size)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.jit.save(torch.jit.trace(model, (example,)), f"{stem}.pt")
                torch.onnx.export(
                    model,
                    (example,),
                    f"{stem}.onnx",
                    dynamo=False,
                    opset_version=17,
                    input_names=["data"],
                    output_names=["face_rpn_bbox_pred", "face_rpn_cls_prob", "face_rpn_landmark_pred"],
                )
            simplified, _ = onnxsim.simplify(onnx.load(f"{stem}.onnx"))
            onnx.save(simplified, f"{stem}.sim.onnx")
            ir = ov.convert_model(f"{stem}.onnx")
            ov.save_model(ir, f"{stem}_fp32.xml", compress_to_fp16=False)
            ov.save_model(ir, f"{stem}_fp16.xml", compress_to_fp16=True)


VERIFY_SWITCH = "verify"


def missing_verify_switch() -> list[str]:
    """The option classes that lack the public ``verify`` field the build-only mode needs."""
    from retinaface_export.pipeline.convert import ConvertOptions
    from retinaface_export.pipeline.export import ExportOptions

    return [cls.__name__ for cls in (ExportOptions, ConvertOptions) if VERIFY_SWITCH not in _field_names(cls)]


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _toolchain(out: Path, workers: int, verify: bool) -> None:
    from retinaface_export.pipeline.convert import ConvertOptions, convert_export
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
    from retinaface_export.sizes import InputSize

    switch = {} if verify else {VERIFY_SWITCH: False}  # the public option; checked by missing_verify_switch()
    sizes = tuple(InputSize(s, s) for s in SIZES)
    for name, checkpoint in _checkpoints().items():
        folder = out / name
        export_checkpoint(checkpoint, ExportOptions(sizes=sizes, workers=workers, **switch), folder)
        convert_export(folder, ConvertOptions("onnxsim", workers=workers, **switch))
        convert_export(folder, ConvertOptions("openvino", ("fp32", "fp16"), workers=workers, **switch))


def _run_one(mode: str, workers: int) -> float:
    """Run ``mode`` here (imports done first, not timed); seconds from loading the checkpoints to the end."""
    import onnx  # noqa: F401  (imports are not the toolchain's work)
    import onnxsim  # noqa: F401
    import openvino  # noqa: F401
    import torch

    import retinaface_export.pipeline.convert
    import retinaface_export.pipeline.export  # noqa: F401

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if mode == "baseline":
            _baseline(Path(tmp))
        else:
            _toolchain(Path(tmp), workers, verify=mode != "build-only")
        return time.perf_counter() - start


def main() -> int:
    """Run each mode in its own process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, help="run one mode here and print its seconds as JSON")
    parser.add_argument("--jobs", type=int, default=1, help="worker threads of the toolchain")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="the runs to time")
    args = parser.parse_args()
    modes = [args.mode] if args.mode else args.modes
    missing = missing_verify_switch() if "build-only" in modes else []
    if missing:
        print(
            f"build-only needs the library's public switch to skip verification, a `{VERIFY_SWITCH}` field on "
            f"{' and '.join(missing)}, which this version lacks; run --modes baseline toolchain without it",
            file=sys.stderr,
        )
        return 2
    if args.mode:
        print(json.dumps({"mode": args.mode, "seconds": _run_one(args.mode, args.jobs)}))
        return 0
    if "baseline" not in modes:
        parser.error("--modes needs baseline (the ratios are to it)")
    seconds = {}
    for mode in modes:
        command = [sys.executable, __file__, "--mode", mode, "--jobs", str(args.jobs)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{mode} failed:\n{done.stderr}", file=sys.stderr)
            return 1
        seconds[mode] = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
        print(f"{mode}: {seconds[mode]:.1f} s", file=sys.stderr)
    from retinaface_export.bench.system import machine

    rows = [
        f"**Export + convert matrix — {machine()}, {date.today().isoformat()}, `--jobs {args.jobs}`**",
        "",
        "| run (both backbones × 5 sizes × 5 kinds = 50 artifacts) | seconds | vs baseline |",
        "|---|---:|---:|",
    ]
    labels = {
        "baseline": "straightforward script (trace, export, onnxsim, convert per size; unverified)",
        "toolchain": "retinaface-export + retinaface-convert (every artifact verified)",
        "build-only": "the same, verification switched off (measurement only)",
    }
    for mode in modes:
        rows.append(f"| {labels[mode]} | {seconds[mode]:.1f} | {seconds[mode] / seconds['baseline']:.2f}× |")
    table = "\n".join(rows) + "\n"
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
