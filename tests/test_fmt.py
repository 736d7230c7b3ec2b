"""`cnnc fmt`: the canonical layout (cnnc/lsp/formatting.py), in place or as a check."""

import pytest

from cnnc.cli import main
from cnnc.lsp.formatting import format_text

from conftest import ROOT
MESSY = """\


# a comment before the model
model  net{ input image [1,28,28] ;conv2d c1( filters = 6 , kernel=( 3,5 ),padding=same )   # six
   # about the pool
maxpool2d p1(size=2)      # halves
relu



    flatten # flat
 dense out(units=10) ; loss cross_entropy }
model second {
input [4]
dense d(units=-1, slope=1e-3)
}"""
CANONICAL = """\
# a comment before the model
model net {
    input image[1, 28, 28]
    conv2d c1(filters=6, kernel=(3, 5), padding=same)  # six
    # about the pool
    maxpool2d p1(size=2)                               # halves
    relu

    flatten  # flat
    dense out(units=10)
    loss cross_entropy
}
model second {
    input [4]
    dense d(units=-1, slope=1e-3)
}
"""


def test_the_canonical_layout():
    assert format_text(MESSY) == CANONICAL


def test_formatting_twice_changes_nothing():
    assert format_text(CANONICAL) == CANONICAL


def test_every_shipped_spec_is_in_the_canonical_layout():
    for path in sorted((ROOT / "specs").glob("*.cnn")):
        assert format_text(path.read_text()) == path.read_text(), f"{path.name}: run `cnnc fmt specs/{path.name}`"


def test_fmt_rewrites_a_file_and_check_then_passes(tmp_path, capsys):
    spec = tmp_path / "net.cnn"
    spec.write_text(MESSY)
    assert main(["fmt", "--check", str(spec)]) == 1
    assert spec.read_text() == MESSY
    assert f"{spec}: would be reformatted" in capsys.readouterr().err
    assert main(["fmt", str(spec)]) == 0
    assert spec.read_text() == CANONICAL
    assert main(["fmt", "--check", str(spec)]) == 0


def test_fmt_leaves_a_file_with_a_syntax_error_alone_and_says_why(tmp_path, capsys):
    spec = tmp_path / "broken.cnn"
    spec.write_text("model m {\n  input x[1]\n  dense d(units=\n}\n")
    assert main(["fmt", str(spec)]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:3:17: error: unclosed '('" in err
    assert "not formatted: fix the syntax error first" in err
    assert spec.read_text() == "model m {\n  input x[1]\n  dense d(units=\n}\n"


@pytest.mark.parametrize("text", ["model m {\n    input x[1]\n    dense d(units=1)\n}\n# the end\n",
                                  "model m {  # trailing\n    input x[1]; relu\n}  # closed\n"])
def test_comments_stay_on_their_lines(text):
    formatted = format_text(text)
    assert [line.split("#")[1] for line in formatted.splitlines() if "#" in line] == \
           [line.split("#")[1] for line in text.splitlines() if "#" in line]
