"""``retinaface-parity``: every artifact of an export folder against the golden PyTorch outputs."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import click
from rich.table import Table

from retinaface_export.cli.common import (
    MultiValueCommand,
    configure_logging,
    handle_errors,
    json_option,
    json_to_stdout,
    not_an_option,
    reported_progress,
    titled_table,
    warn_input_notices,
    wide_console,
    write_json,
)
from retinaface_export.contract import OUTPUT_NAMES
from retinaface_export.golden import find_golden_sets
from retinaface_export.parity import ParityReport, packaged_golden_root, run_parity
from retinaface_export.safety.safe_paths import refuse_outputs_over_inputs

COMMAND = "retinaface-parity"
SHORT = {"face_rpn_bbox_pred": "bbox", "face_rpn_cls_prob": "cls", "face_rpn_landmark_pred": "landmarks"}


def _table(report: ParityReport) -> Table:
    table = titled_table(f"parity of {report.export_dir} against {report.golden}")
    for column in ("artifact", "precision", "input", *SHORT.values(), "detections", ""):
        table.add_column(column)
    for a in report.artifacts:
        cells = []
        for check in a.outputs or []:
            if a.limit == "detections only":
                cells.append("-")
            else:
                cells.append(f"{'✓' if check.passed else '✗'} {check.max_abs:.1e}")
        cells += [""] * (len(OUTPUT_NAMES) - len(cells))
        d = a.detection
        detection = f"{'✓' if d.passed else '✗'} F1 {d.f1:.3f} ({d.faces} faces)" if d and a.cases else "-"
        table.add_row(a.path, a.precision, a.input_format, *cells, detection, "✓" if a.passed else "✗ FAIL")
    return table


def _junit(report: ParityReport) -> bytes:
    suite = ElementTree.Element("testsuite", name="retinaface-parity", tests=str(len(report.artifacts) + 1))
    failures = 0
    for a in report.artifacts:
        case = ElementTree.SubElement(suite, "testcase", classname=f"parity.{a.format}.{a.precision}", name=a.path)
        if not a.passed:
            failures += 1
            ElementTree.SubElement(case, "failure", message="; ".join(a.failures)).text = "\n".join(a.failures)
    run = ElementTree.SubElement(suite, "testcase", classname="parity", name="run")
    if report.failures or not report.artifacts:
        failures += 1
        ElementTree.SubElement(run, "failure", message="; ".join(report.failures) or "nothing compared")
    suite.set("failures", str(failures))
    return ElementTree.tostring(suite, encoding="utf-8", xml_declaration=True)


@click.command(
    cls=MultiValueCommand,
    multi_value={"--images": not_an_option},
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option(
    "--golden",
    type=click.Path(path_type=Path),
    default=None,
    help="A golden set, or a folder of them (the one for the export's checkpoint is used). "
    "Default: the golden sets installed with the package.",
)
@click.option(
    "--images",
    "image_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="DIR...",
    help="Folders with the golden sets' photos (found by sha256). Without them the photo cases are skipped "
    "and the seeded synthetic cases still run.",
)
@json_option("the report (schema: retinaface_export/parity.schema.json)")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML.")
@click.option("-q", "--quiet", is_flag=True, help="Only failures.")
@click.version_option(package_name="retinaface-export", prog_name=COMMAND)
@handle_errors(COMMAND)
def main(
    export_dir: Path,
    golden: Path | None,
    image_dirs: tuple[Path, ...],
    json_path: Path | None,
    junit_path: Path | None,
    quiet: bool,
) -> None:
    """Check every artifact in EXPORT_DIR/manifest.json against golden PyTorch outputs; exit 0 only if all pass.

    The golden sets installed with the package cover the checkpoints they were recorded from; their photo
    cases run when --images names a folder holding the photos (found by sha256), the seeded synthetic
    cases always run.

    Example: retinaface-parity out --images photos/ --json report.json
    """
    configure_logging(quiet)
    refuse_outputs_over_inputs(
        [("--json", json_path), ("--junit", junit_path)],
        [("EXPORT_DIR", export_dir), ("--golden", golden), *(("--images", folder) for folder in image_dirs)],
    )
    warn_input_notices(COMMAND, export_dir)
    with reported_progress(quiet):
        report = run_parity(export_dir, find_golden_sets(golden or packaged_golden_root()), list(image_dirs))
    to_stdout = json_to_stdout(json_path)
    if json_path:
        write_json(json_path, report.to_dict())
    if junit_path:
        from retinaface_export.safety.atomic import atomic_write_bytes

        atomic_write_bytes(junit_path, _junit(report))
    if not quiet:
        wide_console(stderr_output=to_stdout).print(_table(report))
    for failure in report.failures:
        click.echo(f"{COMMAND}: error: {export_dir}: {failure}", err=True)
    for artifact in report.artifacts:
        for failure in artifact.failures:
            click.echo(f"{COMMAND}: error: {artifact.path}: {failure}", err=True)
    passed = sum(a.passed for a in report.artifacts)
    skipped = sum(len(a.skipped) for a in report.artifacts)
    note = f" ({skipped} photo cases skipped: pass --images DIR to run them)" if skipped else ""
    click.echo(f"parity: {passed} passed, {len(report.artifacts) - passed} failed{note}", err=quiet or to_stdout)
    if not report.passed:
        raise click.exceptions.Exit(1)
