"""The environment the local stack gives its children (farm.local.processes.child_env)."""

from __future__ import annotations

import os
from pathlib import Path

from farm.local.processes import child_env
from farm.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_children_find_the_checkout_root_first_on_their_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "elsewhere"))
    env = child_env(Settings(state_dir=tmp_path))
    entries = env["PYTHONPATH"].split(os.pathsep)
    # The folder that holds the farm and workers packages, not the farm package itself (its
    # modules would be importable as top-level ones: `import metrics`, `import plan`).
    assert Path(entries[0]) == ROOT
    assert (Path(entries[0]) / "farm" / "__init__.py").is_file()
    assert (Path(entries[0]) / "workers" / "__init__.py").is_file()
    assert str(ROOT / "farm") not in entries
    assert entries[1:] == [str(tmp_path / "elsewhere")]  # what the caller had is kept, after
