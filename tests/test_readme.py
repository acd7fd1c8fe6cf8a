"""Every shell command block of README.md runs as written, with tiny budgets, so that the
README cannot drift from the code (issue 19).

How it runs them. The ```bash (or sh, shell) blocks are cut into commands: backslash
continuations joined, comment lines dropped. Each block runs as one bash script
(``set -euo pipefail``; so ``ID=$(...)``, ``&`` and ``wait`` work) in a fresh folder laid
out like a checkout: the repository folders the commands read (``INPUTS``) copied in,
``../shared`` beside it when the real one exists. PATH starts with a stand-in for
``endebias`` (``tests/readme_tiny.py``: the same command with ``--epochs 1`` and 64
images per split, a sweep capped at two such trials), then the virtual environment's
``bin`` — what ``source .venv/bin/activate`` gives.

What is not run is said by name: a command that needs data that is not here (CelebA, an
image folder, a placeholder such as ``DIR``) is taken out of its block and shown as a
skipped test with its reason; ``NOT_RUN`` lists programs left out on purpose (the set-up
``make`` commands). A command that calls any other program, or an ``endebias``
subcommand without a tiny rule, fails its block's test, naming the command.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from endebias.data import mnist
from mnist_fixtures import real_mnist_dir

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED = REPO.parent / "shared"
VENV_BIN = Path(sys.executable).parent  # not resolved: the venv's own bin folder
INPUTS = ("sweeps",)
SHELL_WORDS = {"for", "do", "done", "while", "if", "then", "else", "fi", "wait", "echo",
               "cd", "mkdir", "ls", "cat", "export", "true", "test"}
NOT_RUN = {
    "make": "a set-up command: CI runs `make test` itself, and `make demo` is the "
            "`endebias demo` that runs tiny in its own block",
    "source": "the test puts the virtual environment's bin first on PATH, as this does "
              "(test_activate_puts_endebias_on_path checks the script itself)",
    "pip": "an install step: the test runs in the environment `make test` built",
    "torchrun": "several processes: tests/test_distributed.py runs them",
    "tensorboard": "a dashboard server, which runs until stopped",
    "optuna-dashboard": "a dashboard server, which runs until stopped",
}
MNIST_DATASETS = {"biased-mnist", "colored-mnist"}
# Options that need an optional package: a command using one is skipped without it.
OPTIONAL = {"--tensorboard": "tensorboard", "--wandb": "wandb"}
FENCE = re.compile(r"^```(bash|sh|shell)\s*$")


def shell_blocks(text: str) -> list[list[str]]:
    """The commands of each shell block, continuation lines joined, comment lines dropped."""
    blocks: list[list[str]] = []
    lines: list[str] | None = None
    for line in text.splitlines():
        if lines is None:
            if FENCE.match(line.strip()):
                lines = []
            continue
        if line.strip().startswith("```"):
            blocks.append(_join(lines))
            lines = None
        else:
            lines.append(line)
    return blocks


def _join(lines: list[str]) -> list[str]:
    commands: list[str] = []
    pending = ""
    for line in lines:
        if not pending and (not line.strip() or line.strip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append((pending + line).strip() if pending else line.rstrip())
        pending = ""
    return commands


def segments(command: str) -> list[list[str]]:
    """The words of each simple command in ``command`` (split at ; & | ( ), without
    leading VAR=value assignments), comments removed."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: fall back to words
        tokens = command.split()
    found: list[list[str]] = [[]]
    for token in tokens:
        if token and set(token) <= set(";&|()"):
            found.append([])
        elif found[-1] or not re.match(r"^[A-Za-z_]\w*=", token):
            found[-1].append(token)
    return [words for words in found if words]


def _option_values(words: list[str], option: str) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == option]


def _has_mnist() -> bool:
    cache = mnist.mnist_folder(mnist.DEFAULT_DATA_DIR.expanduser())
    in_cache = all(mnist._find(cache, spec) for spec in mnist.MNIST_FILES.values())
    return in_cache or real_mnist_dir() is not None


def _missing_data(words: list[str]) -> str | None:
    """Why an ``endebias`` command cannot run here for want of data (or of an optional
    package), else None."""
    for option, package in OPTIONAL.items():
        if option in words and importlib.util.find_spec(package) is None:
            return f"{option} needs the optional package {package!r}, not installed here"
    command = next((w for w in words if not w.startswith("-")), None)
    if command == "sweep" and "create" in words:
        files = [REPO / w for w in words if w.endswith((".yaml", ".yml"))]
        if not files or not files[0].is_file():
            return None  # the command then fails in its block, naming the file
        parameters = yaml.safe_load(files[0].read_text()).get("parameters", {})
        datasets = {parameters.get("dataset", {}).get("value", "biased-mnist")}
    elif command == "train":
        datasets = set(_option_values(words, "--dataset") or ["biased-mnist"])
    elif command == "demo":
        datasets = {"biased-mnist"}
    else:
        return None
    if datasets & MNIST_DATASETS and not _has_mnist():
        return "needs MNIST: set ENDEBIAS_DATA, or run `make data` beside ../shared/data/mnist"
    paths = _option_values(words, "--data-dir")
    for option in _option_values(words, "--dataset-option"):
        key, _, value = option.partition("=")
        if key in ("root", "path"):
            paths.append(value)
    if "celeba" in datasets and not paths:
        paths.append(str(Path(os.environ.get(mnist.ENV_VAR, "~/.cache/endebias"), "celeba")))
    for path in paths:
        if not (REPO / Path(path).expanduser()).exists():
            return f"needs {path}, which is not here"
    return None


def verdict(command: str) -> tuple[str, str]:
    """("run", ""), ("skip", why) or ("fail", why) for one README command."""
    for words in segments(command):
        program = words[0]
        if program in NOT_RUN:
            return "skip", NOT_RUN[program]
        if program == "endebias":
            missing = _missing_data(words[1:])
            if missing:
                return "skip", missing
        elif program not in SHELL_WORDS:
            return "fail", (
                f"README command `{command}` runs `{program}`, which this test cannot run "
                "with a tiny budget: add it to NOT_RUN in tests/test_readme.py with the "
                "reason, or give it a rule there"
            )
    return "run", ""


BLOCKS = shell_blocks(README.read_text())
SKIPPED = [(c, why) for block in BLOCKS for c in block if (v := verdict(c))[0] == "skip"
           for why in [v[1]]]


def _block_id(block: list[str]) -> str:
    return re.sub(r"\s+", " ", block[0])[:60] if block else "empty"


def test_readme_has_command_blocks() -> None:
    assert len(BLOCKS) >= 4, "the README's shell blocks were not found"
    assert any("endebias train" in c for block in BLOCKS for c in block)


@pytest.mark.parametrize("command,why", SKIPPED, ids=[c[:60] for c, _ in SKIPPED])
def test_readme_command_not_run(command: str, why: str) -> None:
    pytest.skip(f"README command not run: {command!r}: {why}")


def _environment(tmp_path: Path) -> dict[str, str]:
    real = VENV_BIN / "endebias"
    if not real.exists():
        pytest.fail(f"{real} is missing: `source .venv/bin/activate` would not give `endebias`")
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    shim = shim_dir / "endebias"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO}/tests/readme_tiny.py" "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{shim_dir}:{VENV_BIN}:{os.environ.get('PATH', '')}",
               ENDEBIAS_README_REAL=str(real))
    env.pop("ENDEBIAS_STORAGE", None)  # the README's sweeps use the default SQLite store
    folder = real_mnist_dir()
    if folder is not None:
        env[mnist.ENV_VAR] = str(folder)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[_block_id(b) for b in BLOCKS])
def test_readme_block_runs(block: list[str], tmp_path: Path) -> None:
    verdicts = [(command, *verdict(command)) for command in block]
    failures = [why for _, kind, why in verdicts if kind == "fail"]
    if failures:
        pytest.fail("\n".join(failures))
    runnable = [command for command, kind, _ in verdicts if kind == "run"]
    if not runnable:
        pytest.skip("every command of this block is reported by test_readme_command_not_run")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in INPUTS:
        shutil.copytree(REPO / name, checkout / name)
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    script = "set -euo pipefail\n" + "\n".join(runnable) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=checkout, env=_environment(tmp_path),
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"README block failed (exit {done.returncode}):\n{script}\n"
                    f"--- output (last 3000 characters) ---\n{(done.stdout + done.stderr)[-3000:]}")
    left = unignored_outputs(checkout)
    assert not left, f"README block left {left} in the checkout, which git does not ignore"


def unignored_outputs(checkout: Path) -> list[str]:
    """What a block wrote into its checkout that the repository's .gitignore does not
    ignore (a user following the README would find it in `git status`)."""
    written = [entry.name + ("/" if entry.is_dir() else "") for entry in checkout.iterdir()
               if entry.name not in INPUTS]
    if not written:
        return []
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", *written],
                             capture_output=True, text=True).stdout.split()
    return sorted(set(written) - set(ignored))


def test_activate_puts_endebias_on_path() -> None:
    activate = VENV_BIN / "activate"
    if not activate.exists():
        pytest.skip(f"the tests do not run in a virtual environment ({VENV_BIN})")
    found = subprocess.run(["bash", "-c", f'source "{activate}" && command -v endebias'],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == VENV_BIN / "endebias"
