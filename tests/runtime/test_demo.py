"""`cellsched demo` end to end (its own local Ray), then `status` and `logs` on what it left."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray  # 30-55 s (its own Ray, four projects): under the 60 s bar for "slow"

from cellsched.cli.read_cmds import STATUS_COLUMNS

CLI = str(Path(sys.executable).parent / "cellsched")


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_demo_runs_every_example_project_to_completion(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    t = time.monotonic()
    out = run("demo", "--workdir", str(work), timeout=180)
    took = time.monotonic() - t
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert took < 120, took
    story = out.stdout
    for name in ("eval-harness", "pretrain-small", "pythia-ablation", "tokenizer-study"):
        # submitted and granted, running, released early with the refund, reported
        assert re.search(rf"^   granted  {name}@[0-9a-f]{{12}} +\d GPUs?, [\d.]+ GPU-h, ", story, re.M), name
        assert re.search(rf"^ +\d+ s  running   {name}@", story, re.M), name
        assert re.search(rf"^ +\d+ s  released  {name}@\S+ +early, every job done after .*: [\d.]+ GPU-h refunded",
                         story, re.M), name
        assert re.search(rf"^{name}@[0-9a-f]{{12}} — completed \(all jobs succeeded\)$", story, re.M), name
    # one refusal, with what would be granted instead
    assert re.search(r"^   refused  urgent-rerun@[0-9a-f]{12} +no_capacity_in_window: ", story, re.M)
    assert re.search(r"^ +would be granted now: start ", story, re.M)
    assert (work / "urgent-rerun.toml").exists()
    # the completion reports are tables, not Markdown; the status table is `status`'s
    assert "## " not in story and "|---" not in story
    assert re.search(r"^job +┃ GPUs ┃ state +┃ attempt ┃", story, re.M)
    status_header = story.split("4. Status", 1)[1].splitlines()[2]
    assert [c.strip() for c in status_header.split("┃")] == STATUS_COLUMNS
    assert "Started a local Ray instance" not in out.stdout + out.stderr  # the demo narrates, Ray does not
    cluster = str(work / "cluster.toml")
    st = run("--cluster", cluster, "status", "pythia-ablation", "--json")
    assert st.returncode == 0, st.stderr
    (item,) = json.loads(st.stdout)
    assert item["state"] == "completed"
    assert [(j["job"], j["state"]) for j in item["jobs"]] == [("ablate", "succeeded"), ("probe", "succeeded")]
    assert item["jobs"][0]["exit_codes"] == [0] * 8
    logs = run("--cluster", cluster, "logs", "pythia-ablation", "ablate", "--rank", "3")
    assert logs.returncode == 0 and logs.stdout.startswith("rank 3 of 8 GPUs"), logs.stdout + logs.stderr
    table = run("--cluster", cluster, "status", "pythia-ablation")
    assert "ablate" in table.stdout and "0,0,0,0,0,0,0,0" in table.stdout
    report = json.loads(next((work / "logs" / "pythia-ablation").glob("*/report.json")).read_text())
    assert report["succeeded"] and report["gpu_seconds"]["refunded"] > 0
