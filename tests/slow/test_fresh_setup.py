"""The README's first command on a clean clone: scripts/setup.sh from nothing, then the erasure."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_clean_clone_sets_up_and_runs_the_main_command(tmp_path):
    """Slow: builds a new .venv (torch, diffusers, transformers ...), minutes and ~1.5 GB of disk.

    Clones the committed HEAD (uncommitted work is not part of it), runs the README's first command
    verbatim, then setup.sh a second time, which must find everything in place.
    """
    clone = tmp_path / "erasekit"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    main_command = re.search(r"^```bash\n(.*?)\n", (ROOT / "README.md").read_text(), flags=re.M).group(1)
    assert main_command.startswith("bash scripts/setup.sh && ")
    result = subprocess.run(["bash", "-c", main_command], cwd=clone, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    again = subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "up to date" in again.stdout
