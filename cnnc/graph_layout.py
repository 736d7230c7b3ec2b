"""Where a diagram puts each tensor of a network: one row per layer in statement order (the input first),
and a lane (a column) per branch, so that parallel branches stand side by side.

A layer continues the lane of its first input when it is that lane's newest tensor; otherwise (a second
branch out of the same tensor, a shortcut's projection) it opens the leftmost free lane. A lane is free
again once its newest tensor has no reader left to place, so a merge closes the lanes of the branches it
joins. A chain stays in lane 0. Pure: used by `cnnc draw` and `cnnc check --html`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .ir import Network


@dataclass(frozen=True)
class Edge:
    """An arrow from tensor `source` into layer `target`; `operand` is its position in target's inputs."""

    source: str
    target: str
    operand: int


@dataclass(frozen=True)
class GraphLayout:
    """rows[name] and lanes[name] for the input and every layer; lane_count lanes in all."""

    rows: dict[str, int]
    lanes: dict[str, int]
    edges: tuple[Edge, ...]
    lane_count: int

    def is_straight(self, edge: Edge) -> bool:
        """An arrow from the row just above in the same lane: drawn as a plain vertical arrow."""
        return (self.lanes[edge.source] == self.lanes[edge.target]
                and self.rows[edge.target] - self.rows[edge.source] == 1)


def graph_layout(network: Network) -> GraphLayout:
    readers_left = {network.input_name: 0}
    for layer in network.layers:
        readers_left[layer.name] = 0
    for layer in network.layers:
        for name in set(layer.inputs):
            readers_left[name] += 1
    rows = {network.input_name: 0}
    lanes = {network.input_name: 0}
    newest: dict[int, str] = {0: network.input_name}  # lane -> the newest tensor placed in it
    edges = []
    for row, layer in enumerate(network.layers, start=1):
        for name in set(layer.inputs):
            readers_left[name] -= 1
        first = layer.inputs[0]
        lane = lanes[first] if newest.get(lanes[first]) == first else _free_lane(newest, readers_left)
        rows[layer.name], lanes[layer.name] = row, lane
        newest[lane] = layer.name
        for other in layer.inputs:  # a merge closes the lanes whose branch ends in it
            other_lane = lanes[other]
            if other_lane != lane and newest.get(other_lane) == other and readers_left[other] == 0:
                del newest[other_lane]
        edges.extend(Edge(source, layer.name, i) for i, source in enumerate(layer.inputs))
    return GraphLayout(rows, lanes, tuple(edges), max(lanes.values()) + 1)


def _free_lane(newest: dict[int, str], readers_left: dict[str, int]) -> int:
    """The leftmost lane that is unused, or whose newest tensor has no reader left."""
    lane = 0
    while lane in newest and readers_left[newest[lane]] > 0:
        lane += 1
    return lane
