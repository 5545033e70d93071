"""The README's run command (`make run` → `retrain-trigger quickstart`) works and shows the
loop: a policy fires, later breaches are held back, the run ends, the champion changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_quickstart_shows_a_decision(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "triggers", "quickstart", "--workdir", str(tmp_path / "qs")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("FIRED: ") == 1
    assert "2026-10-12  0.951     0.969   FIRED: accuracy-forecast" in out
    assert "held back: accuracy-floor, accuracy-forecast" in out
    assert "run ended: promoted; champion is now v" in out
    assert (tmp_path / "qs" / "state.db").exists()
