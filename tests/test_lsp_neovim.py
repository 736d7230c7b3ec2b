"""Neovim, headless, with the configuration docs/editors.md documents (editors/neovim/cnnc.lua), opens a
spec with an error: the diagnostic must arrive from `cnnc lsp` at the right line."""
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("pygls")
NVIM = shutil.which("nvim")
pytestmark = pytest.mark.skipif(NVIM is None, reason="needs Neovim (apt-get install -y neovim; CI installs it)")

from conftest import ROOT
CONFIG = ROOT / "editors" / "neovim" / "cnnc.lua"
SPEC = """\
model net {
    input image[1, 28, 28]
    conv2d c1(filters=6, kernel=5, padding=2)
    maxpool2d p1(size=2)
    dense fc(units=10)
}
"""
# Wait for the first diagnostics of the buffer, write them down, quit.
REPORT_DIAGNOSTICS = """\
vim.wait(60000, function() return #vim.diagnostic.get(0) > 0 end, 50)
local lines = {}
for _, d in ipairs(vim.diagnostic.get(0)) do
  table.insert(lines, string.format("%d:%d:%s", d.lnum + 1, d.col + 1, d.message))
end
vim.fn.writefile(lines, "diagnostics.txt")
vim.cmd("qa!")
"""


def test_neovim_shows_the_error_at_its_line(tmp_path):
    (tmp_path / "net.cnn").write_text(SPEC)
    (tmp_path / "report.lua").write_text(REPORT_DIAGNOSTICS)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    subprocess.run([NVIM, "--headless", "-i", "NONE", "-u", str(CONFIG), "-c", "luafile report.lua", "net.cnn"],
                   cwd=tmp_path, env=env, timeout=120, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    assert (tmp_path / "diagnostics.txt").read_text().splitlines() == [
        "5:5:dense 'fc' needs a flat input, but 'p1' outputs [6, 14, 14]"]
