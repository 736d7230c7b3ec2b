"""`cnnc check FILE --html report.html`: one self-contained HTML page per run.

For every model: the totals, the layer table `cnnc check` prints, the architecture diagram of
`cnnc draw` as inline SVG, and the receptive-field growth: per spatial layer a small to-scale
sketch of the input with the region one output sees. Everything is inline (CSS, SVG), so the page
opens anywhere, offline, and can be mailed as one file.
"""
from __future__ import annotations


from ._version import __version__
from .fileio import atomic_write_text
from .ir import Layer, Network
from .shapes import fmt_shape
from .summary import FLOAT32_BYTES, human_bytes

RF_BOX_PX = 84  # the largest extent in a receptive-field sketch, in CSS pixels


def write_report(networks: list[Network], path) -> None:
    """Write the page atomically, readable like any file the user makes (a report is meant to be shared)."""
    atomic_write_text(path, report_html(networks))


def report_html(networks: list[Network]) -> str:
    from jinja2 import Environment
    from markupsafe import Markup

    from .viz import diagram_figure, figure_svg

    models = []
    for network in networks:
        models.append({
            "network": network,
            "totals": totals(network),
            "rows": table_rows(network),
            "diagram": Markup(figure_svg(diagram_figure(network))),
            "growth": [dict(row, sketch=Markup(row["sketch"])) for row in receptive_field_rows(network)],
        })
    template = Environment(autoescape=True).from_string(PAGE)
    return template.render(models=models, version=__version__)


def totals(network: Network) -> list[tuple[str, str]]:
    params_bytes = network.param_count * FLOAT32_BYTES
    act_bytes = network.activation_elements * FLOAT32_BYTES
    return [
        ("input", fmt_shape(network.input_shape)),
        ("output", fmt_shape(network.output_shape)),
        ("parameters", f"{network.param_count:,} ({human_bytes(params_bytes)} as float32)"),
        ("multiply-accumulates per sample", f"{network.macs:,}"),
        ("activation memory per sample", f"{network.activation_elements:,} values ({human_bytes(act_bytes)})"),
        ("loss", network.loss or "none"),
    ]


def table_rows(network: Network) -> list[dict]:
    """The rows of `cnnc check`'s table: the input, then one per layer."""
    rows = [{"name": network.input_name, "kind": "input", "output": fmt_shape(network.input_shape),
             "params": "0", "macs": "0", "rf": extent(1, len(network.input_shape) - 1)}]
    for layer in network.layers:
        rows.append({"name": layer.name, "kind": kind_cell(layer), "output": fmt_shape(layer.out_shape),
                     "params": f"{layer.param_count:,}", "macs": f"{layer.macs:,}",
                     "rf": "×".join(map(str, layer.receptive_field)) if layer.receptive_field else ""})
    return rows


def receptive_field_rows(network: Network) -> list[dict]:
    """Per layer with a spatial output: its receptive field and jump, the share of the input one output
    sees, and an SVG sketch of the input with that field drawn to one scale for the whole model."""
    spatial = [layer for layer in network.layers if layer.receptive_field and len(layer.out_shape) > 1]
    input_extent = network.input_shape[1:]  # (H, W) or (L,)
    biggest = max([max(input_extent)] + [max(layer.receptive_field) for layer in spatial])
    scale = RF_BOX_PX / biggest
    rows = [{"name": network.input_name, "kind": "input", "output": fmt_shape(network.input_shape),
             "rf": extent(1, len(input_extent)), "jump": extent(1, len(input_extent)),
             "share": share(tuple(1 for _ in input_extent), input_extent),
             "sketch": rf_sketch(tuple(1 for _ in input_extent), input_extent, scale)}]
    for layer in spatial:
        rows.append({"name": layer.name, "kind": kind_cell(layer), "output": fmt_shape(layer.out_shape),
                     "rf": "×".join(map(str, layer.receptive_field)),
                     "jump": "×".join(map(str, layer.jump)) if layer.jump else "",
                     "share": share(layer.receptive_field, input_extent),
                     "sketch": rf_sketch(layer.receptive_field, input_extent, scale)})
    return rows


def share(rf: tuple[int, ...], input_extent: tuple[int, ...]) -> str:
    """The fraction of the input one output sees (the field clipped to the input), as a percentage."""
    seen = 1.0
    for r, n in zip(rf, input_extent):
        seen *= min(r, n) / n
    return f"{100 * seen:.1f}%" if seen < 0.999 else "100% (all of it)"


def rf_sketch(rf: tuple[int, ...], input_extent: tuple[int, ...], scale: float) -> str:
    """An inline SVG: the input (grey) and the receptive field of the centre output (blue), centred,
    both `scale` px per input pixel. A 1-D input is a bar."""
    pad = 2
    canvas = RF_BOX_PX + 2 * pad
    if len(input_extent) == 1:
        (n,), (r,) = input_extent, rf
        height = 18
        cx = canvas / 2
        return (f'<svg width="{canvas}" height="{height}" viewBox="0 0 {canvas} {height}" role="img" '
                f'aria-label="receptive field {r} of input {n}">'
                f'<rect x="{cx - n * scale / 2:.2f}" y="5" width="{n * scale:.2f}" height="8" class="in"/>'
                f'<rect x="{cx - r * scale / 2:.2f}" y="3" width="{r * scale:.2f}" height="12" class="rf"/></svg>')
    (h, w), (rh, rw) = input_extent, rf
    c = canvas / 2
    return (f'<svg width="{canvas}" height="{canvas}" viewBox="0 0 {canvas} {canvas}" role="img" '
            f'aria-label="receptive field {rh}x{rw} of input {h}x{w}">'
            f'<rect x="{c - w * scale / 2:.2f}" y="{c - h * scale / 2:.2f}" width="{w * scale:.2f}" '
            f'height="{h * scale:.2f}" class="in"/>'
            f'<rect x="{c - rw * scale / 2:.2f}" y="{c - rh * scale / 2:.2f}" width="{rw * scale:.2f}" '
            f'height="{rh * scale:.2f}" class="rf"/></svg>')


def extent(value: int, dims: int) -> str:
    return "×".join([str(value)] * dims) if dims else ""


def kind_cell(layer: Layer) -> str:
    return f"{layer.kind}+{layer.activation}" if layer.activation else layer.kind


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cnnc report: {{ models | map(attribute='network.name') | join(', ') }}</title>
<style>
  body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #222;
         margin: 0 auto; padding: 24px 32px 48px; max-width: 1120px; background: #fff; }
  h1 { font-size: 24px; margin: 0 0 4px; }
  h2 { font-size: 20px; margin: 36px 0 8px; padding-top: 12px; border-top: 2px solid #2f6fad; }
  h3 { font-size: 16px; margin: 24px 0 8px; color: #2f6fad; }
  .meta { color: #666; font-size: 13px; }
  dl.totals { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 8px 0 16px; }
  dl.totals dt { color: #666; } dl.totals dd { margin: 0; font-variant-numeric: tabular-nums; }
  table { border-collapse: collapse; font-size: 14px; }
  th, td { padding: 4px 12px; border-bottom: 1px solid #e3e3e3; text-align: left; vertical-align: middle; }
  th { background: #f3f6fa; font-weight: 600; border-bottom: 2px solid #c9d6e6; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  td.mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
  tr.input td { background: #fffaf0; }
  .diagram svg { max-width: 100%; height: auto; }
  .warnings { background: #fff7e6; border-left: 4px solid #e0a000; padding: 8px 12px; }
  svg rect.in { fill: #e6e6e6; stroke: #888; stroke-width: 1; }
  svg rect.rf { fill: rgba(47, 111, 173, 0.35); stroke: #2f6fad; stroke-width: 1.5; }
  .note { color: #666; font-size: 13px; max-width: 760px; }
  .growth { display: flex; flex-wrap: wrap; gap: 12px; }
  .rf-card { margin: 0; padding: 8px 10px; border: 1px solid #dde3ea; border-radius: 6px; background: #fbfcfe;
             width: 150px; text-align: center; }
  .rf-card figcaption { font-size: 13px; margin-bottom: 6px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  .rf-card svg { display: block; margin: 0 auto; }
  .rf-text { font-size: 12px; color: #444; margin-top: 6px; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>cnnc report</h1>
<div class="meta">cnnc {{ version }} &middot; {{ models | length }} model{{ '' if models | length == 1 else 's' }}:
  {% for m in models %}{{ m.network.name }} ({{ m.network.file }}){{ ', ' if not loop.last }}{% endfor %}</div>
{% for m in models %}
<section id="{{ m.network.name }}">
<h2>model {{ m.network.name }} <span class="meta">{{ m.network.file }}</span></h2>
<dl class="totals">
{% for label, value in m.totals %}  <dt>{{ label }}</dt><dd>{{ value }}</dd>
{% endfor %}</dl>
{% if m.network.warnings %}<div class="warnings"><strong>warnings</strong><ul>
{% for w in m.network.warnings %}  <li>{% if w.loc %}line {{ w.loc.line }}: {% endif %}{{ w.message }}</li>
{% endfor %}</ul></div>{% endif %}
<h3>layers</h3>
<table>
  <thead><tr><th>layer</th><th>kind</th><th>output</th><th>params</th><th>MACs</th><th>receptive field</th></tr></thead>
  <tbody>
{% for r in m.rows %}    <tr{% if loop.first %} class="input"{% endif %}><td>{{ r.name }}</td><td>{{ r.kind }}</td><td class="mono">{{ r.output }}</td><td class="num">{{ r.params }}</td><td class="num">{{ r.macs }}</td><td class="num">{{ r.rf }}</td></tr>
{% endfor %}  </tbody>
</table>
<h3>architecture</h3>
<div class="diagram">{{ m.diagram }}</div>
<h3>receptive field growth</h3>
{% if m.growth | length > 1 %}
<p class="note">How much of the input one output of each spatial layer depends on. The grey shape is the
input and the blue one the receptive field of an output in the middle, both to one scale for the whole
model (a field can outgrow the input: the outputs near the border then see padding). The jump is the
distance on the input between neighbouring outputs.</p>
<div class="growth">
{% for r in m.growth %}  <figure class="rf-card">
    <figcaption><strong>{{ r.name }}</strong> <span class="meta">{{ r.kind }}</span></figcaption>
    {{ r.sketch }}
    <div class="rf-text">field {{ r.rf }} &middot; jump {{ r.jump }}<br>{{ r.share }} of the input</div>
  </figure>
{% endfor %}</div>
{% else %}
<p class="note">This model has no spatial layers: every output sees the whole input.</p>
{% endif %}
</section>
{% endfor %}
</body>
</html>
"""
