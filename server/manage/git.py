"""Whether the repository is a git work tree, and what is uncommitted in a model's folder.

An edit made through the console or ``/admin`` is written into the work tree like any other
change: it is an uncommitted change there, which the next ``git pull`` may refuse to merge or
overwrite. The edit page says so and shows ``git diff`` of the model's folder.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 10.0
MAX_DIFF = 200_000
"""Characters of a diff shown; a longer one is cut with a note."""


@dataclass(frozen=True)
class WorkTree:
    top: Path
    """The work tree's top folder (the one holding .git)."""
    diff: str
    """``git diff HEAD`` of the folder asked about, with untracked files listed; "" when
    nothing there differs from the last commit."""
    error: str = ""
    """Why the diff could not be made (git not installed, a dubious-ownership refusal)."""


def work_tree(folder: Path) -> WorkTree | None:
    """Blocking: the git work tree holding `folder` with the folder's uncommitted changes, or
    None when the folder is not in one."""
    top = _top(folder)
    if top is None:
        return None
    git = shutil.which("git")
    if git is None:
        return WorkTree(top, "", "git is not installed on the server, so no diff is shown")
    relative = str(folder.resolve().relative_to(top.resolve())) or "."
    try:
        diff = _git(git, top, "diff", "--no-color", "HEAD", "--", relative)
        untracked = _git(git, top, "ls-files", "--others", "--exclude-standard", "--", relative)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return WorkTree(top, "", str(exc))
    if untracked.strip():
        files = "\n".join(f"  {line}" for line in untracked.splitlines())
        diff += f"\nUntracked (not in git yet):\n{files}\n"
    if len(diff) > MAX_DIFF:
        diff = diff[:MAX_DIFF] + f"\n... (cut at {MAX_DIFF} characters)\n"
    return WorkTree(top, diff)


def _top(folder: Path) -> Path | None:
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def _git(git: str, top: Path, *arguments: str) -> str:
    done = subprocess.run(
        [git, "-C", str(top), *arguments],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise ValueError(f"git {arguments[0]} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout
