"""Where `cnnc draw` and `check --html` place each layer of a graph: a row per layer, a lane per branch."""

import cnnc
from cnnc.graph_layout import graph_layout

from conftest import SPECS


def layout_of(text: str):
    network = cnnc.network_from_text(text)
    return network, graph_layout(network)


def test_a_chain_is_one_lane_of_straight_arrows():
    network = cnnc.networks_from_file(SPECS / "lenet5.cnn")[0]
    layout = graph_layout(network)
    assert layout.lane_count == 1
    assert [layout.rows[layer.name] for layer in network.layers] == list(range(1, len(network.layers) + 1))
    assert len(layout.edges) == len(network.layers)
    assert all(layout.is_straight(edge) for edge in layout.edges)


def test_parallel_branches_stand_side_by_side_and_their_merge_closes_the_lanes():
    network, layout = layout_of("""
model m {
    input x[3, 8, 8]
    conv2d stem(filters=4, kernel=1)
    conv2d a(filters=2, kernel=1, from=stem)
    conv2d b1(filters=2, kernel=1, from=stem)
    conv2d b2(filters=2, kernel=3, padding=1)
    maxpool2d c1(size=3, stride=1, padding=1, from=stem)
    concat cat(a, b2, c1)
    conv2d d(filters=2, kernel=1, from=cat)
    conv2d e(filters=2, kernel=1, from=cat)
    add sum(d, e)
    global_avgpool
    dense fc(units=2)
    loss mse
}
""")
    lanes = layout.lanes
    assert (lanes["a"], lanes["b1"], lanes["b2"], lanes["c1"]) == (0, 1, 1, 2)
    assert lanes["cat"] == 0
    assert (lanes["d"], lanes["e"]) == (0, 1)  # the lanes the concat closed are used again
    assert lanes["sum"] == 0 and lanes["fc"] == 0
    assert layout.lane_count == 3
    into_cat = [(edge.source, edge.operand) for edge in layout.edges if edge.target == "cat"]
    assert into_cat == [("a", 0), ("b2", 1), ("c1", 2)]
    assert not layout.is_straight(next(e for e in layout.edges if e.source == "stem" and e.target == "b1"))


def test_an_identity_shortcut_stays_in_its_lane_and_a_projection_opens_one():
    network = cnnc.networks_from_file(SPECS / "resnet8.cnn")[0]
    layout = graph_layout(network)
    lanes = layout.lanes
    assert {lanes[f"s1.{name}"] for name in ("c1", "bn2", "sum", "out")} == {0}
    shortcut = next(e for e in layout.edges if e.target == "s1.sum" and e.operand == 1)
    assert shortcut.source == "stem_relu" and not layout.is_straight(shortcut)
    assert (lanes["s2.proj"], lanes["s2.proj_bn"], lanes["s2.sum"]) == (1, 1, 0)
    assert (lanes["s3.proj"], lanes["s3.sum"]) == (1, 0)  # s2's projection lane was closed by its sum
    assert layout.lane_count == 2
    assert len(layout.edges) == sum(len(layer.inputs) for layer in network.layers)


def test_inception_blocks_reuse_the_lanes_of_the_block_before():
    network = cnnc.networks_from_file(SPECS / "inception_small.cnn")[0]
    layout = graph_layout(network)
    assert layout.lane_count == 4
    assert sorted({layout.lanes[n] for n in ("i1.b1", "i1.b3", "i1.b5", "i1.bp")}) == [0, 1, 2, 3]
    assert sorted({layout.lanes[n] for n in ("i2.b1", "i2.b3", "i2.b5", "i2.bp")}) == [0, 1, 2, 3]
