"""retinaface-bench: one row per artifact plus eager, sane figures, JSON and Markdown written."""

import json

from click.testing import CliRunner

from conftest import CROWD_PHOTO, require
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.bench import main
from retinaface_export.convert import ConvertOptions, convert_export
from retinaface_export.export import ExportOptions, export_checkpoint
from retinaface_export.sizes import InputSize


def test_bench_reports_every_backend(tmp_path, real_weights):
    export_checkpoint(load_checkpoint(real_weights), ExportOptions(sizes=(InputSize(320, 320),)), tmp_path)
    convert_export(tmp_path, ConvertOptions("openvino", input_format="u8-nhwc"))
    result = CliRunner().invoke(
        main,
        [
            str(tmp_path),
            "--runs",
            "3",
            "--warmup",
            "1",
            "--image",
            str(require(CROWD_PHOTO)),
            "--json",
            str(tmp_path / "b.json"),
            "--markdown",
            str(tmp_path / "b.md"),
            "--plot",
            str(tmp_path / "b.png"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"torch-eager", "torchscript", "onnxruntime", "openvino"}
    for row in rows:
        assert row["size"] == [320, 320]
        assert 0 < row["latency_ms_median"] <= row["latency_ms_p90"]
        assert row["fps"] > 0 and row["e2e_ms_median"] > 0
        assert row["preprocess_ms_median"] > 0 and row["postprocess_ms_median"] > 0
        assert row["overhead_pct"] > 0
    assert next(r for r in rows if r["backend"] == "openvino")["input_format"] == "u8-nhwc"
    assert (tmp_path / "b.md").read_text().count("\n| ") == len(rows) + 1
    import cv2

    plot = cv2.imread(str(tmp_path / "b.png"))
    assert plot is not None and plot.shape == (560, 900, 3) and (plot < 250).any()
