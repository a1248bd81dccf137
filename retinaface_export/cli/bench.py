"""``retinaface-bench``: latency and throughput of every artifact of an export folder."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from retinaface_export.bench.run import (
    MAX_STREAMS,
    MAX_THREADS,
    MODES,
    BenchReport,
    BenchRow,
    BenchSettings,
    bench_export,
)
from retinaface_export.bench.stats import MAX_RUNS, MAX_SECONDS, MAX_WARMUP, MIN_RUNS, UNSTABLE_RULE, Budget
from retinaface_export.bench.system import machine
from retinaface_export.cli.common import (
    MultiValueCommand,
    configure_logging,
    handle_errors,
    not_an_option,
    stderr,
    titled_table,
    warn_input_notices,
    wide_console,
)
from retinaface_export.errors import UsageError
from retinaface_export.images import read_image
from retinaface_export.preprocess import synthetic_photos
from retinaface_export.safety.atomic import atomic_write_bytes
from retinaface_export.safety.safe_paths import refuse_outputs_over_inputs
from retinaface_export.sizes import parse_size

COMMAND = "retinaface-bench"
DEFAULT_SECONDS = 5.0

LATENCY_COLUMNS = (
    "artifact",
    "backend",
    "precision",
    "input",
    "size",
    "batch",
    "median ms",
    "mean ± std ms",
    "min ms",
    "p90 ms",
    "runs",
    "fps",
    "pre ms",
    "post ms",
    "e2e median ms",
    "overhead (pre + post)",
    "faces",
    "spread",
)
THROUGHPUT_COLUMNS = (
    "artifact",
    "backend",
    "precision",
    "input",
    "size",
    "batch",
    "streams",
    "fps ± std",
    "request median ms",
    "request p90 ms",
    "requests",
    "spread",
)


def _spread(row: BenchRow) -> str:
    return f"{'⚠ ' if row.unstable else ''}{100 * row.spread:.0f}%"


def _cells(row: BenchRow) -> list[str]:
    precision = row.precision + (f" (ran {row.executed})" if row.executed else "")
    head = [row.artifact, row.backend, precision, row.input_format, f"{row.size[0]}x{row.size[1]}", str(row.batch)]
    if row.mode == "latency":
        return [
            *head,
            f"{row.latency_ms_median:.1f}",
            f"{row.latency_ms_mean:.1f} ± {row.latency_ms_std:.1f}",
            f"{row.latency_ms_min:.1f}",
            f"{row.latency_ms_p90:.1f}",
            str(row.runs),
            f"{row.fps:.1f}",
            f"{row.preprocess_ms_median:.2f}",
            f"{row.postprocess_ms_median:.2f}",
            f"{row.e2e_ms_median:.1f}",
            f"{row.overhead_pct:.1f}%",
            str(row.faces),
            _spread(row),
        ]
    return [
        *head,
        str(row.streams),
        f"{row.fps:.1f} ± {row.fps_std or 0.0:.1f}",
        f"{row.latency_ms_median:.1f}",
        f"{row.latency_ms_p90:.1f}",
        str(row.runs),
        _spread(row),
    ]


def _tables(report: BenchReport) -> list[tuple[str, tuple[str, ...], list[BenchRow]]]:
    tables = []
    for mode, columns in (("latency", LATENCY_COLUMNS), ("throughput", THROUGHPUT_COLUMNS)):
        rows = [r for r in report.rows if r.mode == mode]
        if rows:
            tables.append((mode, columns, rows))
    return tables


def table_markdown(report: BenchReport, title: str) -> str:
    """The results as Markdown tables (for the README), one per mode, with the notes and the unstable rule."""
    lines = [title, ""]
    for mode, columns, rows in _tables(report):
        lines += [f"*{mode}*", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
        lines.append("")
    if any(row.unstable for row in report.rows):
        lines += [f"⚠ spread past the rule ({UNSTABLE_RULE}): compare with care.", ""]
    lines += [f"Note: {note}." for note in report.notes]
    return "\n".join(lines).rstrip() + "\n"


def _budget(seconds: float | None, runs: int | None, warmup: int) -> Budget:
    if seconds is not None and runs is not None:
        raise UsageError("give either --time or --runs, not both")
    if runs is not None:
        return Budget(seconds=None, runs=runs, warmup=warmup)
    return Budget(seconds=DEFAULT_SECONDS if seconds is None else seconds, warmup=warmup)


def _positive_int(token: str) -> bool:
    return token.isdigit()


@click.command(
    cls=MultiValueCommand,
    multi_value={"--mode": lambda t: t in MODES, "--size": not_an_option, "--batch": _positive_int},
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option(
    "--mode",
    "modes",
    type=click.Choice(MODES),
    multiple=True,
    help="latency (one request at a time, network and end to end) and/or throughput (the runtime's own "
    "parallel requests). Default: both.",
)
@click.option(
    "--time",
    "seconds",
    type=click.FloatRange(min=0, max=MAX_SECONDS, min_open=True),
    default=None,
    help=f"Seconds of timed runs per row (at least {MIN_RUNS} runs; at most {MAX_SECONDS:g} s) "
    f"[default: {DEFAULT_SECONDS:g}].",
)
@click.option(
    "--runs",
    type=click.IntRange(min=3, max=MAX_RUNS),
    default=None,
    help=f"A fixed count of timed runs instead of --time (at most {MAX_RUNS}).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0, max=MAX_WARMUP),
    default=1,
    show_default=True,
    help=f"Untimed runs first (at most {MAX_WARMUP}).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, MAX_THREADS),
    default=2,
    show_default=True,
    help=f"Threads for every runtime (at most {MAX_THREADS}).",
)
@click.option(
    "--batch",
    "batches",
    type=click.IntRange(min=1),
    multiple=True,
    help="Batches of throughput rows for models that take any batch (eager, dynamic artifacts); several after "
    "one flag. Fixed-size artifacts run at the batch they were exported with. Default: 1.",
)
@click.option(
    "--streams",
    type=click.IntRange(1, MAX_STREAMS),
    default=None,
    help="Requests in flight in throughput rows. Default: OpenVINO's THROUGHPUT hint decides; ONNX Runtime "
    "runs --threads requests of one thread each.",
)
@click.option(
    "--size",
    "sizes",
    multiple=True,
    help="Sizes to time (640 or HxW; several after one flag). Needed for a dynamic export; with fixed-size "
    "artifacts, only those sizes. Default: the sizes of the fixed-size artifacts.",
)
@click.option("--no-eager", is_flag=True, help="Do not time PyTorch eager (it needs the export's checkpoint).")
@click.option(
    "--image",
    type=click.Path(path_type=Path),
    default=None,
    help="Photo every row runs on (default: a synthetic 1280x720 photo).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw latency and throughput by size into a PNG (needs the plot extra: matplotlib).",
)
@click.option(
    "--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the tables as Markdown."
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="retinaface-export", prog_name=COMMAND)
@handle_errors(COMMAND)
def main(
    export_dir,
    modes,
    seconds,
    runs,
    warmup,
    threads,
    batches,
    streams,
    sizes,
    no_eager,
    image,
    json_path,
    plot_path,
    markdown_path,
    quiet,
) -> None:
    """Time every artifact in EXPORT_DIR and PyTorch eager: latency and throughput, mean, std, min, median, p90.

    Example: retinaface-bench out --mode latency throughput --time 5 --json bench.json --plot bench.png
    """
    configure_logging(quiet)
    refuse_outputs_over_inputs(
        [("--json", json_path), ("--plot", plot_path), ("--markdown", markdown_path)],
        [("EXPORT_DIR", export_dir), ("--image", image)],
    )
    warn_input_notices(COMMAND, export_dir)
    if plot_path:
        from retinaface_export.bench.plot import require_matplotlib

        require_matplotlib()  # before minutes of timing
    settings = BenchSettings(
        modes=tuple(dict.fromkeys(modes)) or MODES,
        budget=_budget(seconds, runs, warmup),
        threads=threads,
        batches=tuple(dict.fromkeys(batches)) or (1,),
        streams=streams,
        sizes=tuple(parse_size(s) for s in sizes),
        eager=not no_eager,
    )
    photo = read_image(image) if image else synthetic_photos(1, 720, 1280, seed=1)[0]
    with stderr.status("benchmarking", spinner="dots") as status:
        report = bench_export(export_dir, photo, settings, on_step=lambda name: status.update(f"benchmarking {name}"))
    title = (
        f"{export_dir} — {machine()}, {threads} threads, {settings.budget.describe()}, "
        f"{datetime.now(UTC):%Y-%m-%d}, image {image or 'synthetic 1280x720'}"
    )
    if json_path:
        body = {"title": title, **report.to_dict()}
        atomic_write_bytes(json_path, (json.dumps(body, indent=1) + "\n").encode())
    if plot_path:
        from retinaface_export.bench.plot import plot_png

        atomic_write_bytes(plot_path, plot_png(report.rows, title))
    if markdown_path:
        atomic_write_bytes(markdown_path, table_markdown(report, f"**{title}**").encode())
    if not quiet:
        console = wide_console()  # file names whole when not on a terminal
        for mode, columns, rows in _tables(report):
            table = titled_table(f"{mode} — {title}")
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*_cells(row))
            console.print(table)
        for note in report.notes:
            stderr.print(f"note: {note}")
