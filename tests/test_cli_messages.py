"""Every message that tells the user to run a ``fabml`` command names a command and options that exist.

Defect 4 of issue 7: ``anomaly/runs.py`` told the user to run ``fabml anomaly fit ... --run`` while
``fit`` takes ``--out``. This test reads every string literal in ``src/fabml`` (messages, help texts,
docstrings; f-string placeholders count as ``{}``), collects each command written in backticks or
parentheses (`` `fabml wafer embed --run {run_dir} --data ...` ``, ``(fabml anomaly fit)``) and checks
it against the real Typer app: each sub-command must exist and each ``--option`` must belong to the
command named. Any other ``--option`` in a message must be an option of at least one command.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

import fabml
from fabml.cli import app

SRC = Path(fabml.__file__).resolve().parent
README = SRC.parents[1] / "README.md"

COMMAND = re.compile(r"`+\s*(fabml\b[^`]*)`+|\((fabml [^()]*)\)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


@dataclass(frozen=True)
class Message:
    where: str  # file:line
    text: str


def _literal_text(node: ast.AST) -> str | None:
    """The text of a string literal; an f-string's placeholders become ``{}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def source_messages() -> list[Message]:
    """Every string literal in the package (nested f-string parts are not visited twice)."""
    messages = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inside_fstrings = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
        for node in ast.walk(tree):
            text = None if id(node) in inside_fstrings else _literal_text(node)
            if text:
                messages.append(Message(f"{path.relative_to(SRC.parent)}:{node.lineno}", text))
    return messages


def command_mentions(text: str) -> list[str]:
    """``fabml ...`` commands written in backticks or parentheses in ``text``."""
    return [(a or b).strip() for a, b in COMMAND.findall(text)]


def _subcommands(command: Any) -> dict[str, Any]:
    """A (click) group's sub-commands by name, through ``list_commands``/``get_command`` so that groups
    loaded lazily (the root's job table) are seen; ``{}`` for a leaf command."""
    if not hasattr(command, "list_commands"):
        return {}
    ctx = typer.Context(command)
    return {name: command.get_command(ctx, name) for name in command.list_commands(ctx)}


def _options(command: Any) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--")}


def _all_commands(command: Any) -> list[Any]:
    found = [command]
    for sub in _subcommands(command).values():
        found += _all_commands(sub)
    return found


def check_mention(root: Any, mention: str) -> list[str]:
    """Problems with one ``fabml ...`` mention (empty when the command and its options exist)."""
    words = mention.split()[1:]
    node = root
    path = ["fabml"]
    i = 0
    while i < len(words) and (subs := _subcommands(node)):
        word = words[i]
        if word.startswith("-") or not re.fullmatch(r"[a-z][a-z0-9_-]*", word):
            break  # an option, "...", a placeholder: the command path ends here
        if word not in subs:
            return [f"`{' '.join(path)}` has no sub-command {word!r} (it has {', '.join(sorted(subs))})"]
        node = subs[word]
        path.append(word)
        i += 1
    if i < len(words) and "{}" in words[i]:  # `fabml {job} ... --run`: any command below may be meant
        options = {"--help"}.union(*(_options(c) for c in _all_commands(node)))
    else:
        options = _options(node) | {"--help"}
    return [f"`{' '.join(path)}` has no option {opt} (it has {', '.join(sorted(options))})"
            for opt in OPTION.findall(" ".join(words[i:])) if opt not in options]


@pytest.fixture(scope="module")
def root() -> Any:
    command = typer.main.get_command(app)
    assert {"wafer", "anomaly", "demo"} <= set(_subcommands(command))
    return command


def test_collector_finds_the_commands_messages_name() -> None:
    """The collector sees backticked and parenthesised commands, f-string placeholders included."""
    assert command_mentions("no fitted model at x: run `fabml anomaly fit --model NAME --out {}` first") == [
        "fabml anomaly fit --model NAME --out {}"]
    assert command_mentions("is not fitted: run fit first (fabml anomaly fit)") == ["fabml anomaly fit"]
    assert command_mentions("``fabml wafer ...``: argument parsing") == ["fabml wafer ..."]
    assert command_mentions("is not a fabml anomaly split file") == []  # prose, not a command
    mentions = [(m.where, c) for m in source_messages() for c in command_mentions(m.text)]
    assert len(mentions) >= 10 and any("wafer/runs.py" in where for where, _ in mentions)


def test_the_checker_catches_a_wrong_option_and_a_wrong_command(root: Any) -> None:
    """The defect this test guards against: ``fit`` takes ``--out``, not ``--run``."""
    assert check_mention(root, "fabml anomaly fit --model NAME --out {}") == []
    assert check_mention(root, "fabml wafer embed --run {} --data ...") == []
    assert any("--run" in p for p in check_mention(root, "fabml anomaly fit ... --run {}"))
    assert any("'fitt'" in p for p in check_mention(root, "fabml anomaly fitt"))
    assert check_mention(root, "fabml {} ... --run {}") == []  # a job named by a placeholder
    assert check_mention(root, "fabml {} ... --no-such-option") != []


def test_every_command_a_message_names_exists_with_its_options(root: Any) -> None:
    problems = [f"{m.where}: {problem}" for m in source_messages() for mention in command_mentions(m.text)
                for problem in check_mention(root, mention)]
    assert problems == []


def test_every_option_a_message_names_is_an_option_of_some_command(root: Any) -> None:
    known = {"--help"}.union(*(_options(c) for c in _all_commands(root)))
    problems = [f"{m.where}: {opt}" for m in source_messages() for opt in OPTION.findall(m.text) if opt not in known]
    assert problems == []


def test_readme_commands_exist_with_their_options(root: Any) -> None:
    """Command lines in the README's code blocks (``fabml ...`` at the start of a line, ``\\`` continuations joined)."""
    if not README.is_file():
        pytest.skip("no README.md beside src/ (installed package)")
    text = README.read_text(encoding="utf-8").replace("\\\n", " ")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    mentions = [line.split("#")[0] for line in lines if re.match(r"(\w+=\S+\s+)*(torchrun .*?)?fabml ", line)]
    mentions = [m[m.index("fabml "):] for m in mentions]
    problems = [f"README: {problem}" for mention in mentions for problem in check_mention(root, mention)]
    assert mentions and problems == []
