"""Integer literals longer than Python's int/str conversion limit (4,300 digits): leading zeros are
read for the value they spell, and a literal too large for 64 bits is a located error. Never a
VisitError traceback (issue 18, item 11)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnnc.diagnostics import SpecError
from cnnc.frontend import network_list_from_text

ZEROS = "0" * 5001  # past sys.get_int_max_str_digits() (4,300)


def check(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnc.cli", "check", "--json", str(path)], capture_output=True,
                          text=True, timeout=120)


def test_5001_leading_zeros_spell_the_value_after_them(tmp_path):
    path = tmp_path / "zeros.cnn"
    path.write_text(f"model m {{\n  input x[{ZEROS}3, 8]\n  flatten\n  dense d(units={ZEROS}5)\n  loss mse\n}}\n")
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (model,) = json.loads(result.stdout)["models"]
    assert model["input"] == [3, 8] and model["output"] == [5]
    assert model["params"] == 24 * 5 + 5


@pytest.mark.parametrize("sign", ["", "-", "+"])
def test_a_literal_of_5001_significant_digits_is_a_located_error(tmp_path, sign):
    path = tmp_path / "huge.cnn"
    path.write_text(f"model m {{\n  input x[8]\n  dense d(units={sign}1{ZEROS})\n  loss mse\n}}\n")
    result = check(path)
    assert result.returncode == 1
    assert result.stdout.strip() in ("", '{\n  "models": []\n}')
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{path}:3:17: error: integer {sign}1000000000000000000") and "is too large" in first
    assert len(first) < len(str(path)) + 120  # the literal is shortened, not quoted whole
    assert "Traceback" not in result.stderr and "VisitError" not in result.stderr


def test_zero_written_with_5001_digits_is_zero_and_the_checker_says_so():
    with pytest.raises(SpecError) as info:
        network_list_from_text(f"model m {{\n  input x[8]\n  dense d(units={ZEROS}0)\n  loss mse\n}}\n", "z.cnn")
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.loc.file, diagnostic.loc.line, diagnostic.loc.col) == ("z.cnn", 3, 17)
    assert "units" in diagnostic.message and "0" in diagnostic.message


def test_the_largest_64_bit_value_with_leading_zeros_is_still_the_boundary():
    with pytest.raises(SpecError) as info:
        network_list_from_text(f"model m {{\n  input x[8]\n  dense d(units={ZEROS}9223372036854775808)\n}}\n", "b.cnn")
    assert "is too large" in info.value.diagnostics[0].message
    # 2**63 - 1 itself is in range for the parser (the shape checker then judges it)
    with pytest.raises(SpecError) as info:
        network_list_from_text(f"model m {{\n  input x[8]\n  dense d(units={ZEROS}9223372036854775807)\n}}\n", "b.cnn")
    assert "is too large" not in info.value.diagnostics[0].message
