"""Every ``edgecnn`` command shown in README.md, docs/ and the recipes' comments is checked.

* Every flag it names exists on that subcommand, and a value written for a flag with fixed
  choices (``--bits 7``, ``--backend ort|trt``) is one of them: synopses in tables included.
* A complete command in a code block is parsed by the CLI itself (types, ranges, choices);
  ``compress`` commands also run with ``--dry-run``, which loads the model, resolves the recipe
  and validates every stage, and ``edgecnn models`` runs for real.
* A command that needs data the repository does not ship (a previous run's output, your
  images) is marked in the text with a ``# needs: ...`` comment on its line and gets the flag
  check only. The README's main job runs in CI (``.ci/run``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgecnn.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"\bedgecnn\s+(" + "|".join(sorted(COMMANDS, key=len, reverse=True)) + r")\b([^`\n]*)")
PLACEHOLDER = re.compile(r"[A-Z]{2,}|\.\.\.|[\[\]<>{}]|\bN\b")


@dataclass(frozen=True)
class Shown:
    where: str  # file:line
    sub: str
    args: str  # the text after the subcommand
    in_block: bool  # a line of a fenced code block (not an inline span or a table)
    needs: str  # the '# needs:' note, if any

    def __str__(self) -> str:
        return f"{self.where}: edgecnn {self.sub}{self.args}"


def documents() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in (ROOT / "recipes", ROOT / "edgecnn" / "recipes"):
        files += sorted(folder.glob("*.yaml"))
    return [f for f in files if f.is_file()]


def shown_commands(path: Path) -> list[Shown]:
    found, in_block, is_yaml = [], False, path.suffix == ".yaml"
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if is_yaml and not line.lstrip().startswith("#"):
            continue
        block_line = in_block or is_yaml
        spans = [line] if block_line else re.findall(r"`([^`]+)`", line)
        for span in spans:
            for match in COMMAND.finditer(span):
                args = match.group(2)
                needs = ""
                if "# needs:" in args:
                    args, needs = args.split("# needs:", 1)
                args = args.split(" #", 1)[0]
                rel = path.relative_to(ROOT)
                found.append(Shown(f"{rel}:{number}", match.group(1), args.rstrip(), block_line, needs.strip()))
    return found


ALL = [c for doc in documents() for c in shown_commands(doc)]


def _command(sub: str) -> click.Command:
    return cli.get_command(click.Context(cli), sub)


def _options(cmd: click.Command) -> dict[str, click.Parameter]:
    names = {}
    for param in cmd.params:
        if isinstance(param, click.Option):
            for name in param.opts + param.secondary_opts:
                names[name] = param
    names.setdefault("--help", None)
    names.setdefault("-h", None)
    return names


def flag_problems(shown: Shown) -> list[str]:
    cmd = _command(shown.sub)
    options = _options(cmd)
    tokens = shown.args.replace("\\|", "|").split()
    problems = []
    for i, raw in enumerate(tokens):
        token = raw.strip("[](),;.'\"")
        if not token.startswith("-") or token in ("-", "--") or re.fullmatch(r"-\d.*", token):
            continue
        flag, _, inline = token.partition("=")
        flags = flag.split("|")  # "--dry-run|--print-recipe" shown as alternatives
        for f in flags:
            if f not in options:
                problems.append(f"{shown}: no option '{f}' on 'edgecnn {shown.sub}'")
        param = options.get(flags[0])
        if param is None or param.is_flag or not isinstance(param.type, click.Choice):
            continue
        value = inline or (tokens[i + 1].strip("[](),;'\"") if i + 1 < len(tokens) else "")
        if not value or PLACEHOLDER.search(value) or value.startswith("-"):
            continue
        choices = [str(c) for c in param.type.choices]
        for alternative in value.split("|"):
            if alternative not in choices:
                problems.append(f"{shown}: '{alternative}' is not a choice of {flags[0]} ({', '.join(choices)})")
    return problems


def test_documents_show_commands():
    subs = {c.sub for c in ALL}
    assert {"compress", "export", "bench", "compile", "pack"} <= subs, subs


@pytest.mark.parametrize("shown", ALL, ids=str)
def test_every_flag_shown_exists(shown):
    assert flag_problems(shown) == []


RUNNABLE = [c for c in ALL if c.in_block and not c.needs and not PLACEHOLDER.search(c.args.replace("--", ""))]


@pytest.mark.parametrize("shown", RUNNABLE, ids=str)
def test_complete_commands_parse_and_dry_run(shown, tmp_path, monkeypatch):
    import shlex

    monkeypatch.chdir(tmp_path)
    args = shlex.split(shown.args)
    cmd = _command(shown.sub)
    try:
        cmd.make_context(shown.sub, list(args))
    except click.ClickException as exc:
        pytest.fail(f"{shown}: {exc.format_message()}")
    if shown.sub == "compress":
        result = CliRunner().invoke(cli, ["compress", *args, "--dry-run"], catch_exceptions=False)
        assert result.exit_code == 0, f"{shown}: {result.output}"


def test_flag_check_catches_a_wrong_choice_and_a_missing_flag():
    bad = Shown("x:1", "compress", " squeezenet --bits 5 --no-such-flag", True, "")
    problems = flag_problems(bad)
    assert any("'5' is not a choice of --bits" in p for p in problems), problems
    assert any("no option '--no-such-flag'" in p for p in problems), problems
    assert flag_problems(Shown("x:1", "compile", " m.onnx --backend ort|trt", False, "")) == []
    assert flag_problems(Shown("x:1", "compile", " m.onnx --backend ort|tensorflow", False, ""))
