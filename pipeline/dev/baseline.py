"""Source trees to bench: this checkout, and another commit of it checked out aside.

``fraud bench --baseline REF`` measures a design that may no longer exist in the tree. REF is
checked out into a temporary detached ``git worktree`` (removed afterwards, whatever happens), and
each tree's *own* ``fraud bench --json`` runs in a process of its own, on this interpreter (the
dependencies are the same), importing that tree's packages. The current tree is run the same way,
so that both designs are measured alike.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from pipeline.core.errors import FraudError

# Printed by the probe run in a tree's environment: where its packages are imported from.
_IMPORT_PROBE = "import agents, pipeline; print(pipeline.__file__); print(agents.__file__)"
# How long an interrupted bench may take to stop its stages and its server.
_STOP_GRACE_S = 60.0


class BaselineError(FraudError):
    pass


class GitMissingError(BaselineError):
    pass


@dataclass(frozen=True)
class Tree:
    """A source tree of this repository at a known commit."""

    label: str
    ref: str
    commit: str
    dirty: bool
    root: Path

    @property
    def short(self) -> str:
        return self.commit[:10] + ("+dirty" if self.dirty else "")

    def describe(self) -> dict[str, Any]:
        return {"ref": self.ref, "commit": self.commit, "dirty": self.dirty}


def _git(cwd: Path, *argv: str) -> str:
    try:
        done = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise GitMissingError("--baseline needs git, and git is not on PATH") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        raise BaselineError(f"git {' '.join(argv)} (in {cwd}) failed: {reason}")
    return done.stdout.strip()


def current_tree() -> Tree:
    """The checkout the running code comes from, at HEAD, dirty if it has uncommitted changes."""
    code_dir = Path(__file__).resolve().parent
    try:
        root = Path(_git(code_dir, "rev-parse", "--show-toplevel"))
    except GitMissingError:
        raise
    except BaselineError as err:
        raise BaselineError(f"--baseline needs the running code to be a git checkout: {err}") from None
    return Tree("current", "HEAD", _git(root, "rev-parse", "HEAD"),
                bool(_git(root, "status", "--porcelain")), root)


@contextmanager
def checked_out(current: Tree, ref: str) -> Iterator[Tree]:
    """REF of the current tree's repository in a temporary detached worktree, for the block."""
    try:
        commit = _git(current.root, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")
    except BaselineError:
        raise BaselineError(f"--baseline {ref!r} names no commit of the repository at {current.root}") from None
    parent = Path(tempfile.mkdtemp(prefix="fraud-baseline-"))
    path = parent / "tree"
    try:
        _git(current.root, "worktree", "add", "--detach", str(path), commit)
        yield Tree("baseline", ref, commit, False, path)
    finally:
        _remove_worktree(current.root, path)
        shutil.rmtree(parent, ignore_errors=True)


def _remove_worktree(repo: Path, path: Path) -> None:
    try:
        _git(repo, "worktree", "remove", "--force", str(path))
    except BaselineError:
        # Never fully added, or its folder already gone: drop what git may still record of it.
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True, check=False)


def tree_env(tree: Tree, home: Path) -> dict[str, str]:
    """The environment a tree's bench runs in: its own packages first, this run's FRAUD_HOME.

    The tree's root leads ``sys.path`` (as the working folder and PYTHONPATH), ahead of the
    interpreter's editable install of the current tree, which Python consults only after
    ``sys.path``. FRAUD_HOME is absolute, so the tree finds the local libssl from its own folder.
    """
    return dict(os.environ, PYTHONPATH=str(tree.root), FRAUD_HOME=str(home.resolve()))


def check_imports(tree: Tree, home: Path) -> list[str]:
    """The files the tree's packages are imported from, failing unless they are the tree's own."""
    done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], cwd=tree.root, env=tree_env(tree, home),
                          capture_output=True, text=True, check=False)
    files = done.stdout.split()
    root = tree.root.resolve()
    if done.returncode != 0 or len(files) != 2 or not all(Path(f).resolve().is_relative_to(root) for f in files):
        raise BaselineError(f"the {tree.label} tree ({tree.short}) would not import its own code: "
                            f"{files or done.stderr.strip()}")
    return files


def run_tree_bench(tree: Tree, home: Path, options: Sequence[str], timeout: float) -> dict[str, Any]:
    """One ``fraud bench --json`` of the tree, in a process of its own; its JSON document."""
    argv = [sys.executable, "-m", "pipeline.cli", "bench", "--json", *options]
    # Files, not pipes: the bench's stages inherit its output, and waiting is on the bench alone.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(argv, cwd=tree.root, env=tree_env(tree, home), stdout=out, stderr=err)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _interrupt(process, signal_first=True)
            raise BaselineError(f"the {tree.label} bench ({tree.short}) did not finish in {timeout:.0f} s") from None
        except BaseException:
            # Ctrl+C reached the bench too (same process group): let it stop its stages and server.
            _interrupt(process, signal_first=False)
            raise
        stdout, stderr = _read(out), _read(err)
    if process.returncode != 0:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise BaselineError(f"the {tree.label} bench ({tree.short}) exited with status {process.returncode}: {tail}")
    lines = stdout.strip().splitlines()
    try:
        report = orjson.loads(lines[-1])
    except (IndexError, orjson.JSONDecodeError):
        raise BaselineError(f"the {tree.label} bench ({tree.short}) printed no JSON document") from None
    if not isinstance(report, dict):
        raise BaselineError(f"the {tree.label} bench ({tree.short}) printed {report!r}, not a report")
    return report


def _read(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


def _interrupt(process: subprocess.Popen[bytes], signal_first: bool) -> None:
    """Stop the bench as Ctrl+C does, so that its clean-up runs; kill it if that takes too long."""
    if signal_first and process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
