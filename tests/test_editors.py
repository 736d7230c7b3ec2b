"""The editor files under editors/: the TextMate grammar highlights the whole language, and the VS Code
extension and the Neovim and Emacs configurations start the server that `cnnc lsp` is."""
import json
import re
import subprocess
import sys

from cnnc.ir import ACTIVATIONS, LAYER_KINDS, LOSSES

from conftest import ROOT
VSCODE = ROOT / "editors" / "vscode"
GRAMMAR = json.loads((VSCODE / "syntaxes" / "cnn.tmLanguage.json").read_text())


def rule(name: str, index: int | None = None) -> re.Pattern:
    entry = GRAMMAR["repository"][name]
    entry = entry["patterns"][index] if index is not None else entry
    return re.compile(entry["match"])


def test_the_grammar_marks_every_layer_kind_with_its_name():
    layer = rule("statement", 1)
    for kind in LAYER_KINDS:
        match = layer.search(f"    {kind} x1(units=3)")
        assert match and match.group(1) == kind and match.group(2) == "x1", kind
        assert layer.search(f"    {kind}  # unnamed").group(1) == kind, kind


def test_the_grammar_marks_keywords_words_comments_and_numbers():
    assert rule("scope").search("model lenet5 {").groups() == ("model", "lenet5")
    assert rule("statement", 0).search("    input image[1, 28, 28]").groups() == ("input", "image")
    for word in ACTIVATIONS + LOSSES + ("same", "valid", "true", "false", "none"):
        assert rule("word").fullmatch(word), word
    assert rule("argument").search("conv2d c(filters=6)").group(1) == "filters"
    assert rule("comment").search("relu  # max(0, x)").group() == "# max(0, x)"
    assert [m.group() for m in rule("number").finditer("x(a=-1, b=1e-5, c=.5, d=c2)")] == ["-1", "1e-5", ".5"]


def test_the_vscode_extension_names_its_grammar_and_the_server_command():
    package = json.loads((VSCODE / "package.json").read_text())
    (grammar,) = package["contributes"]["grammars"]
    assert (VSCODE / grammar["path"]).is_file() and grammar["scopeName"] == GRAMMAR["scopeName"]
    assert package["contributes"]["languages"][0]["extensions"] == [".cnn"]
    assert package["contributes"]["configuration"]["properties"]["cnnc.server.command"]["default"] == ["cnnc", "lsp"]
    assert '(cnn-mode "cnnc" "lsp")' in (ROOT / "editors" / "emacs" / "cnnc.el").read_text()
    assert '{ "cnnc", "lsp" }' in (ROOT / "editors" / "neovim" / "cnnc.lua").read_text()


def test_cnnc_lsp_is_a_command():
    done = subprocess.run([sys.executable, "-m", "cnnc", "lsp", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "language server" in done.stdout


def test_without_pygls_cnnc_lsp_says_what_to_install():
    hide_pygls = ("import sys\n"
                  "class Hide:\n"
                  "    def find_spec(self, name, path=None, target=None):\n"
                  "        if name.split('.')[0] == 'pygls':\n"
                  "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
                  "sys.meta_path.insert(0, Hide())\n"
                  "from cnnc.cli import main\n"
                  "sys.exit(main(['lsp']))\n")
    done = subprocess.run([sys.executable, "-c", hide_pygls], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: cnnc lsp needs pygls: pip install 'cnnc[lsp]' (or pip install 'pygls>=2,<3')"


def test_docs_show_the_neovim_configuration_that_the_neovim_test_runs():
    config = (ROOT / "editors" / "neovim" / "cnnc.lua").read_text()
    code = "\n".join(line for line in config.splitlines() if not line.startswith("--")).strip()
    assert f"```lua\n{code}\n```" in (ROOT / "docs" / "editors.md").read_text()
