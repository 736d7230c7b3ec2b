"""What `cnnc check` prints: a per-layer table (like Keras' summary or torchinfo) and its JSON form."""
from __future__ import annotations

from .ir import CONV_KINDS, Layer, Network
from .shapes import fmt_shape

FLOAT32_BYTES = 4


def c_backend_memory(network: Network, dtype: str = "float32") -> dict | None:
    """What the C backend allocates besides parameters and their gradients, from its plan (the buffers its
    kernels use: activations, saved state such as max-pool winners and padded inputs, and the scratch of the
    blocked kernels): {"per_sample": bytes per sample, "fixed": bytes whatever the batch}. The C model
    allocates exactly fixed + n * per_sample for a batch of n (plus 128 bytes of alignment slack). None if
    the C backend cannot plan the network (a buffer past 2^31 elements per sample)."""
    from .backends.c_codegen import ITEM_SIZE, plan_network

    try:
        plan = plan_network(network, "", dtype)
    except ValueError:
        return None
    item = ITEM_SIZE[dtype]
    return {"per_sample": plan.act_count * item + plan.argmax_count * 4, "fixed": plan.fixed_count * item}


def layer_record(layer: Layer) -> dict:
    """name: the full dotted name (`s1.c1` in block instance s1); inputs: the tensors it reads;
    macs of a grouped convolution: output elements x C/groups x kernel area."""
    record = {"name": layer.name, "kind": layer.kind, "inputs": list(layer.inputs), "output": list(layer.out_shape),
              "params": layer.param_count, "macs": layer.macs}
    if layer.activation:
        record["activation"] = layer.activation
    if layer.groups != 1:
        record["groups"] = layer.groups
    if layer.ceil:
        record["ceil"] = True
    if not layer.count_pad:
        record["count_pad"] = False
    if layer.buffers:
        record["buffers"] = sum(b.size for b in layer.buffers)
    if layer.receptive_field:
        record["receptive_field"] = list(layer.receptive_field)
    return record


def network_record(network: Network) -> dict:
    return {
        "name": network.name,
        "file": network.file,
        "input": list(network.input_shape),
        "output": list(network.output_shape),
        "layers": [layer_record(layer) for layer in network.layers],
        "params": network.param_count,
        "buffers": sum(b.size for b in network.buffer_specs),
        "macs": network.macs,
        "activation_bytes": network.activation_elements * FLOAT32_BYTES,
        "c_backend_bytes": c_backend_memory(network),
        "loss": network.loss,
        "weight_sharing": weight_sharing(network),
        "warnings": [{"line": w.loc.line, "col": w.loc.col, "message": w.message} if w.loc else {"message": w.message}
                     for w in network.warnings],
    }


def dense_equivalent_params(layer: Layer) -> int:
    """Parameters of a dense layer mapping the same input to the same output (with a bias if the layer has one):
    what weight sharing saves for a convolution."""
    return layer.in_size * layer.out_size + (layer.out_size if layer.bias else 0)


def weight_sharing(network: Network) -> list[dict]:
    """For each convolution: its parameters, and those of a dense layer with the same input and output sizes."""
    return [{"layer": layer.name, "params": layer.param_count, "dense_params": dense_equivalent_params(layer)}
            for layer in network.layers if layer.kind in CONV_KINDS]


def _sharing_line(layer: Layer) -> str:
    dense = dense_equivalent_params(layer)
    arithmetic = f"{layer.in_size:,} x {layer.out_size:,}" + (f" + {layer.out_size:,}" if layer.bias else "")
    return (f"weight sharing: {layer.name} has {layer.param_count:,} parameters; a dense layer from "
            f"{fmt_shape(layer.in_shape)} to {fmt_shape(layer.out_shape)} would need {arithmetic} = {dense:,} "
            f"({dense / layer.param_count:,.0f}x as many)")


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _c_memory_line(network: Network) -> str:
    """The C backend runs every network the front end accepts (graphs and issue 15's additions included)."""
    memory = c_backend_memory(network)
    if memory is None:
        return "C backend memory: too large (a buffer holds more than 2^31 - 1 elements per sample)"
    return (f"C backend memory (float32, with saved state and scratch): {human_bytes(memory['per_sample'])} per sample "
            f"+ {human_bytes(memory['fixed'])} fixed")


def _kind_cell(layer: Layer) -> str:
    return f"{layer.kind}+{layer.activation}" if layer.activation else layer.kind


def _rf_cell(layer: Layer) -> str:
    return "x".join(str(r) for r in layer.receptive_field) if layer.receptive_field else ""


def _reads_cells(network: Network) -> list[str]:
    """Per layer, its inputs where they are not simply the previous statement's output, else ""."""
    cells, previous = [], network.input_name
    for layer in network.layers:
        cells.append("" if layer.inputs == (previous,) else ", ".join(layer.inputs))
        previous = layer.name
    return cells


def summary_table(network: Network) -> str:
    """One row per layer: name, kind, output shape, parameters, MACs, receptive field; then totals.
    A graph gets a `reads` column: each layer's inputs where they are not the previous statement's output."""
    header = ("layer", "kind", "output", "params", "MACs", "receptive field")
    input_rf = "x".join("1" for _ in network.input_shape[1:])  # "1x1" for images, "1" for signals, "" if flat
    rows = [(network.input_name, "input", fmt_shape(network.input_shape), "0", "0", input_rf)]
    rows += [(layer.name, _kind_cell(layer), fmt_shape(layer.out_shape), f"{layer.param_count:,}", f"{layer.macs:,}",
              _rf_cell(layer)) for layer in network.layers]
    reads = _reads_cells(network)
    if any(reads):
        header = header[:2] + ("reads",) + header[2:]
        rows = [row[:2] + (cell,) + row[2:] for row, cell in zip(rows, [""] + reads)]
    right = {header.index("params"), header.index("MACs")}
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(header))
    params_bytes = network.param_count * FLOAT32_BYTES
    act_bytes = network.activation_elements * FLOAT32_BYTES
    totals = [
        f"parameters: {network.param_count:,} ({human_bytes(params_bytes)} as float32)" + (
            "" if not network.buffer_specs else
            f", trainable; plus {sum(b.size for b in network.buffer_specs):,} values of batch norm running statistics"),
        f"multiply-accumulates per sample: {network.macs:,}",
        f"activation memory per sample: {network.activation_elements:,} values ({human_bytes(act_bytes)} as float32)",
        _c_memory_line(network),
        f"loss: {network.loss or 'none'}",
    ]
    totals += [_sharing_line(layer) for layer in network.layers if layer.kind in CONV_KINDS and layer.groups == 1]
    title = f"model {network.name} ({network.file}): input {fmt_shape(network.input_shape)} -> output {fmt_shape(network.output_shape)}"
    return "\n".join([title, line(header), rule, *(line(r) for r in rows), rule, *totals])
