"""What the editor features need from the compiler's front end, behind small adapter functions.

Everything that touches cnnc's AST (cnnc/syntax.py), shape checker (cnnc/shapes.py) or IR (cnnc/ir.py)
is in this module, so that a change to the language (issue 14: `from=`, merges, blocks) is met here:

- `check`: the diagnostics `cnnc check` reports for a text, exactly (errors, else the warnings)
- `layer_shapes`: every layer whose shapes are known, even in a model with an error further down
  (the longest prefix of the model that checks) or after a syntax error (the broken lines blanked)
- the vocabulary: layer kinds, arguments of each kind with their type and default, words, losses

Graphs and blocks (issue 14) are met here too:
- `arguments_of` offers `from` for every single-input kind (the checker's argument tables leave it out:
  it is read apart); merges take their operands in the parentheses instead.
- `_checking_prefix` replaces only the model in the Program, so its block definitions stay; an error in
  an instance's body leaves the statements before the instance with their shapes.
- `Analysis.layers` holds the model-level layers by where they are written; the layers of block
  instances (`s1.c1`, written once in the block for every instance) are in `instance_layers`, by where
  they are written, one per instance, and `Analysis.instance(model, "s1")` gathers an instance's layers.
The outline (outline.py) reads `block`, `from=`, merges and `in`. `from=` takes a plain name only (the
grammar has no dotted names such as `s1.c1`), so references and rename need no dotted forms.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..diagnostics import CnncError, Diagnostic, Loc
from ..ir import ACTIVATIONS, LAYER_KINDS, LOSSES, Layer, Network

MERGE_KINDS = ("add", "concat")  # issue 14: merges name their operands, `add sum(a, b)`
KEYWORDS = ("model", "input", "loss", "block")
RECOVERY_ATTEMPTS = 8  # broken lines blanked, at most, to find the shapes around a syntax error


@dataclass
class Analysis:
    """One text's diagnostics and the shapes of its layers, by (line, col) of the layer's kind word
    (1-based, as in Loc), and its models by name."""

    text: str
    diagnostics: list[Diagnostic]
    layers: dict[tuple[int, int], Layer] = field(default_factory=dict)
    networks: dict[str, Network] = field(default_factory=dict)
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # by model name
    # the layers of block instances (`s1.c1`), by where they are written in the block: one per instance
    instance_layers: dict[tuple[int, int], list[Layer]] = field(default_factory=dict)

    def layer_at(self, line: int, col: int) -> Layer | None:
        """The model-level layer written at the 0-based line and column of its kind word."""
        return self.layers.get((line + 1, col + 1))

    def layers_in_block_at(self, line: int, col: int) -> list[Layer]:
        """Every instance's layer written in a block body at the 0-based line and column of its kind word."""
        return self.instance_layers.get((line + 1, col + 1), [])

    def instance(self, model: str, name: str) -> list[Layer]:
        """The layers of instance `name` of a model (`s1.c1`, `s1.bn1`, ...) in order; [] when unknown."""
        network = self.networks.get(model)
        prefix = name + "."
        return [layer for layer in network.layers if layer.name.startswith(prefix)] if network else []


def analyse(text: str, file: str, wanted=lambda: True) -> Analysis:
    """Diagnostics and shapes; never raises (a crash in the front end becomes one diagnostic). The work
    after the check (shapes in spite of errors) stops early once `wanted()` turns false (a newer text)."""
    networks = None
    try:
        diagnostics, networks = checked(text, file)
    except Exception as e:  # noqa: BLE001 - the editor must keep working whatever the checker does
        message = f"cnnc could not check this text ({type(e).__name__}: {e})"
        diagnostics = [Diagnostic("error", message, Loc(file, 1, 1))]
    analysis = Analysis(text, diagnostics)
    try:
        for network in networks if networks is not None else known_networks(text, file, wanted):
            analysis.networks[network.name] = network
            analysis.inputs[network.name] = network.input_shape
            for layer in network.layers:
                if layer.loc is None:
                    continue
                if "." in layer.name:  # written in a block body: the instance's name before the dot
                    analysis.instance_layers.setdefault((layer.loc.line, layer.loc.col), []).append(layer)
                else:
                    analysis.layers[(layer.loc.line, layer.loc.col)] = layer
    except Exception:  # noqa: BLE001 - shapes are extras: without them, hover and hints say less
        pass
    return analysis


def check(text: str, file: str) -> list[Diagnostic]:
    """What `cnnc check FILE` reports: every error; when there is none, every warning."""
    return checked(text, file)[0]


def checked(text: str, file: str) -> tuple[list[Diagnostic], list[Network] | None]:
    """`check`'s diagnostics, and the networks when there is no error (else None)."""
    from ..shapes import infer
    from ..syntax import parse

    try:
        networks = infer(parse(text, file), text)
    except CnncError as e:
        return list(e.diagnostics), None
    return [w for network in networks for w in network.warnings], networks


# ---- shapes in spite of errors -------------------------------------------------------------------
def known_networks(text: str, file: str, wanted=lambda: True) -> list[Network]:
    """Each model as far as its shapes are known: whole when it checks, else its longest checking prefix."""
    program = _recovered_program(text, file, wanted)
    if program is None:
        return []
    return [n for n in (_checking_prefix(program, decl, wanted) for decl in program.models) if n is not None]


def _recovered_program(text: str, file: str, wanted):
    """The AST of `text`, or of the text with the lines of its syntax errors blanked (a missing '}' added)."""
    from ..syntax import parse

    for _ in range(RECOVERY_ATTEMPTS):
        if not wanted():
            return None
        try:
            return parse(text, file)
        except CnncError as e:
            loc = e.diagnostics[0].loc if e.diagnostics else None
            repaired = _repaired(text, loc, e.diagnostics[0].message if e.diagnostics else "")
            if repaired is None or repaired == text:
                return None
            text = repaired
    return None


def _repaired(text: str, loc: Loc | None, message: str) -> str | None:
    if "missing its closing '}'" in message:
        return _close_models(text, loc)
    if loc is None:
        return None
    lines = text.split("\n")
    if not 1 <= loc.line <= len(lines):
        return text + "\n}"
    lines[loc.line - 1] = re.sub(r"[^\s{}]", " ", lines[loc.line - 1])  # keep braces: they shape the file
    return "\n".join(lines)


def _close_models(text: str, loc: Loc | None) -> str:
    """A '}' before the next `model` (on its own line above it) or at the end."""
    if loc is None:
        return text + "\n}"
    lines = text.split("\n")
    at = loc.line - 1
    if 0 <= at < len(lines) and re.match(r"\s*model\b", lines[at]) and at > 0 and not lines[at - 1].strip():
        lines[at - 1] = "}"
        return "\n".join(lines)
    return text + "\n}"


def _checking_prefix(program, decl, wanted) -> Network | None:
    """The model, or its longest prefix of layers that checks (the loss left out). Errors in a layer
    depend only on the statements before it, so the prefixes that check are 0..k: a bisection finds k."""
    from ..syntax import LayerStmt, LossStmt

    whole = _infer_one(program, decl)
    if whole is not None:
        return whole
    statements = [s for s in decl.statements if not isinstance(s, LossStmt)]
    layer_ends = [i + 1 for i, s in enumerate(statements) if isinstance(s, LayerStmt)]
    low, high, best = 1, len(layer_ends), None
    while low <= high and wanted():
        middle = (low + high) // 2
        network = _infer_one(program, replace(decl, statements=tuple(statements[:layer_ends[middle - 1]])))
        if network is not None:
            best, low = network, middle + 1
        else:
            high = middle - 1
    return best


def _infer_one(program, decl) -> Network | None:
    from ..shapes import infer

    try:
        return infer(replace(program, models=(decl,)))[0]
    except CnncError:
        return None


# ---- the vocabulary ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArgumentInfo:
    name: str
    type: str  # count, window, padding, bool, activation, slope, rate
    default: object  # REQUIRED_DEFAULT when it must be given
    required: bool


FROM_ARGUMENT = ArgumentInfo("from", "name", None, False)


def layer_kinds() -> tuple[str, ...]:
    return LAYER_KINDS


def activations() -> tuple[str, ...]:
    return ACTIVATIONS + ("none",)


def losses() -> tuple[str, ...]:
    return LOSSES


def arguments_of(kind: str) -> list[ArgumentInfo]:
    """The arguments a layer kind takes, in the order the reference lists them; [] for an unknown kind."""
    from ..shapes import KIND_ARGS, REQUIRED

    if kind not in KIND_ARGS:
        return []
    found = [ArgumentInfo(name, spec.type, spec.default, spec.default == REQUIRED)
             for name, spec in KIND_ARGS[kind].items()]
    if kind not in MERGE_KINDS and "from" not in KIND_ARGS[kind]:  # every single-input layer may read another output
        found.append(FROM_ARGUMENT)
    return found


def argument_info(kind: str | None, key: str) -> ArgumentInfo | None:
    found = [a for a in arguments_of(kind) if a.name == key] if kind else []
    if found:
        return found[0]
    for other in layer_kinds():  # an argument of a kind being misspelt: describe it all the same
        found = [a for a in arguments_of(other) if a.name == key]
        if found:
            return found[0]
    return None


def reserved_words() -> set[str]:
    return set(LAYER_KINDS) | set(KEYWORDS)


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def closest(word: str, choices) -> str | None:
    from ..shapes import closest as shapes_closest

    return shapes_closest(word, choices)


# ---- the program without its layout --------------------------------------------------------------
_LAYOUT_FIELDS = {"loc", "name_loc", "dims_loc", "end", "file"}


def program_signature(text: str):
    """The parsed program with every location left out (what formatting must keep); None when the text
    does not parse."""
    from ..syntax import parse

    try:
        return _without_layout(parse(text, "<format>"))
    except CnncError:
        return None


def _without_layout(node):
    import dataclasses

    if dataclasses.is_dataclass(node):
        return (type(node).__name__,) + tuple(
            (f.name, _without_layout(getattr(node, f.name)))
            for f in dataclasses.fields(node) if f.name not in _LAYOUT_FIELDS)
    if isinstance(node, (tuple, list)):
        return tuple(_without_layout(item) for item in node)
    return node
