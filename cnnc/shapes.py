"""AST -> shape-inferred IR: check every statement and compute every layer's output shape.

Per spatial axis, for convolution and pooling (PyTorch's formula):
    out = (in + pad_before + pad_after - dilation*(kernel-1) - 1) // stride + 1

Every mistake in a file is collected and raised together as one SpecError, each located at the
offending token, with the arithmetic and, where one is obvious, the fix. Within a model, argument
and naming mistakes are reported for every layer; shape inference stops at the first layer whose
shapes do not fit (later shapes would be guesses).

The pass reads top-down: infer -> _infer_model -> _infer_body (one statement at a time: its inputs by
name, _check_arguments, then one function per layer kind (_conv, _pool, _dense, _merge, ...) sharing
_window for the geometry).

Graphs: a layer reads the previous statement's output unless `from=NAME` names another; merges (add,
concat) name two or more. Names are looked up in the current scope, a model's body or a block's.
Blocks: an instance statement (`basic s1(width=16)`) expands the block's body in place, in a scope of its
own: its layers are named `s1.c1`, ..., `in` is the instance's input, and each word equal to a block
parameter is replaced by the instance's value. An error inside the body is reported at the body's
statement, with a located note at the instance that carries the parameter values (one note per
enclosing instance, innermost first).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from math import prod

from .diagnostics import Diagnostic, Loc, SpecError
from .ir import (ACTIVATIONS, AVGPOOL_KINDS, CONV_KINDS, CONV_TRANSPOSE_KINDS, LAYER_KINDS, LOSSES, MAXPOOL_KINDS,
                 MERGE_KINDS, POOL_KINDS, BufferSpec, Layer, Network, ParamSpec)
from .syntax import BlockDecl, InputStmt, LayerStmt, LossStmt, ModelDecl, Program, Value

MAX_ELEMENTS = 2**31 - 1  # per sample, per tensor: indices must fit a 32-bit int
KEYWORDS = ("model", "input", "loss", "block", "in")  # `in` names a block's input
RESERVED = set(LAYER_KINDS) | set(KEYWORDS)
AXIS_NAMES = {1: ("length",), 2: ("height", "width")}
AXIS_UNITS = {"length": ("sample", "samples"), "height": ("row", "rows"), "width": ("column", "columns")}
RELU_LIKE = ("relu", "leaky_relu", "relu6", "silu", "hardswish", "elu")
FLAT_ONLY = ("softmax", "log_softmax")  # activations over the class axis of flat scores
MAX_LAYERS = 100_000  # per model, after expanding blocks: a guard against blocks nested into billions of layers


class _Mistake(Exception):
    """One located error in a statement. Raised inside this module, collected, never escapes it."""

    def __init__(self, message: str, loc: Loc | None, hint: str | None = None):
        super().__init__(message)
        self.diagnostic = Diagnostic("error", message, loc, hint)


def closest(word: str, choices, cutoff: float = 0.7) -> str | None:
    """The choice `word` most likely misspells (ignoring case), or None."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[close[0]] if close else None


def did_you_mean(word: str, choices, cutoff: float = 0.7) -> str:
    close = closest(word, choices, cutoff)
    return f"; did you mean '{close}'?" if close else ""


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _show(t: tuple[int, ...]) -> str:
    """(3, 3) -> "3", (3, 5) -> "(3, 5)": how the value would be written in the spec."""
    return str(t[0]) if len(set(t)) == 1 else "(" + ", ".join(map(str, t)) + ")"


# ---- the arguments each kind takes ---------------------------------------------------------------
REQUIRED = "required"


@dataclass(frozen=True)
class ArgSpec:
    """type: "count" (positive int), "window" (positive int, or a pair for 2-D layers), "offsets" (the same,
    non-negative), "padding" (non-negative int or pair, `same` or `valid`, or (before, after) per axis),
    "bool", "activation", "slope" (a number), "rate" (a number in [0, 1)), or lrn's "alpha" (>= 0),
    "beta" (a number) and "k" (> 0). default: the value when the argument is absent, or REQUIRED;
    None for a pooling stride means "the window size"."""

    type: str
    default: object = REQUIRED


_CONV_ARGS = {"filters": ArgSpec("count"), "kernel": ArgSpec("window"), "stride": ArgSpec("window", 1),
              "padding": ArgSpec("padding", 0), "dilation": ArgSpec("window", 1), "bias": ArgSpec("bool", True),
              "activation": ArgSpec("activation", None), "slope": ArgSpec("slope", 0.01), "groups": ArgSpec("count", 1)}
_CONV_TRANSPOSE_ARGS = {"filters": ArgSpec("count"), "kernel": ArgSpec("window"), "stride": ArgSpec("window", 1),
                        "padding": ArgSpec("offsets", 0), "output_padding": ArgSpec("offsets", 0),
                        "dilation": ArgSpec("window", 1), "groups": ArgSpec("count", 1), "bias": ArgSpec("bool", True),
                        "activation": ArgSpec("activation", None), "slope": ArgSpec("slope", 0.01)}
_MAXPOOL_ARGS = {"size": ArgSpec("window"), "stride": ArgSpec("window", None), "padding": ArgSpec("padding", 0),
                 "ceil": ArgSpec("bool", False)}
_AVGPOOL_ARGS = {**_MAXPOOL_ARGS, "count_pad": ArgSpec("bool", True)}
KIND_ARGS: dict[str, dict[str, ArgSpec]] = {
    **{k: _CONV_ARGS for k in CONV_KINDS},
    **{k: _CONV_TRANSPOSE_ARGS for k in CONV_TRANSPOSE_KINDS},
    **{k: _MAXPOOL_ARGS for k in MAXPOOL_KINDS},
    **{k: _AVGPOOL_ARGS for k in AVGPOOL_KINDS},
    "global_avgpool": {}, "global_maxpool": {}, "flatten": {},
    "dense": {"units": ArgSpec("count"), "bias": ArgSpec("bool", True), "activation": ArgSpec("activation", None),
              "slope": ArgSpec("slope", 0.01)},
    "relu": {}, "sigmoid": {}, "tanh": {}, "softmax": {}, "leaky_relu": {"slope": ArgSpec("slope", 0.01)},
    "relu6": {}, "silu": {}, "hardswish": {}, "elu": {}, "selu": {}, "hardsigmoid": {}, "log_softmax": {},
    "lrn": {"size": ArgSpec("count"), "alpha": ArgSpec("alpha", 1e-4), "beta": ArgSpec("beta", 0.75),
            "k": ArgSpec("k", 1.0)},
    "channel_shuffle": {"groups": ArgSpec("count")},
    "dropout": {"rate": ArgSpec("rate", 0.5)},
    "batchnorm": {"eps": ArgSpec("eps", 1e-5), "momentum": ArgSpec("momentum", 0.1)},
    "add": {}, "concat": {},
}
_EXAMPLES = {"filters": "filters=16", "kernel": "kernel=3", "size": "size=2", "units": "units=10", "groups": "groups=2"}


@dataclass(frozen=True)
class _Slot:
    """Where a value goes: layer kind and name, and the argument key. str() prefixes messages."""

    kind: str
    layer: str
    key: str

    @property
    def dims(self) -> int:
        return 1 if self.kind.endswith("1d") else 2

    def __str__(self) -> str:
        return f"{self.kind} '{self.layer}': {self.key}"


def _describe(value: Value) -> str:
    return {"int": "the integer", "float": "the number", "word": "the word", "pair": "the pair"}[value.kind] + (
        f" '{value}'" if value.kind == "word" else f" {value}")


def _integer(value: Value, slot: _Slot, minimum: int) -> int:
    sign = "positive" if minimum == 1 else "non-negative"
    if value.kind != "int":
        hint = None
        if value.kind == "float" and value.value == int(value.value) and value.value >= minimum:
            hint = f"write {slot.key}={int(value.value)}"
        raise _Mistake(f"{slot} must be a {sign} integer; got {_describe(value)}", value.loc, hint)
    if value.value < minimum:
        raise _Mistake(f"{slot} must be {sign}; got {value.value}", value.loc)
    if value.value > MAX_ELEMENTS:  # what the backends can index: check agrees with compile
        raise _Mistake(f"{slot} must be at most 2^31 - 1 (2,147,483,647); got {value.value}", value.loc)
    return value.value


def _window_value(value: Value, slot: _Slot, minimum: int = 1) -> tuple[int, ...]:
    """An int for every axis, or a (height, width) pair for 2-D layers."""
    if value.kind != "pair":
        return (_integer(value, slot, minimum),) * slot.dims
    if slot.dims == 1:
        raise _Mistake(f"{slot} is the pair {value}, but {slot.kind} is 1-D and takes a single integer", value.loc,
                       f"write {slot.key}={value.value[0]}, or use the 2-D layer {slot.kind[:-2]}2d")
    return tuple(_integer(v, slot, minimum) for v in value.value)


def _padding_value(value: Value, slot: _Slot):
    """`same`, or per axis the padding (before, after): an integer pads both sides alike, a pair (before,
    after) pads them apart: `(1, 2)` in 1-D, `((1, 2), (0, 1))` or `(1, (0, 1))` in 2-D."""
    if value.kind == "pair" and slot.dims == 1:
        return (_before_after(value, slot),)
    if value.kind == "pair":
        return tuple(_before_after(v, slot) if v.kind == "pair" else (_integer(v, slot, 0),) * 2 for v in value.value)
    if value.kind != "word":
        return ((_integer(value, slot, 0),) * 2,) * slot.dims
    if value.value == "valid":
        return ((0, 0),) * slot.dims
    if value.value == "same" and slot.kind in POOL_KINDS:
        raise _Mistake(f"{slot}: 'same' is for convolutions; pooling takes an integer padding", value.loc,
                       "pooling with stride 1 and an odd size k keeps the size with padding=(k-1)/2; "
                       "give an uneven split as (before, after) per axis, e.g. padding="
                       + ("(0, 1)" if slot.dims == 1 else "((0, 1), (0, 1))"))
    if value.value != "same":
        raise _Mistake(f"{slot} must be an integer, a pair, 'same' or 'valid'; got '{value}'"
                       f"{did_you_mean(value.value, ('same', 'valid'))}", value.loc)
    return "same"


def _before_after(value: Value, slot: _Slot) -> tuple[int, int]:
    """One axis's (before, after) padding pair."""
    if value.kind != "pair" or any(v.kind == "pair" for v in value.value):
        shape = "(before, after)" if slot.dims == 1 else "an integer or (before, after) per axis"
        raise _Mistake(f"{slot} takes {shape}; got {_describe(value)}", value.loc,
                       "e.g. padding=(1, 2)" if slot.dims == 1 else "e.g. padding=((1, 2), (0, 1))")
    return (_integer(value.value[0], slot, 0), _integer(value.value[1], slot, 0))


def _bool_value(value: Value, slot: _Slot) -> bool:
    if value.kind != "word" or value.value not in ("true", "false"):
        suggestion = did_you_mean(value.value, ("true", "false")) if value.kind == "word" else ""
        raise _Mistake(f"{slot} must be true or false; got {_describe(value)}{suggestion}", value.loc)
    return value.value == "true"


def _activation_value(value: Value, slot: _Slot) -> str | None:
    choices = ACTIVATIONS + ("none",)
    if value.kind != "word":
        raise _Mistake(f"{slot} must be an activation name; got {_describe(value)}", value.loc,
                       "activations: " + ", ".join(choices))
    if value.value not in choices:
        raise _Mistake(f"unknown activation '{value}'{did_you_mean(value.value, choices)}", value.loc,
                       "activations: " + ", ".join(choices))
    return None if value.value == "none" else value.value


def _number(value: Value, slot: _Slot) -> float:
    if value.kind not in ("int", "float"):
        raise _Mistake(f"{slot} must be a number; got {_describe(value)}", value.loc)
    return float(value.value)


def _eps_value(value: Value, slot: _Slot) -> float:
    eps = _number(value, slot)
    if not eps > 0:
        raise _Mistake(f"{slot} must be a positive number; got {value}", value.loc,
                       "eps keeps the division by sqrt(variance + eps) finite; PyTorch's default is eps=1e-5")
    return eps


def _momentum_value(value: Value, slot: _Slot) -> float:
    momentum = _number(value, slot)
    if not 0 <= momentum <= 1:
        raise _Mistake(f"{slot} must be a number in [0, 1]; got {value}", value.loc,
                       "running = (1 - momentum) * running + momentum * batch; PyTorch's default is momentum=0.1")
    return momentum


def _rate_value(value: Value, slot: _Slot) -> float:
    rate = _number(value, slot)
    if not 0 <= rate < 1:
        raise _Mistake(f"{slot} must be a number in [0, 1); got {value}", value.loc,
                       "rate is the probability of dropping a value, e.g. rate=0.5")
    return rate


def _alpha_value(value: Value, slot: _Slot) -> float:
    alpha = _number(value, slot)
    if not alpha >= 0:
        raise _Mistake(f"{slot} must be a non-negative number; got {value}", value.loc,
                       "alpha scales the sum of squares; PyTorch's default is alpha=1e-4")
    return alpha


def _k_value(value: Value, slot: _Slot) -> float:
    k = _number(value, slot)
    if not k > 0:
        raise _Mistake(f"{slot} must be a positive number; got {value}", value.loc,
                       "k keeps the divisor (k + alpha/size * sum of squares) ** beta positive; PyTorch's default "
                       "is k=1")
    return k


_CHECKERS = {
    "count": lambda value, slot: _integer(value, slot, 1),
    "window": _window_value,
    "offsets": lambda value, slot: _window_value(value, slot, minimum=0),
    "alpha": _alpha_value,
    "beta": _number,
    "k": _k_value,
    "padding": _padding_value,
    "bool": _bool_value,
    "activation": _activation_value,
    "slope": _number,
    "rate": _rate_value,
    "eps": _eps_value,
    "momentum": _momentum_value,
}


@dataclass(frozen=True)
class _Args:
    """A layer's checked arguments: every argument of its kind (given, else the default), converted to
    Python values (windows as one int per axis), and the given ones' Values for error locations."""

    values: dict[str, object]
    given: dict[str, Value]

    def __getitem__(self, key: str):
        return self.values[key]

    def loc(self, key: str, fallback: Loc) -> Loc:
        return self.given[key].loc if key in self.given else fallback


def _check_arguments(stmt: LayerStmt, name: str, errors: list[Diagnostic]) -> _Args | None:
    """Known keys, no duplicates, values of the right type, required ones present; None after a mistake."""
    specs = KIND_ARGS[stmt.kind]
    first_error = len(errors)
    given: dict[str, Value] = {}
    values: dict[str, object] = {}
    misspelt = set()  # keys an unknown argument probably meant: not also reported as missing
    for arg in stmt.arguments:
        slot = _Slot(stmt.kind, name, arg.key)
        if arg.key == "from" and stmt.kind not in MERGE_KINDS:
            continue  # the input, resolved by _infer_body
        try:
            if arg.key == "from":
                raise _Mistake(f"{stmt.kind} '{name}' names its operands in the parentheses; from= is for layers "
                               "with one input", arg.loc, f"write e.g. {stmt.kind} {name}(a, b)")
            if arg.key not in specs:
                misspelt.add(closest(arg.key, specs))
                raise _Mistake(f"{stmt.kind} '{name}' has no argument '{arg.key}'{did_you_mean(arg.key, specs)}",
                               arg.loc, _takes(stmt.kind, arg.key))
            if arg.key in given:
                raise _Mistake(f"{slot} is given twice", arg.loc, "remove one of them")
            given[arg.key] = arg.value
            values[arg.key] = _CHECKERS[specs[arg.key].type](arg.value, slot)
        except _Mistake as mistake:
            errors.append(mistake.diagnostic)
    for key, spec in specs.items():
        if spec.default == REQUIRED and key not in given and key not in misspelt:
            errors.append(Diagnostic("error", f"{stmt.kind} '{name}' needs the argument '{key}'", stmt.loc,
                                     f"add it, e.g. {stmt.kind}({_EXAMPLES[key]})"))
    if "slope" in values and stmt.kind != "leaky_relu" and values.get("activation") != "leaky_relu":
        errors.append(Diagnostic("error", f"{stmt.kind} '{name}': slope only applies with activation=leaky_relu",
                                 given["slope"].loc, "add activation=leaky_relu, or remove slope"))
    if len(errors) > first_error:
        return None
    dims = 1 if stmt.kind.endswith("1d") else 2
    for key, spec in specs.items():
        if key not in values:
            default = spec.default
            spread = spec.type in ("window", "offsets") and default is not None  # one value per axis
            values[key] = ((default,) * dims if spread else ((default, default),) * dims if spec.type == "padding"
                           else default)
    return _Args(values, given)


def _takes(kind: str, key: str) -> str:
    if kind in MERGE_KINDS:
        return f"{kind} takes the names of two or more earlier outputs, e.g. {kind} m(a, b)"
    if not KIND_ARGS[kind]:
        hint = f"{kind} takes no arguments"
        return hint + ("; for a slope use leaky_relu(slope=...)" if key == "slope" else "")
    hint = f"{kind} takes " + ", ".join(KIND_ARGS[kind])
    if key == "count_pad" and kind in MAXPOOL_KINDS:
        hint += "; count_pad is for average pooling (max pooling never counts the padding)"
    return hint


# ---- what flows between layers -------------------------------------------------------------------
@dataclass(frozen=True)
class _Tensor:
    """A layer's input: its per-sample shape, who produced it, and its receptive field on the model's
    input (pixels seen per spatial axis, and the distance between neighbouring values); None once flat."""

    shape: tuple[int, ...]
    source: str  # "the input 'image'" or "'c1'"
    from_input: bool = False
    receptive_field: tuple[int, ...] | None = None
    jump: tuple[int, ...] | None = None

    def described(self, adjective: str = "") -> str:
        """"the input 'x' is the 1-D [1, 28]" or "'flatten_1' outputs the flat [784]"."""
        verb = "is" if self.from_input else "outputs"
        return f"{self.source} {verb} {adjective + ' ' if adjective else ''}{fmt_shape(self.shape)}"


def _output_of(layer: Layer) -> _Tensor:
    return _Tensor(layer.out_shape, f"'{layer.name}'", False, layer.receptive_field, layer.jump)


@dataclass(frozen=True)
class _Step:
    """One layer statement being inferred: the statement, its full name, its checked arguments, its inputs
    (x is the first; only merges have more)."""

    stmt: LayerStmt
    name: str
    args: _Args
    x: _Tensor
    xs: tuple[_Tensor, ...] = ()

    @property
    def kind(self) -> str:
        return self.stmt.kind

    @property
    def title(self) -> str:
        return f"{self.stmt.kind} '{self.name}'"

    def loc(self, key: str) -> Loc:
        return self.args.loc(key, self.stmt.loc)


# ---- entry point ---------------------------------------------------------------------------------
def infer(program: Program, source: str | None = None) -> list[Network]:
    """Shape-check every model in the program. Raises SpecError listing every error found, in source order."""
    errors: list[Diagnostic] = []
    networks = []
    blocks = _check_blocks(program.blocks, errors)
    seen: dict[str, Loc] = {}
    for decl in program.models:
        if decl.name in seen:
            errors.append(Diagnostic("error", f"duplicate model name '{decl.name}' (first defined at line "
                                     f"{seen[decl.name].line})", decl.loc, "give each model in a file its own name"))
        seen.setdefault(decl.name, decl.loc)
        network = _infer_model(decl, program.file, blocks, errors)
        if network is not None:
            networks.append(network)
    if errors:
        raise SpecError(_in_source_order(errors), source)
    return networks


def _in_source_order(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Sorted by location, and each (message, location) once: a block's mistake shows at its first instance."""
    unique = {}
    for d in diagnostics:
        unique.setdefault((d.severity, d.message, d.loc), d)
    return sorted(unique.values(), key=lambda d: (d.loc.line, d.loc.col) if d.loc else (0, 0))


def _infer_model(decl: ModelDecl, file: str, blocks: dict[str, _Block], errors: list[Diagnostic]) -> Network | None:
    first_error = len(errors)
    input_stmt = _the_input(decl, errors)
    loss = _the_loss(decl, errors)
    stmts = [s for s in decl.statements if isinstance(s, LayerStmt)]
    if not stmts:
        errors.append(Diagnostic("error", f"model '{decl.name}' has no layers", decl.end,
                                 "add layers between the input and the closing '}'"))
    x = _input_tensor(input_stmt, errors) if input_stmt is not None else None
    warnings: list[Diagnostic] = []
    input_name = (input_stmt.name if input_stmt is not None else None) or "input"
    scope = _Scope(prefix="", block=None, bindings={}, names={}, locs={}, later=_later_names(stmts),
                   notes=(), blocks=blocks, layers=[], errors=errors, warnings=warnings)
    if input_stmt is not None and input_stmt.name:
        scope.locs[input_stmt.name] = input_stmt.name_loc
        scope.names[input_stmt.name] = _Named(input_name, x)
    output = _infer_body(stmts, scope, _Named(input_name, x))
    layers = scope.layers
    warnings += _unread(scope.unread, layers)
    if output is not None and output.tensor is not None and loss is not None:
        _check_loss(loss, output.tensor.shape, layers[-1] if layers else None, errors)
    if len(errors) > first_error or output is None or output.tensor is None or x is None:
        return None  # an instance of a block whose definition has a mistake: reported at the definition
    if loss is not None and loss.kind == "cross_entropy" and "softmax" in (layers[-1].kind, layers[-1].activation):
        warnings.append(Diagnostic("warning", "cross_entropy applies softmax itself; a softmax before it squashes "
                                   "the scores twice and slows learning", layers[-1].loc,
                                   "remove the softmax: the model's output is then the raw class scores (logits)"))
    return Network(name=decl.name, input_name=input_name, input_shape=x.shape,
                   layers=tuple(_with_inits(layers)), loss=loss.kind if loss else None, file=file, loc=decl.loc,
                   warnings=tuple(_in_source_order(warnings)))


def _the_input(decl: ModelDecl, errors: list[Diagnostic]) -> InputStmt | None:
    """The model's one input statement, which must come first."""
    inputs = [s for s in decl.statements if isinstance(s, InputStmt)]
    if not inputs:
        errors.append(Diagnostic("error", f"model '{decl.name}' has no input statement", decl.loc,
                                 "begin the model with its input, e.g. `input image[1, 28, 28]` ([C, H, W]) "
                                 "or `input signal[1, 128]` ([C, L])"))
        return None
    if decl.statements[0] is not inputs[0]:
        errors.append(Diagnostic("error", "the input statement must come first in the model", inputs[0].loc,
                                 "move `input ...` to the first line of the model"))
    for extra in inputs[1:]:
        errors.append(Diagnostic("error", f"model '{decl.name}' has more than one input statement (the first is at "
                                 f"line {inputs[0].loc.line})", extra.loc, "a model has one input"))
    return inputs[0]


def _the_loss(decl: ModelDecl, errors: list[Diagnostic]) -> LossStmt | None:
    """The model's optional loss statement, which must come last."""
    losses = [s for s in decl.statements if isinstance(s, LossStmt)]
    for loss in losses:
        if loss.kind not in LOSSES:
            errors.append(Diagnostic("error", f"unknown loss '{loss.kind}'{did_you_mean(loss.kind, LOSSES)}", loss.loc,
                                     "losses: " + ", ".join(LOSSES)))
    for extra in losses[1:]:
        errors.append(Diagnostic("error", f"model '{decl.name}' has more than one loss statement (the first is at "
                                 f"line {losses[0].loc.line})", extra.loc, "a model has at most one loss"))
    if losses and losses[0] is not decl.statements[-1]:
        errors.append(Diagnostic("error", "the loss statement must be the last statement of the model",
                                 losses[0].loc, "move `loss ...` to the end of the model"))
    return losses[0] if losses and losses[0].kind in LOSSES else None


def _check_loss(loss: LossStmt, out_shape: tuple[int, ...], last: Layer | None, errors: list[Diagnostic]) -> None:
    """cross_entropy and nll need flat class scores; nll reads log-probabilities, so it follows log_softmax."""
    if loss.kind in ("cross_entropy", "nll") and len(out_shape) != 1:
        errors.append(Diagnostic("error", f"{loss.kind} needs flat class scores, but the model's output is "
                                 f"{fmt_shape(out_shape)}", loss.loc,
                                 "add `flatten` and a `dense(units=CLASSES)` layer before the loss"))
    elif loss.kind == "nll" and last is not None and "log_softmax" not in (last.kind, last.activation):
        errors.append(Diagnostic("error", f"nll reads log-probabilities, but the model's last layer is {last.kind} "
                                 f"'{last.name}'" + (f" with activation={last.activation}" if last.activation else ""),
                                 loss.loc, "add `log_softmax` before the loss (PyTorch's log_softmax + nll_loss), "
                                 "or use `loss cross_entropy` on the raw scores"))


def _input_tensor(stmt: InputStmt, errors: list[Diagnostic]) -> _Tensor | None:
    first_error = len(errors)
    if stmt.name in RESERVED:
        errors.append(Diagnostic("error", f"'{stmt.name}' is a reserved word (a layer kind or keyword) and cannot "
                                 "name the input", stmt.name_loc, f"choose another name, e.g. '{stmt.name}_in'"))
    for dim in stmt.dims:
        if dim.kind != "int" or dim.value <= 0:
            errors.append(Diagnostic("error", f"input dimensions must be positive integers; got {dim}", dim.loc))
    if not 1 <= len(stmt.dims) <= 3:
        errors.append(Diagnostic("error", "input takes [C, L] for 1-D signals or [C, H, W] for images (or [D] for "
                                 f"flat vectors); got {len(stmt.dims)} dimensions", stmt.dims_loc or stmt.loc))
    if len(errors) > first_error:
        return None
    shape = tuple(d.value for d in stmt.dims)
    if prod(shape) > MAX_ELEMENTS:
        errors.append(Diagnostic("error", f"input {fmt_shape(shape)} has {_product(shape)} elements per sample, "
                                 "over the limit of 2^31 - 1 (2,147,483,647)", stmt.dims_loc or stmt.loc,
                                 "use a smaller input, e.g. a lower resolution"))
        return None
    spatial = len(shape) - 1
    ones = (1,) * spatial if spatial else None
    source = f"the input '{stmt.name}'" if stmt.name else "the input"
    return _Tensor(shape, source, True, ones, ones)


def _product(shape) -> str:
    """"64 x 9998 x 9998 = 6,397,440,256": the arithmetic behind a size."""
    return " x ".join(f"{s:,}" for s in shape) + f" = {prod(shape):,}" if len(shape) > 1 else f"{prod(shape):,}"


# ---- blocks --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Block:
    """A block definition that checked out: its layer statements, and whether instances may expand it
    (False when it is part of a cycle or its definition has a mistake, which was reported once)."""

    decl: BlockDecl
    stmts: tuple[LayerStmt, ...]
    usable: bool


def _check_blocks(decls: tuple[BlockDecl, ...], errors: list[Diagnostic]) -> dict[str, _Block]:
    """Every block's definition on its own: its name, its parameters, its statements, and cycles."""
    blocks: dict[str, _Block] = {}
    for decl in decls:
        usable = True
        if decl.name in blocks:
            errors.append(Diagnostic("error", f"duplicate block name '{decl.name}' (first defined at line "
                                     f"{blocks[decl.name].decl.loc.line})", decl.loc, "give each block its own name"))
            continue
        if decl.name in RESERVED:
            errors.append(Diagnostic("error", f"'{decl.name}' is a layer kind or keyword and cannot name a block",
                                     decl.loc, f"choose another name, e.g. '{decl.name}_block'"))
            usable = False
        params: dict[str, Loc] = {}
        for param in decl.params:
            if param.name in params:
                errors.append(Diagnostic("error", f"block '{decl.name}' has two parameters named '{param.name}'",
                                         param.loc, "rename or remove one of them"))
                usable = False
            elif param.name in RESERVED:
                errors.append(Diagnostic("error", f"'{param.name}' is a reserved word (a layer kind or keyword) and "
                                         "cannot name a block parameter", param.loc, "choose another name"))
                usable = False
            params.setdefault(param.name, param.loc)
        for stmt in decl.statements:
            if not isinstance(stmt, LayerStmt):
                word = "input" if isinstance(stmt, InputStmt) else "loss"
                errors.append(Diagnostic("error", f"a block holds layers only; `{word}` belongs in a model", stmt.loc,
                                         "a block reads its instance's input as `in`; its output is its last statement's"
                                         if word == "input" else "put the loss at the end of the model"))
                usable = False
        stmts = tuple(s for s in decl.statements if isinstance(s, LayerStmt))
        if not stmts:
            errors.append(Diagnostic("error", f"block '{decl.name}' has no layers", decl.end,
                                     "add layers between '{' and '}'"))
            usable = False
        blocks[decl.name] = _Block(decl, stmts, usable)
    for cycle, stmt in _block_cycles(blocks):
        errors.append(Diagnostic("error", f"block '{cycle[0]}' uses itself" + (
            "" if len(cycle) == 2 else " through " + ", ".join(f"'{b}'" for b in cycle[1:-1]))
            + ": " + " -> ".join(cycle), stmt.loc, "a block cannot contain an instance of itself, directly or "
            "through other blocks"))
        for name in cycle:
            blocks[name] = replace(blocks[name], usable=False)
    return blocks


def _block_cycles(blocks: dict[str, _Block]) -> list[tuple[list[str], LayerStmt]]:
    """Each cycle of blocks using blocks, once: (["a", "b", "a"], the statement in 'a' that uses 'b')."""
    uses = {name: [(s.kind, s) for s in block.stmts if s.kind in blocks] for name, block in blocks.items()}
    found, reported, done = [], set(), set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            if frozenset(cycle) not in reported:
                reported.add(frozenset(cycle))
                first_use = next(s for kind, s in uses[cycle[0]] if kind == cycle[1])
                found.append((cycle, first_use))
            return
        if name in done:
            return
        for used, _ in uses[name]:
            visit(used, path + [name])
        done.add(name)

    for name in blocks:
        visit(name, [])
    return found


def _bind(stmt: LayerStmt, bindings: dict[str, Value]) -> LayerStmt:
    """The statement with every word that names a block parameter replaced by the instance's value
    (located at the word, so that a mistake points into the block's body)."""
    if not bindings:
        return stmt

    def bound(value: Value) -> Value:
        if value.kind == "word" and value.value in bindings:
            given = bindings[value.value]
            if given.kind == "pair":
                return Value("pair", tuple(replace(v, loc=value.loc) for v in given.value), value.loc)
            return Value(given.kind, given.value, value.loc)
        if value.kind == "pair":
            return replace(value, value=tuple(bound(v) for v in value.value))
        return value

    return replace(stmt, arguments=tuple(replace(a, value=bound(a.value)) for a in stmt.arguments))


# ---- layers: a model's body or a block instance's ----------------------------------------------
@dataclass(frozen=True)
class _Named:
    """What a name in a scope refers to: the full name of the tensor (a layer's, or the input's) and its
    shape; tensor None when its shape is unknown after an error."""

    full: str
    tensor: _Tensor | None


@dataclass
class _Scope:
    """Where statements are inferred. prefix: "" in a model, "s1." in instance s1 (nested: "p1.u1.").
    names: the outputs defined so far, by local name; locs: where each name was defined;
    later: every name a statement of this scope defines -> its line (for "defined later").
    notes: the instances being expanded, innermost first, attached to every error inside."""

    prefix: str
    block: _Block | None
    bindings: dict[str, Value]
    names: dict[str, _Named]
    locs: dict[str, Loc]
    later: dict[str, int]
    notes: tuple[Diagnostic, ...]
    blocks: dict[str, _Block]
    layers: list[Layer]  # every layer of the model so far, in order (shared by all scopes)
    errors: list[Diagnostic]
    warnings: list[Diagnostic]
    unread: list[tuple[str, Diagnostic]] = field(default_factory=list)  # (tensor read, warning): see _unread

    def error(self, diagnostic: Diagnostic) -> None:
        self.errors.append(replace(diagnostic, notes=diagnostic.notes + self.notes))


def _unread(found: list[tuple[str, Diagnostic]], layers: list[Layer]) -> list[Diagnostic]:
    """The warnings that a stride leaves input unread, except where another layer reads that input too: a
    strided 1x1 projection shortcut skips pixels that the main path reads."""
    readers: dict[str, int] = {}
    for layer in layers:
        for name in set(layer.inputs):
            readers[name] = readers.get(name, 0) + 1
    return [warning for tensor, warning in found if readers.get(tensor, 0) < 2]


def _later_names(stmts) -> dict[str, int]:
    later: dict[str, int] = {}
    for stmt in stmts:
        if stmt.name:
            later.setdefault(stmt.name, stmt.loc.line)
    return later


def _infer_body(stmts, scope: _Scope, previous: _Named | None) -> _Named | None:
    """Infer statements in order; each reads `previous` (the last statement's output, or the model's or
    instance's input) unless it names its inputs. Returns the last statement's output (None if unknown)."""
    counts: dict[str, int] = {}
    for stmt in stmts:
        counts[stmt.kind] = counts.get(stmt.kind, 0) + 1
        local = stmt.name or f"{stmt.kind}_{counts[stmt.kind]}"
        _check_name(stmt, local, scope)
        stmt = _bind(stmt, scope.bindings)
        if stmt.kind in scope.blocks:
            output = _instance(stmt, local, scope, previous)
        elif stmt.kind not in LAYER_KINDS:
            scope.error(_unknown_kind(stmt, scope.blocks))
            output = None
        else:
            output = _layer(stmt, local, scope, previous)
        scope.names.setdefault(local, output or _Named(scope.prefix + local, None))
        previous = output
    return previous


def _inputs(stmt: LayerStmt, local: str, scope: _Scope, previous: _Named | None) -> list[_Named] | None:
    """What the statement reads: its operands (merges), its from=, or the previous output. None after a
    mistake (reported)."""
    source = next((a for a in stmt.arguments if a.key == "from"), None)
    try:
        if stmt.kind in MERGE_KINDS:
            if len(stmt.operands) < 2:
                got = "none" if not stmt.operands else f"only '{stmt.operands[0]}'"
                raise _Mistake(f"{stmt.kind} '{local}' merges two or more outputs; got {got}",
                               stmt.operands[0].loc if stmt.operands else stmt.loc,
                               f"name the outputs to merge, e.g. {stmt.kind} {stmt.name or 'm'}(a, b)")
            return [_resolve(v, scope) for v in stmt.operands]
        if stmt.operands:
            what = "an instance of a block" if stmt.kind in scope.blocks else stmt.kind
            raise _Mistake(f"'{stmt.operands[0]}' without '=': {what} takes key=value arguments; only add and concat "
                           "name their inputs", stmt.operands[0].loc,
                           f"to read another output write from={stmt.operands[0]}")
        if source is not None:
            return [_resolve(source.value, scope)]
        if previous is None:
            return None
        return [previous]
    except _Mistake as mistake:
        scope.error(mistake.diagnostic)
        return None


def _resolve(value: Value, scope: _Scope) -> _Named:
    """The output a name refers to: an earlier statement of the scope, the model's input, or a block's `in`."""
    if value.kind != "word":
        raise _Mistake(f"expected the name of an earlier output; got {_describe(value)}", value.loc,
                       "e.g. from=c1, or add sum(a, b)")
    name = value.value
    if name == "in":
        if scope.block is None:
            raise _Mistake("`in` is a block's input and means nothing outside a block", value.loc,
                           "in a model, name the input or an earlier layer instead")
        return scope.names["in"]
    if name in scope.names:
        return scope.names[name]
    visible = [n for n in scope.names if n != "in"] + (["in"] if scope.block is not None else [])
    if name in scope.later:
        raise _Mistake(f"'{name}' is defined later (line {scope.later[name]}); a layer can only read outputs "
                       "defined before it", value.loc, "move the statement that defines it up, or name an earlier "
                       "output")
    where = f"block '{scope.block.decl.name}'" if scope.block is not None else "this model"
    # layer names are short (bn2, s1): one changed character of three is still a likely typo
    raise _Mistake(f"unknown name '{name}'{did_you_mean(name, visible, cutoff=0.6)}", value.loc,
                   f"names readable here in {where}: " + ", ".join(visible) if visible else None)


def _layer(stmt: LayerStmt, local: str, scope: _Scope, previous: _Named | None) -> _Named | None:
    """One layer statement: inputs, arguments, then its kind's shape function."""
    full = scope.prefix + local
    inputs = _inputs(stmt, local, scope, previous)
    first_error = len(scope.errors)
    args = _check_arguments(stmt, local, scope.errors)
    for k in range(first_error, len(scope.errors)):  # attach the instance notes
        scope.errors[k] = replace(scope.errors[k], notes=scope.errors[k].notes + scope.notes)
    if args is None or inputs is None or any(i.tensor is None for i in inputs):
        return None
    xs = tuple(i.tensor for i in inputs)
    warnings: list[Diagnostic] = []
    try:
        layer = _check_size(_INFER[stmt.kind](_Step(stmt, full, args, xs[0], xs), warnings))
    except _Mistake as mistake:
        scope.error(mistake.diagnostic)
        return None
    finally:  # the window warnings say the layer skips input: kept unless another layer reads it (below)
        scope.unread.extend((inputs[0].full, replace(w, notes=w.notes + scope.notes))
                            for w in warnings)
    layer = replace(layer, inputs=tuple(i.full for i in inputs), in_shapes=tuple(x.shape for x in xs))
    if len(scope.layers) >= MAX_LAYERS:
        scope.error(Diagnostic("error", f"the model has more than {MAX_LAYERS:,} layers once its blocks are "
                               "expanded", stmt.loc, "use fewer or smaller block instances"))
        return None
    scope.layers.append(layer)
    return _Named(full, _output_of(layer))


def _instance(stmt: LayerStmt, local: str, scope: _Scope, previous: _Named | None) -> _Named | None:
    """An instance of a block: check its arguments against the block's parameters, then infer the block's
    body in a scope of its own. Its output is the body's last statement's."""
    block = scope.blocks[stmt.kind]
    decl = block.decl
    inputs = _inputs(stmt, local, scope, previous)
    params = {p.name: p for p in decl.params}
    bindings: dict[str, Value] = {}
    misspelt = set()  # parameters an unknown argument probably meant: not also reported as missing
    ok = True
    for arg in stmt.arguments:
        if arg.key == "from":
            continue
        if arg.key not in params:
            misspelt.add(closest(arg.key, params))
            listed = ", ".join(params) if params else "no parameters"
            scope.error(Diagnostic("error", f"block '{decl.name}' has no parameter '{arg.key}'"
                                   f"{did_you_mean(arg.key, params)}", arg.loc,
                                   f"block '{decl.name}' (line {decl.loc.line}) takes {listed}"
                                   + ("; from=NAME reads another output" if arg.key != "from" else "")))
            ok = False
        elif arg.key in bindings:
            scope.error(Diagnostic("error", f"{stmt.kind} '{local}': {arg.key} is given twice", arg.loc,
                                   "remove one of them"))
            ok = False
        else:
            bindings[arg.key] = arg.value
    given = {a.key for a in stmt.arguments}
    for param in decl.params:
        if param.name not in bindings and param.default is None:
            if param.name not in given and param.name not in misspelt:
                scope.error(Diagnostic("error", f"instance '{local}' of block '{decl.name}' needs the parameter "
                                       f"'{param.name}'", stmt.name_loc or stmt.loc,
                                       f"add it, e.g. {decl.name} {local}({param.name}=...)"))
            ok = False
        elif param.name not in bindings:
            bindings[param.name] = param.default
    if not ok or not block.usable or inputs is None:
        return None
    full = scope.prefix + local
    values = ", ".join(f"{p.name}={bindings[p.name]}" for p in decl.params)
    note = Diagnostic("note", f"in instance '{full}' of block '{decl.name}'" + (f" with {values}" if values else ""),
                      stmt.name_loc or stmt.loc)
    (x,) = inputs
    inner = _Scope(prefix=full + ".", block=block, bindings=bindings, names={"in": x}, locs={},
                   later=_later_names(block.stmts), notes=(note,) + scope.notes, blocks=scope.blocks,
                   layers=scope.layers, errors=scope.errors, warnings=scope.warnings, unread=scope.unread)
    return _infer_body(block.stmts, inner, x)


def _unknown_kind(stmt: LayerStmt, blocks: dict[str, _Block]) -> Diagnostic:
    if stmt.kind in KEYWORDS:
        return Diagnostic("error", f"'{stmt.kind}' is a keyword and cannot start a layer statement here", stmt.loc)
    choices = LAYER_KINDS + tuple(blocks)
    hint = "layer kinds: " + ", ".join(LAYER_KINDS) + ("; blocks: " + ", ".join(blocks) if blocks else "")
    return Diagnostic("error", f"unknown layer kind '{stmt.kind}'{did_you_mean(stmt.kind, choices)}", stmt.loc, hint)


def _check_name(stmt: LayerStmt, name: str, scope: _Scope) -> None:
    loc = stmt.name_loc or stmt.loc
    names = scope.locs
    if stmt.name in RESERVED:
        scope.error(Diagnostic("error", f"'{stmt.name}' is a reserved word (a layer kind or keyword) and cannot "
                               "name a layer", loc, f"choose another name, e.g. '{stmt.name}1'"))
    elif stmt.name in scope.blocks:
        scope.error(Diagnostic("error", f"'{stmt.name}' is the name of a block and cannot name a layer", loc,
                               f"choose another name, e.g. '{stmt.name}1'"))
    elif name in names:
        first = f"line {names[name].line}" if names[name] else "the input"
        if stmt.name is None:
            message = (f"the unnamed {stmt.kind} is named '{name}' automatically, but that name is already used "
                       f"(at {first})")
            hint = f"name this layer, e.g. `{stmt.kind} {name}b`, or rename the other one"
        elif stmt.kind in scope.blocks:
            message, hint = (f"duplicate instance name '{name}' (first used at {first})",
                             "every instance and layer in a model needs its own name")
        else:
            message, hint = f"duplicate layer name '{name}' (first used at {first})", "every layer in a model needs its own name"
        scope.error(Diagnostic("error", message, loc, hint))
    names.setdefault(name, loc)


def _check_size(layer: Layer) -> Layer:
    """Every tensor's elements must be indexable with a 32-bit int."""
    for what, shape in [("output", layer.out_shape)] + [(p.name, p.shape) for p in layer.params]:
        if prod(shape) > MAX_ELEMENTS:
            raise _Mistake(f"{layer.kind} '{layer.name}': {what} {fmt_shape(shape)} has {_product(shape)} elements"
                           f"{' per sample' if what == 'output' else ''}, over the limit of 2^31 - 1 (2,147,483,647)",
                           layer.loc, "make the layer smaller, or downsample earlier with a stride or pooling")
    return layer


def _require_spatial(step: _Step, dims: int) -> None:
    """A 1-D layer needs [C, L], a 2-D layer [C, H, W]."""
    shape = step.x.shape
    if len(shape) == dims + 1:
        return
    want = "[C, L]" if dims == 1 else "[C, H, W]"
    got = {1: "flat", 2: "1-D", 3: "2-D"}[len(shape)]
    if len(shape) > 1:
        hint = f"use {step.kind[:-2]}{len(shape) - 1}d for {'1-D signals' if len(shape) == 2 else 'images'}"
    elif step.x.from_input:
        hint = "a flat input [D] only feeds dense layers; give the input as [C, L] or [C, H, W]"
    else:
        hint = f"{step.kind} must come before flatten and dense layers"
    raise _Mistake(f"{step.title} needs a {want} input, but {step.x.described('the ' + got)}", step.stmt.loc, hint)


# ---- one function per kind -----------------------------------------------------------------------
def _conv(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """x: (C, *in) -> (filters, *out); weight (filters, C/groups, *kernel): filter f reads the C/groups
    channels of its group f // (filters/groups)."""
    window = _window(step, step.args["kernel"], step.args["stride"], step.args["dilation"], warnings)
    channels, filters, kernel, groups = step.x.shape[0], step.args["filters"], window.kernel, step.args["groups"]
    _check_flat_activation(step)
    _check_groups(step, channels, filters, groups)
    group_channels = channels // groups
    fan_in, fan_out = group_channels * prod(kernel), filters // groups * prod(kernel)
    params = (ParamSpec(f"{step.name}.weight", (filters, group_channels, *kernel), fan_in, fan_out, "glorot"),)
    if step.args["bias"]:
        params += (ParamSpec(f"{step.name}.bias", (filters,), fan_in, fan_out, "zeros"),)
    return replace(window.layer(step, (filters, *window.out)), filters=filters, bias=step.args["bias"],
                   activation=step.args["activation"], slope=step.args["slope"], params=params, groups=groups,
                   macs=filters * prod(window.out) * group_channels * prod(kernel))


def _check_flat_activation(step: _Step) -> None:
    """softmax and log_softmax normalise flat class scores: not a convolution's feature maps."""
    if step.args["activation"] in FLAT_ONLY:
        what = step.args["activation"]
        raise _Mistake(f"{step.title}: activation={what} needs flat class scores; a convolution outputs feature maps",
                       step.loc("activation"), f"apply {what} after flatten and a dense layer")


def _conv_transpose(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """x: (C, *in) -> (filters, *out), per axis (PyTorch's ConvTranspose):
        out = (in - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1
    weight (C, filters/groups, *kernel): input channel c spreads over the filters of its group."""
    kernel, stride, dilation = step.args["kernel"], step.args["stride"], step.args["dilation"]
    padding, output_padding = step.args["padding"], step.args["output_padding"]
    dims = len(kernel)
    _require_spatial(step, dims)
    _check_flat_activation(step)
    channels, filters, groups = step.x.shape[0], step.args["filters"], step.args["groups"]
    _check_groups(step, channels, filters, groups)
    out = []
    for axis in range(dims):
        size, k, s, d, p, op = (step.x.shape[1 + axis], kernel[axis], stride[axis], dilation[axis], padding[axis],
                                output_padding[axis])
        if op >= max(s, d):
            where = f" {AXIS_NAMES[dims][axis]}" if len(set(output_padding)) > 1 else ""
            raise _Mistake(f"{step.title}: output_padding{where} {op} must be smaller than the stride ({s}) or the "
                           f"dilation ({d})", step.loc("output_padding"),
                           f"use output_padding={max(s, d) - 1} or less; it only picks among the "
                           f"{max(s, d)} output sizes that the stride maps to the same input size")
        full = (size - 1) * s + d * (k - 1) + 1 + op
        if full - 2 * p < 1:
            axis_name = AXIS_NAMES[dims][axis]
            raise _Mistake(f"{step.title}: padding {p} crops the whole output {axis_name}: ({size} - 1) x {s} + "
                           f"{d} x ({k} - 1) + {op} + 1 - 2 x {p} = {full - 2 * p}", step.loc("padding"),
                           f"use padding={(full - 1) // 2} or less")
        out.append(full - 2 * p)
    group_channels, group_filters = channels // groups, filters // groups
    fan_in, fan_out = group_channels * prod(kernel), group_filters * prod(kernel)
    params = (ParamSpec(f"{step.name}.weight", (channels, group_filters, *kernel), fan_in, fan_out, "glorot"),)
    if step.args["bias"]:
        params += (ParamSpec(f"{step.name}.bias", (filters,), fan_in, fan_out, "zeros"),)
    # The receptive field, approximately: an output reads the inputs within its kernel's span, `stride` outputs
    # apart: ceil(span / stride) of them; adjacent outputs are 1/stride input steps apart (at least one step).
    spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    rf = tuple(r + (-(-span // s) - 1) * j for r, j, span, s in zip(step.x.receptive_field, step.x.jump, spans, stride))
    jump = tuple(max(1, j // s) for j, s in zip(step.x.jump, stride))
    return Layer(step.name, step.kind, step.x.shape, (filters, *out), step.stmt.loc, kernel=kernel, stride=stride,
                 dilation=dilation, pad_before=padding, pad_after=padding, output_padding=output_padding,
                 filters=filters, bias=step.args["bias"], activation=step.args["activation"], slope=step.args["slope"],
                 groups=groups, params=params, macs=channels * prod(step.x.shape[1:]) * group_filters * prod(kernel),
                 receptive_field=rf, jump=jump)


def _check_groups(step: _Step, channels: int, filters: int, groups: int) -> None:
    """groups must divide the input channels and the filters."""
    if channels % groups == 0 and filters % groups == 0:
        return
    divisors = [g for g in range(1, min(channels, filters) + 1) if channels % g == 0 and filters % g == 0]
    fits = ", ".join(map(str, divisors[-6:]))
    if channels % groups:
        message = (f"{step.title}: groups={groups} does not divide the {channels} input channels "
                   f"({channels} = {channels // groups} x {groups} + {channels % groups}) of {step.x.source}")
    else:
        message = (f"{step.title}: groups={groups} does not divide the {filters} filters "
                   f"({filters} = {filters // groups} x {groups} + {filters % groups})")
    raise _Mistake(message, step.loc("groups"),
                   f"groups must divide both the input channels ({channels}) and the filters ({filters}): "
                   f"groups={fits} fit" if len(divisors) > 1 else
                   f"only groups=1 divides both the input channels ({channels}) and the filters ({filters})")


def _batchnorm(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """x: (C, *spatial) or (D,) -> the same shape, normalised per channel (per feature when flat);
    weight, bias, running_mean, running_var: (C,)."""
    channels = step.x.shape[0]
    params = (ParamSpec(f"{step.name}.weight", (channels,), 1, 1, "ones"),
              ParamSpec(f"{step.name}.bias", (channels,), 1, 1, "zeros"))
    buffers = (BufferSpec(f"{step.name}.running_mean", (channels,), 0.0),
               BufferSpec(f"{step.name}.running_var", (channels,), 1.0))
    return Layer(step.name, step.kind, step.x.shape, step.x.shape, step.stmt.loc, eps=step.args["eps"],
                 momentum=step.args["momentum"], params=params, buffers=buffers, macs=prod(step.x.shape),
                 receptive_field=step.x.receptive_field, jump=step.x.jump)


def _merge(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """add: every input the same shape -> that shape, the elementwise sum.
    concat: inputs (C_k, *spatial) with equal spatial sizes (or flat (D_k,)) -> (sum C_k, *spatial), joined
    on the channel (feature) axis in operand order, like torch.cat(dim=1)."""
    shapes = [x.shape for x in step.xs]
    listing = ", ".join(f"{x.source} {fmt_shape(x.shape)}" for x in step.xs)
    locs = step.stmt.operands
    if step.kind == "add":
        if len(set(shapes)) > 1:
            odd = next(k for k, shape in enumerate(shapes) if shape != shapes[0])
            raise _Mistake(f"{step.title}: add needs operands of one shape; got {listing}", locs[odd].loc,
                           "make them agree, e.g. with a 1x1 convolution (stride and filters) on the shortcut")
        out = shapes[0]
    else:
        if len({len(shape) for shape in shapes}) > 1:
            odd = next(k for k, shape in enumerate(shapes) if len(shape) != len(shapes[0]))
            raise _Mistake(f"{step.title}: concat needs operands of one rank; got {listing}", locs[odd].loc,
                           "concatenate feature maps with feature maps, or flatten them all first")
        if len({shape[1:] for shape in shapes}) > 1:
            odd = next(k for k, shape in enumerate(shapes) if shape[1:] != shapes[0][1:])
            axes = "length" if len(shapes[0]) == 2 else "height and width"
            raise _Mistake(f"{step.title}: concat joins channels, so every operand needs the same {axes}; got "
                           f"{listing}", locs[odd].loc, "resize the branches alike (the same strides and padding)")
        out = (sum(shape[0] for shape in shapes), *shapes[0][1:])
    fields = [x.receptive_field for x in step.xs]
    rf = jump = None
    if all(f is not None for f in fields):  # the widest view of any operand
        rf = tuple(max(axis) for axis in zip(*fields))
        jump = tuple(max(axis) for axis in zip(*(x.jump for x in step.xs)))
    return Layer(step.name, step.kind, shapes[0], out, step.stmt.loc,
                 macs=prod(out) if step.kind == "add" else 0, receptive_field=rf, jump=jump)


def _pool(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """x: (C, *in) -> (C, *out); the stride defaults to the window size. ceil and count_pad are kept only
    where they change the result (ceil the output size, count_pad=false a layer that pads)."""
    size = step.args["size"]
    stride = step.args["stride"] or size
    window = _window(step, size, stride, (1,) * len(size), warnings, ceil=step.args["ceil"])
    layer = window.layer(step, (step.x.shape[0], *window.out))
    padded = any(window.pad_before + window.pad_after)
    return replace(layer, ceil=window.ceil, count_pad=step.args.values.get("count_pad", True) or not padded)


def _global_pool(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """global_avgpool, global_maxpool: x: (C, *spatial) -> (C,), the mean or the maximum of each channel."""
    if len(step.x.shape) == 1:
        what = "average" if step.kind == "global_avgpool" else "max"
        raise _Mistake(f"{step.title} needs a [C, L] or [C, H, W] input, but {step.x.described('the flat')}",
                       step.stmt.loc, f"global {what} pooling must come before flatten")
    return Layer(step.name, step.kind, step.x.shape, step.x.shape[:1], step.stmt.loc)


def _lrn(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """x: (C, *spatial) -> the same shape, each value divided by (k + alpha/size * the sum of squares over
    `size` neighbouring channels) ** beta (PyTorch's LocalResponseNorm)."""
    _require_channels(step, "normalises across the channels of feature maps",
                      "local response normalisation must come before flatten")
    size = step.args["size"]
    return Layer(step.name, step.kind, step.x.shape, step.x.shape, step.stmt.loc, lrn_size=size,
                 alpha=step.args["alpha"], beta=step.args["beta"], k=step.args["k"],
                 macs=prod(step.x.shape) * size, receptive_field=step.x.receptive_field, jump=step.x.jump)


def _channel_shuffle(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """x: (C, *spatial) -> the same shape, channels reordered: viewed as (groups, C/groups, *spatial),
    transposed to (C/groups, groups, *spatial) (PyTorch's ChannelShuffle)."""
    _require_channels(step, "reorders the channels of feature maps", "channel_shuffle must come before flatten")
    channels, groups = step.x.shape[0], step.args["groups"]
    if channels % groups:
        divisors = [g for g in range(2, channels + 1) if channels % g == 0]
        raise _Mistake(f"{step.title}: groups={groups} does not divide the {channels} channels "
                       f"({channels} = {channels // groups} x {groups} + {channels % groups}) of {step.x.source}",
                       step.loc("groups"), "groups must divide the channels: " + (
                           f"groups={', '.join(map(str, divisors[:6]))} fit" if divisors else "only 1 does"))
    return Layer(step.name, step.kind, step.x.shape, step.x.shape, step.stmt.loc, groups=groups,
                 receptive_field=step.x.receptive_field, jump=step.x.jump)


def _require_channels(step: _Step, what: str, hint: str) -> None:
    """A layer that works across channels needs [C, L] or [C, H, W]."""
    if len(step.x.shape) == 1:
        raise _Mistake(f"{step.title} {what}: it needs a [C, L] or [C, H, W] input, but "
                       f"{step.x.described('the flat')}", step.stmt.loc, hint)


def _flatten(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """x: (C, *spatial) -> (C * prod(spatial),), row-major like torch.flatten."""
    return Layer(step.name, step.kind, step.x.shape, (prod(step.x.shape),), step.stmt.loc)


def _dense(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """x: (D,) -> (units,); weight (units, D)."""
    shape, units = step.x.shape, step.args["units"]
    if len(shape) != 1:
        hint = f"add `flatten` before '{step.name}' (giving [{prod(shape)}])"
        if len(shape) > 1:
            hint += f", or `global_avgpool` (giving [{shape[0]}])"
        raise _Mistake(f"{step.title} needs a flat input, but {step.x.described()}", step.stmt.loc, hint)
    params = (ParamSpec(f"{step.name}.weight", (units, shape[0]), shape[0], units, "glorot"),)
    if step.args["bias"]:
        params += (ParamSpec(f"{step.name}.bias", (units,), shape[0], units, "zeros"),)
    return Layer(step.name, step.kind, shape, (units,), step.stmt.loc, units=units, bias=step.args["bias"],
                 activation=step.args["activation"], slope=step.args["slope"], params=params, macs=shape[0] * units)


def _elementwise(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """Activations and dropout: the shape and the receptive field pass through."""
    if step.kind in FLAT_ONLY and len(step.x.shape) != 1:
        raise _Mistake(f"{step.title} normalises flat class scores, but {step.x.described()}", step.stmt.loc,
                       f"add `flatten` (and a dense layer) before {step.kind}")
    return Layer(step.name, step.kind, step.x.shape, step.x.shape, step.stmt.loc,
                 slope=step.args.values.get("slope", 0.01), rate=step.args.values.get("rate", 0.0),
                 receptive_field=step.x.receptive_field, jump=step.x.jump)


_INFER = {
    **{k: _conv for k in CONV_KINDS},
    **{k: _pool for k in POOL_KINDS},
    **{k: _conv_transpose for k in CONV_TRANSPOSE_KINDS},
    "global_avgpool": _global_pool, "global_maxpool": _global_pool, "flatten": _flatten, "dense": _dense,
    **{k: _elementwise for k in ACTIVATIONS + ("dropout",)},
    "batchnorm": _batchnorm, "add": _merge, "concat": _merge, "lrn": _lrn, "channel_shuffle": _channel_shuffle,
}


# ---- window geometry (convolution and pooling) ---------------------------------------------------
@dataclass(frozen=True)
class _Window:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]
    out: tuple[int, ...]  # output size per spatial axis
    ceil: bool = False  # pooling's ceil_mode changed the output size

    def layer(self, step: _Step, out_shape: tuple[int, ...]) -> Layer:
        """The Layer with this geometry and its receptive field: r' = r + dilation*(kernel-1)*jump, jump' = jump*stride."""
        rf = tuple(r + d * (k - 1) * j for r, j, k, d in zip(step.x.receptive_field, step.x.jump, self.kernel, self.dilation))
        jump = tuple(j * s for j, s in zip(step.x.jump, self.stride))
        return Layer(step.name, step.kind, step.x.shape, out_shape, step.stmt.loc, kernel=self.kernel,
                     stride=self.stride, dilation=self.dilation, pad_before=self.pad_before, pad_after=self.pad_after,
                     receptive_field=rf, jump=jump)


def _window(step: _Step, kernel, stride, dilation, warnings: list[Diagnostic], ceil: bool = False) -> _Window:
    """Resolve padding and compute the output size per axis: out = (in + pb + pa - d*(k-1) - 1) // s + 1,
    with ceil (pooling's ceil_mode) rounding the division up, less the last window if it would start in the
    right padding: PyTorch keeps it only if (out - 1)*s < in + pb. With ceil a window may be larger than the
    padded input, as long as the rounded-up count is at least one (PyTorch's rule too)."""
    dims = len(kernel)
    _require_spatial(step, dims)
    pad_before, pad_after = _padding(step, kernel, stride, dilation)
    out, ceil_changes = [], False
    for axis in range(dims):
        size, padded = step.x.shape[1 + axis], step.x.shape[1 + axis] + pad_before[axis] + pad_after[axis]
        span = dilation[axis] * (kernel[axis] - 1) + 1
        if span > padded + (stride[axis] - 1 if ceil else 0):  # ceil: a first, partial window is enough
            raise _too_large(step, axis, kernel[axis], dilation[axis], pad_before[axis], pad_after[axis])
        floor_out = (padded - span) // stride[axis] + 1
        n = floor_out
        if ceil:
            n = -(-(padded - span) // stride[axis]) + 1
            if (n - 1) * stride[axis] >= size + pad_before[axis]:
                n -= 1
        ceil_changes |= n != floor_out
        out.append(n)
    window = _Window(kernel, stride, dilation, pad_before, pad_after, tuple(out), ceil_changes)
    warnings.extend(_unread_input_warnings(step, window))
    return window


def _padding(step: _Step, kernel, stride, dilation) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(pad_before, pad_after) per axis. `same` is TensorFlow's: the output has ceil(in / stride) values, the
    padding is what that takes, max((out - 1)*stride + dilation*(kernel-1) + 1 - in, 0) in total, and the odd
    one goes after (at stride 1, dilation*(kernel-1) in total, as PyTorch's padding="same")."""
    padding = step.args["padding"]
    if padding == "same":
        sizes = step.x.shape[1:]
        total = tuple(max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
                      for n, s, d, k in zip(sizes, stride, dilation, kernel))
        return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
    if step.kind in POOL_KINDS:
        sides = len({p for pair in padding for p in pair}) > 1
        for axis, ((before, after), k) in enumerate(zip(padding, kernel)):
            for side, p in (("before", before), ("after", after)):
                if p > k // 2:
                    where = f" {AXIS_NAMES[len(kernel)][axis]}" if len(kernel) > 1 and sides else ""
                    where += f" {side}" if before != after else ""
                    raise _Mistake(f"{step.title}: padding{where} {p} is more than half the pooling window {k} "
                                   f"(at most {k} // 2 = {k // 2})", step.loc("padding"),
                                   f"use padding={k // 2} or less" if k > 1 else "remove the padding")
    return tuple(before for before, _ in padding), tuple(after for _, after in padding)


def _too_large(step: _Step, axis: int, k: int, d: int, pb: int, pa: int) -> _Mistake:
    is_conv = step.kind in CONV_KINDS
    dims = len(step.x.shape) - 1
    size, span = step.x.shape[1 + axis], d * (k - 1) + 1
    axis_name = AXIS_NAMES[dims][axis]
    window = "kernel" if is_conv else "pooling window"
    dilated = f" (dilation {d} spans {span})" if d > 1 else ""
    need = (span - size + 1) // 2  # padding on each side that makes the window fit
    smaller = f"a smaller {'kernel' if is_conv else 'size'}" + (" or dilation" if d > 1 else "")
    fix = (f"use {smaller} (the window must span at most {size + pb + pa}), or pad the input (padding={need}"
           + (" or padding=same)" if is_conv else ")"))
    return _Mistake(f"{step.title}: {window} {k}{dilated} is larger than the padded input {axis_name} "
                    f"{size + pb + pa} ({size} + {pb} + {pa}) from {step.x.source}",
                    step.loc("kernel" if is_conv else "size"), fix)


def _unread_input_warnings(step: _Step, window: _Window) -> list[Diagnostic]:
    """Warn when the stride skips input: rows left over after the last window, or gaps between windows.
    Axes with the same arithmetic share one warning ("the last 1 row and column")."""
    loc = step.loc("stride") if "stride" in step.args.given else step.loc("kernel" if step.kind in CONV_KINDS else "size")
    found: dict[tuple[str, bool, str], list[str]] = {}  # (message with {units}, singular?, hint) -> axis names
    for axis, axis_name in enumerate(AXIS_NAMES[len(window.kernel)]):
        size, out = step.x.shape[1 + axis], window.out[axis]
        pb, pa, s = window.pad_before[axis], window.pad_after[axis], window.stride[axis]
        span = window.dilation[axis] * (window.kernel[axis] - 1) + 1
        left_over = size + pb - (out - 1) * s - span  # input rows after the last window
        if left_over > 0:
            message = (f"{step.title}: stride {s} leaves the last {left_over} {{units}} of {step.x.source} unread: "
                       f"({size} + {pb} + {pa} - {span}) = {size + pb + pa - span} is not a multiple of {s}, "
                       f"so {out} windows cover only {(out - 1) * s + span - pb} of the {size}")
            key = (message, left_over == 1, "pad the input, or choose a window and stride that divide it evenly")
            found.setdefault(key, []).append(axis_name)
        if s > span:
            message = (f"{step.title}: stride {s} is larger than the window ({span}), so {s - span} of every {s} "
                       f"input {{units}} of {step.x.source} are never read")
            found.setdefault((message, False, f"use stride {span} or less, or a larger window"), []).append(axis_name)
    return [Diagnostic("warning", message.format(units=_units(axes, singular)), loc, hint)
            for (message, singular, hint), axes in found.items()]


def _units(axes: list[str], singular: bool) -> str:
    """["height", "width"] -> "rows and columns" (or "row and column")."""
    return " and ".join(AXIS_UNITS[axis][0 if singular else 1] for axis in axes)


# ---- initialisation ------------------------------------------------------------------------------
def _with_inits(layers: list[Layer]) -> list[Layer]:
    """Weights of a layer whose output feeds a ReLU-like activation get He init, others Glorot."""
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        for name in layer.inputs:
            readers.setdefault(name, []).append(layer)
    result = []
    for layer in layers:
        if layer.params and _feeds_relu(layer, readers):
            specs = tuple(replace(p, init="he") if p.init == "glorot" else p for p in layer.params)
            layer = replace(layer, params=specs)
        result.append(layer)
    return result


PASS_THROUGH = POOL_KINDS + ("dropout", "flatten", "batchnorm", "add", "global_maxpool", "lrn", "channel_shuffle")  # look past these for the activation


def _feeds_relu(layer: Layer, readers: dict[str, list[Layer]]) -> bool:
    """Whether the layer's output, through pooling, dropout, flatten, batch norm and sums, first meets a
    ReLU-like activation (following the first reader at each step)."""
    if layer.activation in RELU_LIKE:
        return True
    if layer.activation is not None:
        return False
    while readers.get(layer.name):
        layer = readers[layer.name][0]
        if layer.kind in RELU_LIKE:
            return True
        if layer.kind not in PASS_THROUGH:
            return False
    return False
