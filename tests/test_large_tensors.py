"""Tensors past 2^31 elements: the C backend indexes a batch in 64 bits (issue #18, item 6).

One sample may hold up to 2^31 - 1 values (the shape checker's limit, so per-sample indices fit an int),
but a batch of two such samples does not: every offset `n * sample_size + i` must be computed in 64
bits. These tests run a batch of 2^31 + 2^21 float32 values (8 GiB of address space, zero pages except
for the few values set) through the C backend and read back values that sit past index 2^31.
"""
import numpy as np
import pytest

import cnnc

LENGTH = 2**30 + 2**20  # values per sample: a batch of 2 holds 2^31 + 2^21 values
WINDOW = 2**20  # pooling window and convolution stride: 1025 outputs per sample


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


pytestmark = pytest.mark.skipif(available_bytes() < 12 * 2**30,
                                reason="needs 12 GiB of free memory for a batch of 2^31 float32 values")


@pytest.fixture(scope="module")
def batch_past_int_max():
    """x: (2, 1, LENGTH) zeros except, in the second sample, 5 at the start of window 1022, 3 at the start
    of window 1024 (flat index 2^31 + 2^20) and 7 at the very last value (flat index 2^31 + 2^21 - 1):
    offsets a 32-bit index would wrap to negative ones."""
    x = np.zeros((2, 1, LENGTH), np.float32)
    x[1, 0, 1022 * WINDOW] = 5.0
    x[1, 0, 1024 * WINDOW] = 3.0
    x[1, 0, -1] = 7.0
    assert x.size > 2**31
    return x


def model_from_text(tmp_path, text):
    path = tmp_path / "big.cnn"
    path.write_text(text)
    return cnnc.load(path, backend="c")


def test_max_pooling_reads_values_past_index_2_to_the_31(tmp_path, batch_past_int_max):
    # x: (2, 1, 2^30 + 2^20) -> y: (2, 1, 1025), each output the max of a window of 2^20 values
    m = model_from_text(tmp_path, f"model big {{\n input signal[1, {LENGTH}]\n maxpool1d pool(size={WINDOW})\n}}\n")
    y = m.forward(batch_past_int_max)
    assert y.shape == (2, 1, 1025)
    expected = np.zeros_like(y)
    expected[1, 0, 1022] = 5.0
    expected[1, 0, 1024] = 7.0  # the last window holds the 3 and the last value
    np.testing.assert_array_equal(y, expected)


def test_strided_convolution_reads_values_past_index_2_to_the_31(tmp_path, batch_past_int_max):
    # x: (2, 1, 2^30 + 2^20) -> y: (2, 1, 1025); the kernel's 4 taps start every 2^20 values
    m = model_from_text(tmp_path, f"model big {{\n input signal[1, {LENGTH}]\n"
                                  f" conv1d c(filters=1, kernel=4, stride={WINDOW})\n}}\n")
    m.params["c.weight"][...] = [[[1.0, 2.0, 3.0, 4.0]]]
    m.params["c.bias"][...] = 0.5
    y = m.forward(batch_past_int_max)
    expected = np.full((2, 1, 1025), 0.5, np.float32)
    expected[1, 0, 1022] += 1.0 * 5.0  # the 5 and the 3 sit under the first tap of their windows
    expected[1, 0, 1024] += 1.0 * 3.0
    np.testing.assert_array_equal(y, expected)
