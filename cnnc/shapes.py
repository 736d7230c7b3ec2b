"""AST -> shape-inferred IR: check every statement and compute every layer's output shape.

Per spatial axis, for convolution and pooling:
    out = floor((in + pad_before + pad_after - dilation*(kernel-1) - 1) / stride) + 1

All mistakes in a model are collected and raised together as one SpecError, each located at the
offending token, with the arithmetic and, where one is obvious, the fix.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from math import prod

from .diagnostics import Diagnostic, Loc, SpecError
from .ir import ACTIVATIONS, CONV_KINDS, LAYER_KINDS, LOSSES, POOL_KINDS, Layer, Network, ParamSpec
from .syntax import Argument, InputStmt, LayerStmt, LossStmt, ModelDecl, Program, Value

MAX_ELEMENTS = 2**31 - 1  # per sample, per tensor: indices must fit a 32-bit int
RESERVED = set(LAYER_KINDS) | {"model", "input", "loss"}
AXIS_NAMES = {1: ("length",), 2: ("height", "width")}
RELU_LIKE = ("relu", "leaky_relu")


# ---- the arguments each kind takes ---------------------------------------------------------------
@dataclass(frozen=True)
class ArgRule:
    """type: "count" (positive int), "window" (positive int or pair), "padding", "bool", "activation",
    "slope" (real number), "rate" (in [0, 1))."""

    type: str
    required: bool = False


_CONV_ARGS = {"filters": ArgRule("count", True), "kernel": ArgRule("window", True), "stride": ArgRule("window"),
              "padding": ArgRule("padding"), "dilation": ArgRule("window"), "bias": ArgRule("bool"),
              "activation": ArgRule("activation"), "slope": ArgRule("slope")}
_POOL_ARGS = {"size": ArgRule("window", True), "stride": ArgRule("window"), "padding": ArgRule("padding")}
KIND_ARGS: dict[str, dict[str, ArgRule]] = {
    **{k: _CONV_ARGS for k in CONV_KINDS},
    **{k: _POOL_ARGS for k in POOL_KINDS},
    "global_avgpool": {}, "flatten": {},
    "dense": {"units": ArgRule("count", True), "bias": ArgRule("bool"), "activation": ArgRule("activation"),
              "slope": ArgRule("slope")},
    "relu": {}, "sigmoid": {}, "tanh": {}, "softmax": {}, "leaky_relu": {"slope": ArgRule("slope")},
    "dropout": {"rate": ArgRule("rate")},
}


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


class _Errors:
    def __init__(self):
        self.items: list[Diagnostic] = []

    def add(self, message: str, loc: Loc | None, hint: str | None = None) -> None:
        self.items.append(Diagnostic("error", message, loc, hint))


# ---- entry point ---------------------------------------------------------------------------------
def infer(program: Program, source: str | None = None) -> list[Network]:
    """Shape-check every model in the program. Raises SpecError listing every error found."""
    errors = _Errors()
    networks = []
    seen: dict[str, Loc] = {}
    for decl in program.models:
        if decl.name in seen:
            first = seen[decl.name]
            errors.add(f"duplicate model name '{decl.name}' (first defined at line {first.line})", decl.loc,
                       "give each model in a file its own name")
        seen.setdefault(decl.name, decl.loc)
        network = _infer_model(decl, program.file, errors)
        if network is not None:
            networks.append(network)
    if errors.items:
        raise SpecError(errors.items, source)
    return networks


def _infer_model(decl: ModelDecl, file: str, errors: _Errors) -> Network | None:
    n_errors = len(errors.items)
    inputs = [s for s in decl.statements if isinstance(s, InputStmt)]
    losses = [s for s in decl.statements if isinstance(s, LossStmt)]
    statements = list(decl.statements)
    if not inputs:
        errors.add(f"model '{decl.name}' has no input statement", decl.loc,
                   "begin the model with its input, e.g. `input image[1, 28, 28]` ([C, H, W]) or `input signal[1, 128]` ([C, L])")
        return None
    if statements[0] is not inputs[0]:
        errors.add("the input statement must come first in the model", inputs[0].loc,
                   "move `input ...` to the first line of the model")
    for extra in inputs[1:]:
        errors.add(f"model '{decl.name}' has more than one input statement", extra.loc, "a model has one input")
    for loss in losses:
        if loss is not statements[-1]:
            errors.add("the loss statement must be the last statement of the model", loss.loc)
        if loss.kind not in LOSSES:
            errors.add(f"unknown loss '{loss.kind}'{did_you_mean(loss.kind, LOSSES)}", loss.loc,
                       "losses: " + ", ".join(LOSSES))
    input_shape = _input_shape(inputs[0], errors)
    stmts = [s for s in statements if isinstance(s, LayerStmt)]
    if not stmts:
        errors.add(f"model '{decl.name}' has no layers", decl.end, "add layers between the input and the closing '}'")
    layers, warnings = _infer_layers(stmts, inputs[0], input_shape, errors)
    loss = losses[-1].kind if losses else None
    if layers is not None and losses and loss == "cross_entropy":
        out = layers[-1].out_shape if layers else input_shape
        if len(out) != 1:
            errors.add(f"cross_entropy needs flat class scores, but the model's output is {fmt_shape(out)}",
                       losses[-1].loc, "add `flatten` and a `dense(units=CLASSES)` layer before the loss")
    if len(errors.items) > n_errors or layers is None or input_shape is None:
        return None
    if loss == "cross_entropy" and layers and (layers[-1].kind == "softmax" or layers[-1].activation == "softmax"):
        warnings.append(Diagnostic("warning", "cross_entropy applies softmax itself; a softmax before it squashes "
                                   "the scores twice and slows learning", layers[-1].loc,
                                   "remove the softmax: the model's output is then the raw class scores (logits)"))
    return Network(name=decl.name, input_name=inputs[0].name or "input", input_shape=input_shape,
                   layers=tuple(_with_inits(layers)), loss=loss, file=file, loc=decl.loc, warnings=tuple(warnings))


def _input_shape(stmt: InputStmt, errors: _Errors) -> tuple[int, ...] | None:
    ok = True
    for dim in stmt.dims:
        if dim.kind != "int" or dim.value <= 0:
            errors.add(f"input dimensions must be positive integers; got {dim}", dim.loc)
            ok = False
    if not 1 <= len(stmt.dims) <= 3:
        errors.add(f"input takes [C, L] for 1-D signals or [C, H, W] for images (or [D] for flat vectors); "
                   f"got {len(stmt.dims)} dimensions", stmt.loc)
        ok = False
    if not ok:
        return None
    shape = tuple(d.value for d in stmt.dims)
    if prod(shape) > MAX_ELEMENTS:
        errors.add(f"input {fmt_shape(shape)} has {prod(shape):,} elements per sample, over the limit of 2^31 - 1",
                   stmt.loc)
        return None
    return shape


# ---- layers --------------------------------------------------------------------------------------
def _infer_layers(stmts: list[LayerStmt], input_stmt: InputStmt, input_shape, errors: _Errors):
    """Walk the layers in order -> (layers or None, warnings). Argument errors are reported for every
    layer; shape errors stop inference at the first (later shapes would be guesses), giving None."""
    names: dict[str, Loc] = {}
    if input_stmt.name:
        names[input_stmt.name] = input_stmt.loc
    counts: dict[str, int] = {}
    layers: list[Layer] = []
    shape = input_shape
    previous = input_stmt.name or "the input"
    warnings: list[Diagnostic] = []
    rf = [(1, 1)] * (len(input_shape) - 1) if input_shape and len(input_shape) > 1 else []
    for stmt in stmts:
        if stmt.kind not in LAYER_KINDS:
            if stmt.kind in ("model", "input", "loss"):
                errors.add(f"'{stmt.kind}' is a keyword and cannot start a layer statement here", stmt.loc)
            else:
                errors.add(f"unknown layer kind '{stmt.kind}'{did_you_mean(stmt.kind, LAYER_KINDS)}", stmt.loc,
                           "layer kinds: " + ", ".join(LAYER_KINDS))
            shape = None
            continue
        counts[stmt.kind] = counts.get(stmt.kind, 0) + 1
        name = stmt.name or f"{stmt.kind}_{counts[stmt.kind]}"
        _check_name(stmt, name, names, errors)
        args = _check_arguments(stmt, name, errors)
        if args is None or shape is None:
            shape = None
            continue
        layer, new_rf = _infer_layer(stmt, name, args, shape, previous, rf, errors, warnings)
        if layer is None:
            shape = None
            continue
        layers.append(layer)
        shape, previous, rf = layer.out_shape, f"'{name}'", new_rf
    return (layers if shape is not None else None), warnings


def _check_name(stmt: LayerStmt, name: str, names: dict[str, Loc], errors: _Errors) -> None:
    if stmt.name is not None and stmt.name in RESERVED:
        errors.add(f"'{stmt.name}' is a reserved word (a layer kind or keyword) and cannot name a layer", stmt.name_loc,
                   f"choose another name, e.g. '{stmt.name}1'")
    elif name in names:
        errors.add(f"duplicate layer name '{name}' (first used at line {names[name].line})",
                   stmt.name_loc or stmt.loc, "every layer in a model needs its own name")
    names.setdefault(name, stmt.name_loc or stmt.loc)


def _check_arguments(stmt: LayerStmt, name: str, errors: _Errors) -> dict[str, Value] | None:
    """Known names, no duplicates, the right types; returns {key: Value} or None after an error."""
    rules = KIND_ARGS[stmt.kind]
    given: dict[str, Value] = {}
    ok = True
    for arg in stmt.arguments:
        if arg.key not in rules:
            takes = ", ".join(rules) if rules else "no arguments"
            errors.add(f"{stmt.kind} '{name}' has no argument '{arg.key}'{did_you_mean(arg.key, rules)}", arg.loc,
                       f"{stmt.kind} takes {takes}")
            ok = False
        elif arg.key in given:
            errors.add(f"argument '{arg.key}' is given twice", arg.loc, "remove one of them")
            ok = False
        elif not _check_value(stmt, name, arg, rules[arg.key], errors):
            ok = False
        given.setdefault(arg.key, arg.value)
    for key, rule in rules.items():
        if rule.required and key not in given:
            example = {"filters": "filters=16", "kernel": "kernel=3", "size": "size=2", "units": "units=10"}[key]
            errors.add(f"{stmt.kind} '{name}' needs the argument '{key}'", stmt.loc, f"add it, e.g. {stmt.kind}({example})")
            ok = False
    if ok and "slope" in given and stmt.kind != "leaky_relu" and _word(given.get("activation")) != "leaky_relu":
        errors.add("'slope' only applies with activation=leaky_relu", given["slope"].loc)
        ok = False
    return given if ok else None


def _word(value: Value | None) -> str | None:
    return value.value if value is not None and value.kind == "word" else None


def _check_value(stmt: LayerStmt, name: str, arg: Argument, rule: ArgRule, errors: _Errors) -> bool:
    value, what = arg.value, f"{stmt.kind} '{name}': {arg.key}"
    dims = 1 if stmt.kind.endswith("1d") else 2

    def positive_int(v: Value, allow_zero=False) -> bool:
        if v.kind != "int":
            kind_word = "a pair" if v.kind == "pair" else ("a float" if v.kind == "float" else f"the word '{v}'")
            errors.add(f"{what} must be {'a non-negative' if allow_zero else 'a positive'} integer; got {kind_word} {v if v.kind != 'word' else ''}".rstrip(),
                       v.loc, f"write {arg.key}={max(1, int(v.value)) if v.kind == 'float' else 3}" if v.kind == "float" else None)
            return False
        if v.value < 0 or (v.value == 0 and not allow_zero):
            errors.add(f"{what} must be {'non-negative' if allow_zero else 'positive'}; got {v.value}", v.loc)
            return False
        return True

    def window(v: Value, allow_zero=False) -> bool:
        if v.kind == "pair":
            if dims == 1:
                errors.add(f"{what} is a pair {v}, but {stmt.kind} is 1-D and takes a single integer", v.loc,
                           f"write {arg.key}={v.value[0]}, or use the 2-D layer {stmt.kind[:-2]}2d")
                return False
            return all([positive_int(v.value[0], allow_zero), positive_int(v.value[1], allow_zero)])
        return positive_int(v, allow_zero)

    if rule.type == "count":
        return positive_int(value)
    if rule.type == "window":
        return window(value)
    if rule.type == "padding":
        if value.kind == "word":
            if value.value not in ("same", "valid"):
                errors.add(f"{what} must be an integer, a pair, 'same' or 'valid'; got '{value}'"
                           f"{did_you_mean(value.value, ('same', 'valid'))}", value.loc)
                return False
            if value.value == "same" and stmt.kind in POOL_KINDS:
                errors.add(f"{what}: 'same' is for convolutions; pooling takes an integer padding", value.loc)
                return False
            return True
        return window(value, allow_zero=True)
    if rule.type == "bool":
        if value.kind != "word" or value.value not in ("true", "false"):
            errors.add(f"{what} must be true or false; got {value}", value.loc)
            return False
        return True
    if rule.type == "activation":
        if value.kind != "word" or value.value not in ACTIVATIONS + ("none",):
            word = value.value if value.kind == "word" else str(value)
            errors.add(f"unknown activation '{word}'{did_you_mean(str(word), ACTIVATIONS)}", value.loc,
                       "activations: " + ", ".join(ACTIVATIONS) + ", none")
            return False
        return True
    if rule.type == "slope":
        if value.kind not in ("int", "float"):
            errors.add(f"{what} must be a number; got {value}", value.loc)
            return False
        return True
    if rule.type == "rate":
        if value.kind not in ("int", "float") or not 0 <= value.value < 1:
            errors.add(f"{what} must be a number in [0, 1); got {value}", value.loc,
                       "rate is the probability of dropping a value, e.g. rate=0.5")
            return False
        return True
    raise AssertionError(rule.type)


def _pair(value: Value | None, default: tuple[int, ...], dims: int) -> tuple[int, ...]:
    if value is None:
        return default
    if value.kind == "pair":
        return (value.value[0].value, value.value[1].value)
    return (value.value,) * dims


def _infer_layer(stmt, name, args, shape, previous, rf, errors, warnings):
    kind = stmt.kind
    if kind in CONV_KINDS or kind in POOL_KINDS:
        return _infer_window(stmt, name, args, shape, previous, rf, errors, warnings)
    activation = _word(args.get("activation"))
    activation = None if activation == "none" else activation
    slope = float(args["slope"].value) if "slope" in args else 0.01
    if kind == "dense":
        if len(shape) != 1:
            errors.add(f"dense '{name}' needs a flat input, but {previous} outputs {fmt_shape(shape)}", stmt.loc,
                       f"add `flatten` before '{name}' (giving [{prod(shape)}])")
            return None, rf
        units = args["units"].value
        bias = _word(args.get("bias")) != "false"
        params = [ParamSpec(f"{name}.weight", (units, shape[0]), shape[0], units, "glorot")]
        if bias:
            params.append(ParamSpec(f"{name}.bias", (units,), shape[0], units, "zeros"))
        layer = Layer(name, kind, shape, (units,), stmt.loc, units=units, bias=bias, activation=activation,
                      slope=slope, params=tuple(params), macs=shape[0] * units)
        return _checked_size(layer, errors), []
    if kind == "flatten":
        return Layer(name, kind, shape, (prod(shape),), stmt.loc), []
    if kind == "global_avgpool":
        if len(shape) < 2:
            errors.add(f"global_avgpool '{name}' needs a [C, H, W] or [C, L] input, but {previous} outputs the flat "
                       f"{fmt_shape(shape)}", stmt.loc, "global average pooling must come before flatten")
            return None, rf
        return Layer(name, kind, shape, (shape[0],), stmt.loc, receptive_field=None), []
    if kind == "softmax" and len(shape) != 1:
        errors.add(f"softmax '{name}' normalises flat class scores, but {previous} outputs {fmt_shape(shape)}",
                   stmt.loc, "add `flatten` (and a dense layer) before softmax")
        return None, rf
    rate = float(args["rate"].value) if "rate" in args else 0.5
    return Layer(name, kind, shape, shape, stmt.loc, slope=slope, rate=rate if kind == "dropout" else 0.0,
                 receptive_field=tuple(r for r, _ in rf) or None, jump=tuple(j for _, j in rf) or None), rf


def _infer_window(stmt, name, args, shape, previous, rf, errors, warnings):
    """Convolution or pooling: per spatial axis, out = (in + pb + pa - d*(k-1) - 1) // s + 1."""
    kind = stmt.kind
    dims = 1 if kind.endswith("1d") else 2
    if len(shape) != dims + 1:
        want = "[C, L]" if dims == 1 else "[C, H, W]"
        got = {1: "flat", 2: "1-D", 3: "2-D"}[len(shape)]
        hint = {1: f"{kind} must come before flatten/dense",
                2: f"use {kind[:-2]}1d for 1-D signals", 3: f"use {kind[:-2]}2d for images"}[len(shape)]
        errors.add(f"{kind} '{name}' needs a {want} input, but {previous} outputs the {got} {fmt_shape(shape)}",
                   stmt.loc, hint)
        return None, rf
    is_conv = kind in CONV_KINDS
    kernel = _pair(args.get("kernel" if is_conv else "size"), (), dims)
    stride = _pair(args.get("stride"), (1,) * dims if is_conv else kernel, dims)
    dilation = _pair(args.get("dilation"), (1,) * dims, dims)
    padding = args.get("padding")
    if _word(padding) == "same":
        if any(s != 1 for s in stride):
            errors.add(f"{kind} '{name}': padding=same needs stride 1, but stride is {_show(stride)}", padding.loc,
                       "give the padding as a number, e.g. padding=" + str(dilation[0] * (kernel[0] - 1) // 2))
            return None, rf
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        pad_before = tuple(t // 2 for t in total)
        pad_after = tuple(t - t // 2 for t in total)
    else:
        pad_before = pad_after = (0,) * dims if _word(padding) == "valid" else _pair(padding, (0,) * dims, dims)
    if not is_conv:
        for axis, (p, k) in enumerate(zip(pad_before, kernel)):
            if p > k // 2:
                errors.add(f"{kind} '{name}': padding {p} is more than half the pooling window {k} "
                           f"(at most {k // 2})", padding.loc, f"use padding={k // 2} or less")
                return None, rf
    spatial = shape[1:]
    out = []
    for axis in range(dims):
        size, k, s, d, pb, pa = spatial[axis], kernel[axis], stride[axis], dilation[axis], pad_before[axis], pad_after[axis]
        span = d * (k - 1) + 1
        axis_name = AXIS_NAMES[dims][axis]
        if span > size + pb + pa:
            window_word = "kernel" if is_conv else "pooling window"
            dil = f" (dilation {d} spans {span})" if d > 1 else ""
            errors.add(f"{kind} '{name}': {window_word} {k}{dil} is larger than the padded input {axis_name} "
                       f"{size + pb + pa} ({size} + {pb} + {pa}) from {previous}",
                       (args.get("kernel") or args.get("size")).loc,
                       f"use a smaller {'kernel' if is_conv else 'size'}, or pad the input "
                       f"(padding={(span - size + 1) // 2}" + (" or padding=same)" if is_conv else ")"))
            return None, rf
        o = (size + pb + pa - span) // s + 1
        dropped = (size + pb + pa - span) % s - pa
        if dropped > 0:
            warnings.append(Diagnostic(
                "warning", f"{kind} '{name}': stride {s} leaves the last {dropped} input "
                f"{'rows' if axis_name == 'height' else 'columns' if axis_name == 'width' else 'samples'} of {previous}'s "
                f"{axis_name} {size} unused: ({size} + {pb} + {pa} - {span}) = {size + pb + pa - span} is not a multiple of {s}",
                stmt.loc, "pad the input or change the stride/window so that it divides evenly"))
        out.append(o)
    channels = args["filters"].value if is_conv else shape[0]
    new_rf = [(r + (dd * (k - 1)) * j, j * s) for (r, j), k, s, dd in zip(rf, kernel, stride, dilation)]
    params, macs = (), 0
    bias = False
    activation = None
    slope = float(args["slope"].value) if "slope" in args else 0.01
    if is_conv:
        fan_in, fan_out = shape[0] * prod(kernel), channels * prod(kernel)
        bias = _word(args.get("bias")) != "false"
        params = (ParamSpec(f"{name}.weight", (channels, shape[0], *kernel), fan_in, fan_out, "glorot"),)
        if bias:
            params += (ParamSpec(f"{name}.bias", (channels,), fan_in, fan_out, "zeros"),)
        macs = channels * prod(out) * shape[0] * prod(kernel)
        activation = _word(args.get("activation"))
        activation = None if activation == "none" else activation
        if activation == "softmax":
            errors.add(f"{kind} '{name}': activation=softmax needs flat class scores; a convolution outputs feature maps",
                       args["activation"].loc, "apply softmax after flatten and a dense layer")
            return None, rf
    layer = Layer(name, kind, shape, (channels, *out), stmt.loc, kernel=kernel, stride=stride,
                  dilation=dilation if is_conv else (1,) * dims, pad_before=pad_before, pad_after=pad_after,
                  filters=channels if is_conv else 0, bias=bias, activation=activation, slope=slope, params=params,
                  macs=macs, receptive_field=tuple(r for r, _ in new_rf), jump=tuple(j for _, j in new_rf))
    return _checked_size(layer, errors), new_rf


def _show(t: tuple[int, ...]) -> str:
    return str(t[0]) if len(set(t)) == 1 else "(" + ", ".join(map(str, t)) + ")"


def _checked_size(layer: Layer, errors: _Errors) -> Layer | None:
    too_big = [(what, n) for what, n in [("output", layer.out_size)] + [(p.name, p.size) for p in layer.params]
               if n > MAX_ELEMENTS]
    if too_big:
        what, n = too_big[0]
        errors.add(f"{layer.kind} '{layer.name}': {what} {fmt_shape(layer.out_shape) if what == 'output' else ''} "
                   f"has {n:,} elements per sample, over the limit of 2^31 - 1 (2,147,483,647)".replace("  ", " "),
                   layer.loc, "reduce the layer's size, or downsample earlier with stride or pooling")
        return None
    return layer


def _with_inits(layers: list[Layer]) -> list[Layer]:
    """Weights of a layer whose output feeds a ReLU-like activation get He init, others Glorot."""
    result = []
    for i, layer in enumerate(layers):
        if layer.params and _feeds_relu(layers, i):
            specs = tuple(ParamSpec(p.name, p.shape, p.fan_in, p.fan_out, "he") if p.init == "glorot" else p
                          for p in layer.params)
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


