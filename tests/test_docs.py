"""The documentation still works: every command in README.md and docs/*.md parses, links lead somewhere, targets exist.

Commands are the lines of fenced code blocks that start with a ``retinaface-*`` console script (any
``.venv/bin/`` or ``$B/`` prefix) or with ``python -m retinaface_export``. In shell blocks (bash, sh,
shell, console) each command goes through the command's own click parser, as the console script would
parse it (from the repository root, where the documented relative paths start): an unknown command or
option, a value outside a choice (``--to openvinoo``), a bad ``--size`` or a missing required option
fails. Synopsis lines (``text`` blocks: ``retinaface-convert EXPORT_DIR --to {onnxsim,...} [...]``) are
checked for their flags, and for the values listed as ``{a,b}`` or ``a|b`` after a choice option.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from retinaface_export.cli.entry import COMMANDS

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
README = REPO / "README.md"
DOC_FILES = (README, *sorted((REPO / "docs").glob("*.md")))
MAX_README_LINES = 300
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)")
COMMAND_NAME = re.compile(r"^retinaface-[a-z]+$")
SEPARATORS = {"|", "||", "&&", ";", "&"}
REDIRECTS = {">", ">>", "<", "2>", "&>"}
# the main job the README shows (issue 20): (command, words that must follow it on one line)
MAIN_JOB = (
    ("retinaface-export", "--weights ../shared/weights/mobilenet0.25_Final.pth --size 640 512 320 --output-dir out"),
    ("retinaface-convert", "out --to openvino"),
    ("retinaface-parity", "out"),
)


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language tag, the line number of its first line and its lines."""

    path: Path
    lang: str
    start: int
    lines: tuple[str, ...]


@dataclass(frozen=True)
class DocCommand:
    """One documented command line: ``argv[0]`` is the command (``retinaface-convert``)."""

    path: Path
    line: int
    argv: tuple[str, ...]
    synopsis: bool = False

    def __str__(self) -> str:
        words = " ".join(self.argv) if self.synopsis else shlex.join(self.argv)
        return f"{self.path.relative_to(REPO)}:{self.line}: {words}"


def code_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced code blocks of a Markdown file."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        index += 1
        if not match:
            continue
        fence, lang, start, body = match.group(1), match.group(2).lower(), index + 1, []
        while index < len(lines) and not lines[index].startswith(fence):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        blocks.append(Block(path, lang, start, tuple(body)))
    return blocks


def logical_lines(block: Block, continuation: str) -> Iterator[tuple[int, str]]:
    """(line number, text) with continuations joined: a trailing backslash (shell) or an indented next line."""
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(block.lines):
        number = block.start + offset
        if continuation == "indent" and pending and raw[:1].isspace() and raw.strip():
            pending = (pending[0], f"{pending[1]} {raw.strip()}")
            continue
        if continuation == "backslash" and pending and pending[1].endswith("\\"):
            pending = (pending[0], f"{pending[1][:-1]} {raw.strip()}")
            continue
        if pending:
            yield pending
        pending = (number, raw.strip())
    if pending:
        yield pending


def shell_words(text: str) -> list[list[str]]:
    """The simple commands of a shell line (split at pipes, ``&&``, ``;``), comments and redirections dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    skip = False
    for token in lexer:
        if skip:
            skip = False
        elif token in SEPARATORS:
            commands.append([])
        elif token in REDIRECTS:
            skip = True
        else:
            commands[-1].append(token)
    return [words for words in commands if words]


def as_command(words: list[str]) -> tuple[str, ...] | None:
    """``(retinaface-X, args...)`` when ``words`` runs one of our commands, else None."""
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):  # VAR=value before the command
        words = words[1:]
    if not words:
        return None
    program = words[0].rsplit("/", 1)[-1]
    if program.startswith("retinaface-"):
        return (program, *words[1:])
    if re.match(r"^python(3(\.\d+)?)?$", program) and words[1:3] == ["-m", "retinaface_export"]:
        rest = words[3:]
        if rest and not rest[0].startswith("-"):
            return (f"retinaface-{rest[0]}", *rest[1:])
        return ("python -m retinaface_export", *rest)
    return None


def doc_commands(paths: tuple[Path, ...] = DOC_FILES) -> list[DocCommand]:
    """Every command line of the fenced code blocks of ``paths``."""
    found = []
    for path in paths:
        for block in code_blocks(path):
            if block.lang in SHELL_LANGS:
                for number, text in logical_lines(block, "backslash"):
                    for words in shell_words(text):
                        argv = as_command(words)
                        if argv:
                            found.append(DocCommand(path, number, argv))
            elif block.lang in ("", "text"):
                for number, text in logical_lines(block, "indent"):
                    words = text.split()
                    if words and COMMAND_NAME.match(words[0]):
                        found.append(DocCommand(path, number, tuple(words), synopsis=True))
    return found


def load_command(name: str) -> click.Command:
    """The click command of a console script (``retinaface-convert``)."""
    assert name in COMMANDS, f"{name} is not a command; the commands are {', '.join(COMMANDS)}"
    return importlib.import_module(COMMANDS[name]).main


def resolve(name: str, args: list[str]) -> tuple[click.Command, str, list[str]]:
    """The (sub)command that ``args`` reach (``retinaface-golden record ...``), its name and its own args."""
    command = load_command(name)
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        assert args[0] in command.commands, f"{name} has no subcommand {args[0]!r} (it has {sorted(command.commands)})"
        name, command, args = f"{name} {args[0]}", command.commands[args[0]], args[1:]
    return command, name, args


def option_names(command: click.Command) -> set[str]:
    """Every flag the command accepts, ``--help`` included."""
    names = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    help_option = command.get_help_option(click.Context(command))
    return names | set(help_option.opts if help_option else ())


def check_command(doc: DocCommand) -> None:
    """Parse a shell command line with the command's own click parser; AssertionError says what is wrong."""
    if doc.argv[0] == "python -m retinaface_export":
        assert set(doc.argv[1:]) <= {"--help", "-h"}, f"{doc}: python -m retinaface_export takes a command"
        return
    command, name, args = resolve(doc.argv[0], list(doc.argv[1:]))
    try:
        command.make_context(name, args)
    except click.exceptions.Exit:  # --help, --version
        pass
    except click.UsageError as exc:
        raise AssertionError(f"{doc}\n  {name} refuses it: {exc.format_message()}") from None


def check_synopsis(doc: DocCommand) -> None:
    """The flags of a synopsis line exist, and listed values of a choice option are among its choices."""
    command, name, rest = resolve(doc.argv[0], list(doc.argv[1:]))
    text = " ".join(rest)
    accepted = option_names(command)
    flags = re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text)
    unknown = sorted({flag for flag in flags if flag not in accepted})
    assert not unknown, f"{doc}\n  {name} has no option {', '.join(unknown)}; it has {sorted(accepted)}"
    params = {opt: param for param in command.params for opt in param.opts}
    for flag, values in re.findall(r"(--[\w-]+)\s+[\[(]*(\{[^}]*\}|[\w.-]+(?:\|[\w.-]+)+)", text):
        param = params.get(flag)
        if param is not None and isinstance(param.type, click.Choice):
            listed = set(re.split(r"[|,]", values.strip("{}")))
            outside = sorted(listed - set(param.type.choices))
            assert not outside, f"{doc}\n  {name} {flag} accepts {list(param.type.choices)}, not {outside}"


def needs_missing_shared(doc: DocCommand) -> bool:
    return not SHARED.exists() and any("../shared" in word for word in doc.argv)


COMMAND_LINES = doc_commands()
SHELL_LINES = [doc for doc in COMMAND_LINES if not doc.synopsis]
SYNOPSES = [doc for doc in COMMAND_LINES if doc.synopsis]


@pytest.fixture
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the documented relative paths (out/, ../shared/...) start here


def test_the_commands_are_found():
    assert len(DOC_FILES) >= 6, DOC_FILES
    documented = {doc.argv[0] for doc in COMMAND_LINES}
    assert set(COMMANDS) <= documented, f"commands without a documented example: {set(COMMANDS) - documented}"
    assert any(doc.argv[0] == "python -m retinaface_export" or doc.argv[0] in COMMANDS for doc in SHELL_LINES)
    readme = [" ".join(doc.argv) for doc in SHELL_LINES if doc.path == README]
    for name, tail in MAIN_JOB:
        assert any(line.startswith(f"{name} {tail}") for line in readme), f"the README no longer shows {name} {tail}"


@pytest.mark.parametrize("doc", SHELL_LINES, ids=str)
def test_documented_command_parses(doc, at_repo):
    if needs_missing_shared(doc):
        check_synopsis(doc)  # flags at least; the paths need ../shared
        pytest.skip(f"{SHARED} is absent")
    check_command(doc)


@pytest.mark.parametrize("doc", SYNOPSES, ids=str)
def test_documented_synopsis_flags_exist(doc):
    check_synopsis(doc)


@pytest.mark.parametrize(
    "line",
    [
        "retinaface-convert out --to openvinoo",  # a choice that does not exist
        "retinaface-convert out --to openvino --precisoin fp16",  # a typo'd option
        "retinaface-export --size 650 --output-dir out",  # not a multiple of 32
        "retinaface-eval --predictions preds/",  # the required --ground-truth missing
        "retinaface-detct image.jpg --model m.onnx",  # no such command
        "retinaface-golden replay --output-dir g",  # no such subcommand
        "python -m retinaface_export bench out --mdoe latency",
    ],
)
def test_a_broken_command_line_fails(line, tmp_path, at_repo):
    doc_file = tmp_path / "broken.md"
    doc_file.write_text(f"```bash\n.venv/bin/{line}\n```\n")
    (doc,) = doc_commands((doc_file,))
    with pytest.raises(AssertionError):
        check_command(DocCommand(REPO / "README.md", doc.line, doc.argv))


@pytest.mark.parametrize(
    "line",
    [
        "retinaface-convert EXPORT_DIR --to {onnxsim,tflite} [--precision fp32]",
        "retinaface-export [--backbone mobilenet0.25|resnet18] [--size SIZE...]",
        "retinaface-detect IMAGE... [--treshold 0.5]",
    ],
)
def test_a_broken_synopsis_fails(line, tmp_path):
    doc_file = tmp_path / "broken.md"
    doc_file.write_text(f"```text\n{line}\n```\n")
    (doc,) = doc_commands((doc_file,))
    with pytest.raises(AssertionError):
        check_synopsis(DocCommand(REPO / "README.md", doc.line, doc.argv, synopsis=True))


def test_readme_is_short_and_opens_with_install_and_test():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES, f"README.md has {len(text.splitlines())} lines"
    first = code_blocks(README)[0]
    commands = [line.split("#")[0].strip() for line in first.lines if line.split("#")[0].strip()]
    assert commands[:2] == ["make install", "make test"], first.lines
    assert "make test-fast" in text and "3 minutes" in text, "the README names the fast tier and its budget"
    assert "lint-imports" in text, "the README says make lint checks the import layers"


def test_the_bench_tables_live_in_docs_performance():
    performance = REPO / "docs" / "performance.md"
    text = performance.read_text()
    assert text.count("<!-- bench:start -->") == 1 and text.count("<!-- bench:end -->") == 1
    assert text.index("<!-- bench:start -->") < text.index("<!-- bench:end -->")
    assert "<!-- bench:" not in README.read_text()
    spec = importlib.util.spec_from_file_location("readme_bench", REPO / "scripts" / "readme_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert performance == module.TARGET


def test_readme_bench_replaces_the_marked_section(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("readme_bench", REPO / "scripts" / "readme_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    target, table = tmp_path / "performance.md", tmp_path / "t.md"
    target.write_text("head\n<!-- bench:start -->\nold\n<!-- bench:end -->\ntail\n")
    table.write_text("| new |\n")
    monkeypatch.setattr(sys, "argv", ["readme_bench.py", str(table), "--readme", str(target)])
    assert module.main() == 0
    assert target.read_text() == "head\n<!-- bench:start -->\n| new |\n<!-- bench:end -->\ntail\n"


def without_fences(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^(`{3,}).*?^\1\s*$", "", text, flags=re.S | re.M)


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file (``## `retinaface-bench` `` -> ``retinaface-bench``)."""
    anchors, seen = set(), {}
    for line in without_fences(path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "").lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path: Path) -> list[str]:
    """The targets of the Markdown links outside code blocks that are not URLs (``docs/x.md#y``, ``#y``)."""
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_fences(path.read_text()))
    return [target for target in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http:, mailto:


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_to_files_and_headings(path):
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target} (no {destination})")
        elif anchor and destination.suffix == ".md" and anchor not in heading_anchors(destination):
            broken.append(f"{target} (no heading #{anchor} in {destination.name})")
    assert not broken, f"{path.relative_to(REPO)}: broken links: {broken}"


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9][\w.-]*)\s*:(?!=)", text, flags=re.M))


def named_make_targets(path: Path) -> set[str]:
    """Targets named as ``make X`` in inline code or at the start of a shell line."""
    text = path.read_text()
    named = set(re.findall(r"`make ([\w.-]+)", text))
    for block in code_blocks(path):
        if block.lang in SHELL_LANGS:
            named |= {m for line in block.lines for m in re.findall(r"^\s*make ([\w.-]+)", line)}
    return named


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_make_targets_named_exist(path):
    missing = named_make_targets(path) - makefile_targets()
    assert not missing, f"{path.relative_to(REPO)} names make targets the Makefile lacks: {sorted(missing)}"


def test_a_missing_make_target_or_link_is_caught(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Run `make tset` and read [this](nowhere.md) or [that](#nothing).\n\n# Title\n")
    assert named_make_targets(doc) - makefile_targets() == {"tset"}
    assert relative_links(doc) == ["nowhere.md", "#nothing"]
    assert "nothing" not in heading_anchors(doc) and "title" in heading_anchors(doc)
