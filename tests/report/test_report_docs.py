"""The examples in docs/report.md run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "report.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_shell_walkthrough(tmp_path: Path) -> None:
    (script,) = blocks("sh")
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLSCHED_")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "granted 32.0 held 32.0 idle 32.0" in out.stdout
    assert "nothing in this period" in out.stdout
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert (tmp_path / "charts" / "capacity.png").exists()


def test_python_renderer_example(tmp_path: Path) -> None:
    (code,) = blocks("python")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    page = (tmp_path / "sim.html").read_text()
    assert page.count("<svg") == 2 and 'data-key="utilisation"' in page
    assert (tmp_path / "h100.png").read_bytes()[:4] == b"\x89PNG"
