"""``retinaface-bench``: latency and throughput of every artifact of an export folder."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from retinaface_export.atomic import atomic_write_bytes
from retinaface_export.bench import BenchRow, bench_export, rows_to_dicts
from retinaface_export.cli.common import configure_logging, handle_errors, stderr
from retinaface_export.images import read_image
from retinaface_export.preprocess import synthetic_photos

COMMAND = "retinaface-bench"


def machine() -> str:
    """CPU model and core count, for the record."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{model}, {os.cpu_count()} cores"


def table_markdown(rows: list[BenchRow], title: str) -> str:
    """The results as a Markdown table (for the README)."""
    lines = [
        title,
        "",
        "| artifact | backend | precision | input | size | net median ms | net p90 ms | fps | "
        "pre ms | post ms | e2e median ms | overhead (pre + post) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.artifact} | {r.backend} | {r.precision} | {r.input_format} | {r.size[0]}x{r.size[1]} | "
            f"{r.latency_ms_median:.1f} | {r.latency_ms_p90:.1f} | {r.fps:.1f} | "
            f"{r.preprocess_ms_median:.2f} | {r.postprocess_ms_median:.2f} | {r.e2e_ms_median:.1f} | "
            f"{r.overhead_pct:.1f}% |"
        )
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--runs", type=click.IntRange(min=3), default=30, show_default=True, help="Timed runs.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs first.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="Threads for every runtime.")
@click.option(
    "--image",
    type=click.Path(path_type=Path),
    default=None,
    help="Photo for the end-to-end figures (default: a synthetic 1280x720 photo).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write rows as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw latency by size for each backend/precision into a PNG.",
)
@click.option(
    "--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the table as Markdown."
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="retinaface-export", prog_name=COMMAND)
@handle_errors(COMMAND)
def main(export_dir, runs, warmup, threads, image, json_path, plot_path, markdown_path, quiet) -> None:
    """Time every artifact in EXPORT_DIR and PyTorch eager: medians and p90, network only and end to end."""
    configure_logging(quiet)
    photo = read_image(image) if image else synthetic_photos(1, 720, 1280, seed=1)[0]
    with stderr.status("benchmarking", spinner="dots") as status:
        rows = bench_export(
            export_dir, photo, runs, warmup, threads, on_step=lambda name: status.update(f"benchmarking {name}")
        )
    title = (
        f"{export_dir} — {machine()}, {threads} threads, {runs} runs, "
        f"{datetime.now(UTC):%Y-%m-%d}, image {image or 'synthetic 1280x720'}"
    )
    if json_path:
        body = {"title": title, "machine": machine(), "threads": threads, "runs": runs, "rows": rows_to_dicts(rows)}
        atomic_write_bytes(json_path, (json.dumps(body, indent=1) + "\n").encode())
    if plot_path:
        import cv2

        from retinaface_export.bench_plot import plot_latency

        ok, png = cv2.imencode(".png", plot_latency(rows, title))
        if ok:
            atomic_write_bytes(plot_path, png.tobytes())
    if markdown_path:
        atomic_write_bytes(markdown_path, table_markdown(rows, f"**{title}**").encode())
    if not quiet:
        table = Table(title=title)
        for column in (
            "artifact",
            "backend",
            "prec",
            "input",
            "size",
            "net ms",
            "p90",
            "fps",
            "pre ms",
            "post ms",
            "e2e ms",
            "overhead",
        ):
            table.add_column(column)
        for r in rows:
            table.add_row(
                r.artifact,
                r.backend,
                r.precision,
                r.input_format,
                f"{r.size[0]}",
                f"{r.latency_ms_median:.1f}",
                f"{r.latency_ms_p90:.1f}",
                f"{r.fps:.1f}",
                f"{r.preprocess_ms_median:.2f}",
                f"{r.postprocess_ms_median:.2f}",
                f"{r.e2e_ms_median:.1f}",
                f"{r.overhead_pct:.1f}%",
            )
        Console(width=180).print(table)
