"""AST -> shape-inferred IR: check every statement and compute every layer's output shape.

Per spatial axis, for convolution and pooling (PyTorch's formula):
    out = (in + pad_before + pad_after - dilation*(kernel-1) - 1) // stride + 1

Every mistake in a file is collected and raised together as one SpecError, each located at the
offending token, with the arithmetic and, where one is obvious, the fix. Within a model, argument
and naming mistakes are reported for every layer; shape inference stops at the first layer whose
shapes do not fit (later shapes would be guesses).

The pass reads top-down: infer -> _infer_model -> _infer_layers -> _check_arguments, then one
function per layer kind (_conv, _pool, _dense, ...) sharing _window for the geometry.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from math import prod

from .diagnostics import Diagnostic, Loc, SpecError
from .ir import ACTIVATIONS, CONV_KINDS, LAYER_KINDS, LOSSES, POOL_KINDS, Layer, Network, ParamSpec
from .syntax import InputStmt, LayerStmt, LossStmt, ModelDecl, Program, Value

MAX_ELEMENTS = 2**31 - 1  # per sample, per tensor: indices must fit a 32-bit int
KEYWORDS = ("model", "input", "loss")
RESERVED = set(LAYER_KINDS) | set(KEYWORDS)
AXIS_NAMES = {1: ("length",), 2: ("height", "width")}
AXIS_UNITS = {"length": ("sample", "samples"), "height": ("row", "rows"), "width": ("column", "columns")}
RELU_LIKE = ("relu", "leaky_relu")


class _Mistake(Exception):
    """One located error in a statement. Raised inside this module, collected, never escapes it."""

    def __init__(self, message: str, loc: Loc | None, hint: str | None = None):
        super().__init__(message)
        self.diagnostic = Diagnostic("error", message, loc, hint)


def closest(word: str, choices) -> str | None:
    """The choice `word` most likely misspells (ignoring case), or None."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.7)
    return by_lower[close[0]] if close else None


def did_you_mean(word: str, choices) -> str:
    close = closest(word, choices)
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
    """type: "count" (positive int), "window" (positive int, or a pair for 2-D layers), "padding"
    (non-negative int or pair, `same` or `valid`), "bool", "activation", "slope" (a number) or
    "rate" (a number in [0, 1)). default: the value when the argument is absent, or REQUIRED;
    None for a pooling stride means "the window size"."""

    type: str
    default: object = REQUIRED


_CONV_ARGS = {"filters": ArgSpec("count"), "kernel": ArgSpec("window"), "stride": ArgSpec("window", 1),
              "padding": ArgSpec("padding", 0), "dilation": ArgSpec("window", 1), "bias": ArgSpec("bool", True),
              "activation": ArgSpec("activation", None), "slope": ArgSpec("slope", 0.01)}
_POOL_ARGS = {"size": ArgSpec("window"), "stride": ArgSpec("window", None), "padding": ArgSpec("padding", 0)}
KIND_ARGS: dict[str, dict[str, ArgSpec]] = {
    **{k: _CONV_ARGS for k in CONV_KINDS},
    **{k: _POOL_ARGS for k in POOL_KINDS},
    "global_avgpool": {}, "flatten": {},
    "dense": {"units": ArgSpec("count"), "bias": ArgSpec("bool", True), "activation": ArgSpec("activation", None),
              "slope": ArgSpec("slope", 0.01)},
    "relu": {}, "sigmoid": {}, "tanh": {}, "softmax": {}, "leaky_relu": {"slope": ArgSpec("slope", 0.01)},
    "dropout": {"rate": ArgSpec("rate", 0.5)},
}
_EXAMPLES = {"filters": "filters=16", "kernel": "kernel=3", "size": "size=2", "units": "units=10"}


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
    """`same`, or the padding before (= after) each axis."""
    if value.kind != "word":
        return _window_value(value, slot, minimum=0)
    if value.value == "valid":
        return (0,) * slot.dims
    if value.value == "same" and slot.kind in POOL_KINDS:
        raise _Mistake(f"{slot}: 'same' is for convolutions; pooling takes an integer padding", value.loc,
                       "pooling with stride 1 and an odd size k keeps the size with padding=(k-1)/2")
    if value.value != "same":
        raise _Mistake(f"{slot} must be an integer, a pair, 'same' or 'valid'; got '{value}'"
                       f"{did_you_mean(value.value, ('same', 'valid'))}", value.loc)
    return "same"


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


def _rate_value(value: Value, slot: _Slot) -> float:
    rate = _number(value, slot)
    if not 0 <= rate < 1:
        raise _Mistake(f"{slot} must be a number in [0, 1); got {value}", value.loc,
                       "rate is the probability of dropping a value, e.g. rate=0.5")
    return rate


_CHECKERS = {
    "count": lambda value, slot: _integer(value, slot, 1),
    "window": _window_value,
    "padding": _padding_value,
    "bool": _bool_value,
    "activation": _activation_value,
    "slope": _number,
    "rate": _rate_value,
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
        try:
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
            spread = spec.type in ("window", "padding") and default is not None  # one value per axis
            values[key] = (default,) * dims if spread else default
    return _Args(values, given)


def _takes(kind: str, key: str) -> str:
    if not KIND_ARGS[kind]:
        hint = f"{kind} takes no arguments"
        return hint + ("; for a slope use leaky_relu(slope=...)" if key == "slope" else "")
    return f"{kind} takes " + ", ".join(KIND_ARGS[kind])


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
    """One layer statement being inferred: the statement, its resolved name, its checked arguments, its input."""

    stmt: LayerStmt
    name: str
    args: _Args
    x: _Tensor

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
    seen: dict[str, Loc] = {}
    for decl in program.models:
        if decl.name in seen:
            errors.append(Diagnostic("error", f"duplicate model name '{decl.name}' (first defined at line "
                                     f"{seen[decl.name].line})", decl.loc, "give each model in a file its own name"))
        seen.setdefault(decl.name, decl.loc)
        network = _infer_model(decl, program.file, errors)
        if network is not None:
            networks.append(network)
    if errors:
        raise SpecError(_in_source_order(errors), source)
    return networks


def _in_source_order(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(diagnostics, key=lambda d: (d.loc.line, d.loc.col) if d.loc else (0, 0))


def _infer_model(decl: ModelDecl, file: str, errors: list[Diagnostic]) -> Network | None:
    first_error = len(errors)
    input_stmt = _the_input(decl, errors)
    loss = _the_loss(decl, errors)
    stmts = [s for s in decl.statements if isinstance(s, LayerStmt)]
    if not stmts:
        errors.append(Diagnostic("error", f"model '{decl.name}' has no layers", decl.end,
                                 "add layers between the input and the closing '}'"))
    x = _input_tensor(input_stmt, errors) if input_stmt is not None else None
    warnings: list[Diagnostic] = []
    layers = _infer_layers(stmts, input_stmt, x, errors, warnings)
    if layers is not None and x is not None and loss is not None:
        _check_loss(loss, layers[-1].out_shape if layers else x.shape, errors)
    if len(errors) > first_error:
        return None
    if loss is not None and loss.kind == "cross_entropy" and "softmax" in (layers[-1].kind, layers[-1].activation):
        warnings.append(Diagnostic("warning", "cross_entropy applies softmax itself; a softmax before it squashes "
                                   "the scores twice and slows learning", layers[-1].loc,
                                   "remove the softmax: the model's output is then the raw class scores (logits)"))
    return Network(name=decl.name, input_name=input_stmt.name or "input", input_shape=x.shape,
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


def _check_loss(loss: LossStmt, out_shape: tuple[int, ...], errors: list[Diagnostic]) -> None:
    if loss.kind == "cross_entropy" and len(out_shape) != 1:
        errors.append(Diagnostic("error", f"cross_entropy needs flat class scores, but the model's output is "
                                 f"{fmt_shape(out_shape)}", loss.loc,
                                 "add `flatten` and a `dense(units=CLASSES)` layer before the loss"))


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


# ---- layers --------------------------------------------------------------------------------------
def _infer_layers(stmts: list[LayerStmt], input_stmt: InputStmt | None, x: _Tensor | None,
                  errors: list[Diagnostic], warnings: list[Diagnostic]) -> list[Layer] | None:
    """Walk the layers in order. Names and arguments are checked for every layer; shapes until the first
    layer that does not fit. Returns the layers, or None if any shape is unknown (x None: no usable input)."""
    names: dict[str, Loc] = {}
    if input_stmt is not None and input_stmt.name:
        names[input_stmt.name] = input_stmt.name_loc
    counts: dict[str, int] = {}
    layers: list[Layer] = []
    for stmt in stmts:
        counts[stmt.kind] = counts.get(stmt.kind, 0) + 1
        name = stmt.name or f"{stmt.kind}_{counts[stmt.kind]}"
        _check_name(stmt, name, names, errors)
        if stmt.kind not in LAYER_KINDS:
            errors.append(_unknown_kind(stmt))
            x = None
            continue
        args = _check_arguments(stmt, name, errors)
        if args is None or x is None:
            x = None
            continue
        try:
            layer = _check_size(_INFER[stmt.kind](_Step(stmt, name, args, x), warnings))
        except _Mistake as mistake:
            errors.append(mistake.diagnostic)
            x = None
            continue
        layers.append(layer)
        x = _output_of(layer)
    return layers if x is not None else None


def _unknown_kind(stmt: LayerStmt) -> Diagnostic:
    if stmt.kind in KEYWORDS:
        return Diagnostic("error", f"'{stmt.kind}' is a keyword and cannot start a layer statement here", stmt.loc)
    return Diagnostic("error", f"unknown layer kind '{stmt.kind}'{did_you_mean(stmt.kind, LAYER_KINDS)}", stmt.loc,
                      "layer kinds: " + ", ".join(LAYER_KINDS))


def _check_name(stmt: LayerStmt, name: str, names: dict[str, Loc], errors: list[Diagnostic]) -> None:
    loc = stmt.name_loc or stmt.loc
    if stmt.name in RESERVED:
        errors.append(Diagnostic("error", f"'{stmt.name}' is a reserved word (a layer kind or keyword) and cannot "
                                 "name a layer", loc, f"choose another name, e.g. '{stmt.name}1'"))
    elif name in names:
        first = f"line {names[name].line}" if names[name] else "the input"
        if stmt.name is None:
            message = (f"the unnamed {stmt.kind} is named '{name}' automatically, but that name is already used "
                       f"(at {first})")
            hint = f"name this layer, e.g. `{stmt.kind} {name}b`, or rename the other one"
        else:
            message, hint = f"duplicate layer name '{name}' (first used at {first})", "every layer in a model needs its own name"
        errors.append(Diagnostic("error", message, loc, hint))
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
    """x: (C, *in) -> (filters, *out); weight (filters, C, *kernel)."""
    window = _window(step, step.args["kernel"], step.args["stride"], step.args["dilation"], warnings)
    channels, filters, kernel = step.x.shape[0], step.args["filters"], window.kernel
    if step.args["activation"] == "softmax":
        raise _Mistake(f"{step.title}: activation=softmax needs flat class scores; a convolution outputs feature maps",
                       step.loc("activation"), "apply softmax after flatten and a dense layer")
    fan_in, fan_out = channels * prod(kernel), filters * prod(kernel)
    params = (ParamSpec(f"{step.name}.weight", (filters, channels, *kernel), fan_in, fan_out, "glorot"),)
    if step.args["bias"]:
        params += (ParamSpec(f"{step.name}.bias", (filters,), fan_in, fan_out, "zeros"),)
    return replace(window.layer(step, (filters, *window.out)), filters=filters, bias=step.args["bias"],
                   activation=step.args["activation"], slope=step.args["slope"], params=params,
                   macs=filters * prod(window.out) * channels * prod(kernel))


def _pool(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """x: (C, *in) -> (C, *out); the stride defaults to the window size."""
    size = step.args["size"]
    stride = step.args["stride"] or size
    window = _window(step, size, stride, (1,) * len(size), warnings)
    return window.layer(step, (step.x.shape[0], *window.out))


def _global_avgpool(step: _Step, warnings: list[Diagnostic]) -> Layer:
    """x: (C, *spatial) -> (C,)."""
    if len(step.x.shape) == 1:
        raise _Mistake(f"{step.title} needs a [C, L] or [C, H, W] input, but {step.x.described('the flat')}",
                       step.stmt.loc, "global average pooling must come before flatten")
    return Layer(step.name, step.kind, step.x.shape, step.x.shape[:1], step.stmt.loc)


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
    if step.kind == "softmax" and len(step.x.shape) != 1:
        raise _Mistake(f"{step.title} normalises flat class scores, but {step.x.described()}", step.stmt.loc,
                       "add `flatten` (and a dense layer) before softmax")
    return Layer(step.name, step.kind, step.x.shape, step.x.shape, step.stmt.loc,
                 slope=step.args.values.get("slope", 0.01), rate=step.args.values.get("rate", 0.0),
                 receptive_field=step.x.receptive_field, jump=step.x.jump)


_INFER = {
    **{k: _conv for k in CONV_KINDS},
    **{k: _pool for k in POOL_KINDS},
    "global_avgpool": _global_avgpool, "flatten": _flatten, "dense": _dense,
    **{k: _elementwise for k in ACTIVATIONS + ("dropout",)},
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

    def layer(self, step: _Step, out_shape: tuple[int, ...]) -> Layer:
        """The Layer with this geometry and its receptive field: r' = r + dilation*(kernel-1)*jump, jump' = jump*stride."""
        rf = tuple(r + d * (k - 1) * j for r, j, k, d in zip(step.x.receptive_field, step.x.jump, self.kernel, self.dilation))
        jump = tuple(j * s for j, s in zip(step.x.jump, self.stride))
        return Layer(step.name, step.kind, step.x.shape, out_shape, step.stmt.loc, kernel=self.kernel,
                     stride=self.stride, dilation=self.dilation, pad_before=self.pad_before, pad_after=self.pad_after,
                     receptive_field=rf, jump=jump)


def _window(step: _Step, kernel, stride, dilation, warnings: list[Diagnostic]) -> _Window:
    """Resolve padding and compute the output size per axis: out = (in + pb + pa - d*(k-1) - 1) // s + 1."""
    dims = len(kernel)
    _require_spatial(step, dims)
    pad_before, pad_after = _padding(step, kernel, stride, dilation)
    out = []
    for axis in range(dims):
        size, padded = step.x.shape[1 + axis], step.x.shape[1 + axis] + pad_before[axis] + pad_after[axis]
        span = dilation[axis] * (kernel[axis] - 1) + 1
        if span > padded:
            raise _too_large(step, axis, kernel[axis], dilation[axis], pad_before[axis], pad_after[axis])
        out.append((padded - span) // stride[axis] + 1)
    window = _Window(kernel, stride, dilation, pad_before, pad_after, tuple(out))
    warnings.extend(_unread_input_warnings(step, window))
    return window


def _padding(step: _Step, kernel, stride, dilation) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(pad_before, pad_after) per axis. `same` pads dilation*(kernel-1) in total, the odd one after."""
    padding = step.args["padding"]
    if padding == "same":
        if any(s != 1 for s in stride):
            raise _Mistake(f"{step.title}: padding=same needs stride 1, but stride is {_show(stride)}",
                           step.loc("padding"), "give the padding as a number, e.g. padding="
                           + _show(tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))))
        total = tuple(d * (k - 1) for d, k in zip(dilation, kernel))
        return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
    if step.kind in POOL_KINDS:
        for axis, (p, k) in enumerate(zip(padding, kernel)):
            if p > k // 2:
                where = f" {AXIS_NAMES[len(kernel)][axis]}" if len(kernel) > 1 and len(set(padding)) > 1 else ""
                raise _Mistake(f"{step.title}: padding{where} {p} is more than half the pooling window {k} "
                               f"(at most {k} // 2 = {k // 2})", step.loc("padding"),
                               f"use padding={k // 2} or less" if k > 1 else "remove the padding")
    return padding, padding


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
        left_over = (size + pb + pa - span) % s - pa  # input rows after the last window (the padding goes first)
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
    result = []
    for i, layer in enumerate(layers):
        if layer.params and _feeds_relu(layers, i):
            specs = tuple(replace(p, init="he") if p.init == "glorot" else p for p in layer.params)
            layer = replace(layer, params=specs)
        result.append(layer)
    return result


def _feeds_relu(layers: list[Layer], i: int) -> bool:
    if layers[i].activation in RELU_LIKE:
        return True
    if layers[i].activation is not None:
        return False
    for nxt in layers[i + 1:]:
        if nxt.kind in RELU_LIKE:
            return True
        if nxt.kind not in POOL_KINDS + ("dropout", "flatten"):
            return False
    return False
