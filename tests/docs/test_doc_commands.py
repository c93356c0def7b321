"""Every ``medidd-node`` / ``medidd-aggregate`` command written in README.md and docs/*.md
exists as written: its subcommand and every option it uses (checked against the real click
commands behind the typer apps), and the cheap ones run for real on the sample data.

Commands are taken from fenced code blocks (with ``\\`` continuations joined and ``#``
comments dropped) and from inline code spans (prose and table cells). Optional parts written
``[--task sr]`` are checked like the rest.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import typer

from aggregator.cli import app as aggregate_app
from hospital_node.cli import app as node_app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS: dict[str, typer.Typer] = {"medidd-node": node_app, "medidd-aggregate": aggregate_app}
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`]+)`", re.S)
_START = re.compile(r"(?:^|\s)(medidd-node|medidd-aggregate)(?=\s|$)")


@dataclass(frozen=True)
class DocCommand:
    """One command as the docs write it: where, and its words after the program name."""

    where: str
    program: str
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {self.program} {' '.join(self.words)}"


def _words(text: str) -> list[str]:
    text = text.replace("[", " ").replace("]", " ")  # [--ipc 2] -> --ipc 2
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in prose: split on blanks
        return text.split()


def _commands_in(text: str, where: str) -> list[DocCommand]:
    found = []
    for match in _START.finditer(text):
        rest = text[match.end():]
        rest = re.split(r"\||&&|;|\)|—| - ", rest, maxsplit=1)[0]  # one command only
        words = _words(rest)
        found.append(DocCommand(where, match.group(1), tuple(words)))
    return found


def doc_commands() -> list[DocCommand]:
    """Every command of the docs (code blocks line by line, then inline code spans)."""
    commands: list[DocCommand] = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        name = doc.relative_to(ROOT).as_posix()
        for block in _FENCE.findall(text):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                commands += _commands_in(line, f"{name} (code block)")
        prose = _FENCE.sub("", text)
        for span in _INLINE.findall(prose):
            commands += _commands_in(" ".join(span.split()), f"{name} (inline)")
    return commands


def _options(command: click.Command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            names |= set(param.opts) | set(param.secondary_opts)
    return names


def problems(cmd: DocCommand) -> list[str]:
    """What in ``cmd`` the real CLI does not have (empty when it all exists)."""
    group = typer.main.get_command(PROGRAMS[cmd.program])
    assert isinstance(group, click.Group)
    if not cmd.words or cmd.words[0].startswith("-"):  # `medidd-node --version`, or a mention
        top = _options(group)
        return [f"no option {w}" for w in cmd.words if w.startswith("--") and w not in top]
    sub = group.commands.get(cmd.words[0])
    if sub is None:
        if not re.fullmatch(r"[a-z][a-z-]*", cmd.words[0]):  # prose such as "medidd-node CLI"
            return []
        return [f"no subcommand {cmd.words[0]!r} (has {', '.join(sorted(group.commands))})"]
    valid = _options(sub)
    out = []
    for word in cmd.words[1:]:
        flag = word.split("=", 1)[0]
        if flag.startswith("-") and flag not in ("-", "--") and flag not in valid:
            out.append(f"{cmd.words[0]} has no option {flag}")
    return out


COMMANDS = doc_commands()


def test_the_docs_write_commands_of_both_programs() -> None:
    subs = {(c.program, c.words[0]) for c in COMMANDS if c.words}
    for expected in [("medidd-node", "inspect"), ("medidd-node", "distill"),
                     ("medidd-node", "audit"), ("medidd-node", "serve"),
                     ("medidd-node", "enhance"), ("medidd-node", "export"),
                     ("medidd-node", "sample-data"), ("medidd-aggregate", "train"),
                     ("medidd-aggregate", "make-certs")]:
        assert expected in subs, f"no doc shows {' '.join(expected)}"


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_every_documented_command_exists(cmd: DocCommand) -> None:
    assert problems(cmd) == [], str(cmd)


def test_the_checker_catches_a_wrong_flag_and_subcommand() -> None:
    bad = _commands_in("medidd-node serve --cache-dir x --package p", "t")[0]
    assert problems(bad) == ["serve has no option --cache-dir"]
    assert problems(_commands_in("medidd-node distil -p x", "t")[0])[0].startswith(
        "no subcommand 'distil'")
    assert problems(_commands_in("medidd-node export --nifti --package p", "t")[0]) == [
        "export has no option --nifti"]


def test_every_doc_names_the_key_files_make_certs_writes(tmp_path: Path) -> None:
    from medidd.federation.certs import make_dev_certificates

    files = make_dev_certificates(tmp_path / "certificates", supernodes=("hospital-a",))
    private = files["hospital-a.private"].relative_to(tmp_path).as_posix()
    ca = files["ca_cert"].relative_to(tmp_path).as_posix()
    for cmd in COMMANDS:
        words = list(cmd.words)
        for flag, expected in (("--auth-key", private), ("--root-certificates", ca)):
            if flag in words and words.index(flag) + 1 < len(words):
                value = words[words.index(flag) + 1]
                if not value.isupper():  # placeholders such as CA.crt are fine
                    assert value == expected, f"{cmd}: {flag} {value}, make-certs writes {expected}"


# ----------------------------------------------------------------------- run the cheap ones


def _run(words: tuple[str, ...], program: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    module = {"medidd-node": "hospital_node.cli", "medidd-aggregate": "aggregator.cli"}[program]
    env = {**os.environ, "MEDIDD_HOME": str(cwd / "home"), "OMP_NUM_THREADS": "1",
           "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", module, *words], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.parametrize("sub", sorted({(c.program, c.words[0]) for c in COMMANDS
                                        if c.words and not c.words[0].startswith("-")
                                        and problems(c) == []
                                        and c.words[0] in typer.main.get_command(
                                            PROGRAMS[c.program]).commands}),  # type: ignore[attr-defined]
                         ids=" ".join)
def test_help_of_every_documented_subcommand_runs(sub: tuple[str, str], tmp_path: Path) -> None:
    r = _run((sub[1], "--help"), sub[0], tmp_path)
    assert r.returncode == 0 and "Usage" in r.stdout, r.stderr


def test_version_runs(tmp_path: Path) -> None:
    for program in PROGRAMS:
        r = _run(("--version",), program, tmp_path)
        assert r.returncode == 0 and r.stdout.startswith(f"{program} "), r.stderr


def _documented(sub: str, *needles: str) -> list[DocCommand]:
    return [c for c in COMMANDS if c.program == "medidd-node" and c.words[:1] == (sub,)
            and all(n in c.words for n in needles)]


@pytest.fixture
def site(real_samples: Path, tmp_path: Path) -> Path:
    """A working folder where the docs' relative paths resolve: data/samples and ./dicom."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "samples").symlink_to(real_samples)
    return tmp_path


def test_documented_sample_data_and_inspect_run_on_the_head_ct(site: Path) -> None:
    cmds = _documented("sample-data", "--region")
    assert cmds, "the docs no longer show sample-data --region"
    for cmd in cmds:
        r = _run(cmd.words, cmd.program, site)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
    out = Path(cmds[0].words[cmds[0].words.index("--out") + 1])
    (site / "dicom").symlink_to(site / out)
    inspects = _documented("inspect")
    assert inspects
    for cmd in inspects:
        words = tuple("./dicom" if w.startswith("./") else w for w in cmd.words)
        r = _run(words, cmd.program, site)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
        assert "usable series (2 patients)" in r.stdout and "CT-06-head_ct1/" in r.stdout


@pytest.mark.slow
def test_documented_full_sample_tree_is_written_and_inspected(site: Path) -> None:
    for cmd in _documented("sample-data"):
        r = _run(cmd.words, cmd.program, site)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
    r = _run(("inspect", "-p", "./samples-dicom", "-q"), "medidd-node", site)
    assert r.returncode == 0 and "usable series (19 patients)" in r.stdout
