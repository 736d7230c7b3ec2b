"""bench/lsp_latency.py runs as documented (a few samples) and reports both medians against their targets."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("pygls")
from conftest import ROOT


def test_the_latency_script_measures_diagnostics_and_hover(tmp_path):
    record = tmp_path / "lsp.json"
    command = [sys.executable, "bench/lsp_latency.py", "--samples", "3", "--warmup", "1", "--json", str(record)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert [line.split()[0] for line in done.stdout.splitlines()[:2]] == ["diagnostics", "hover"]
    results = json.loads(record.read_text())["results"]
    assert results["diagnostics"]["samples"] == results["hover"]["samples"] == 3
    assert 0 < results["hover"]["min_ms"] <= results["hover"]["median_ms"]
