// blocks.h: how cnnc's C backend lays out the blocks of memory a model runs in: tensors taken one after
// another from a block (per sample, or fixed), and the copy of the weights that inference's prepared weights
// came from. Not a layer kind: the generated glue's helpers, kept here so that the glue stays layer calls.
#ifndef CNNC_KERNELS_BLOCKS_H
#define CNNC_KERNELS_BLOCKS_H

#include "vector.h"

// A buffer's length rounded up to whole vectors, so that every buffer starts on a vector boundary.
#define WHOLE_VECTORS(count) (((count) + VL - 1) / VL * VL)

static inline void zero(real* buffer, int64_t count)
{
    memset(buffer, 0, (size_t)count * sizeof(real));
}

// The next `count` reals of a block, and the cursor moved past them.
static inline real* take(real** cursor, int64_t count)
{
    real* start = *cursor;
    *cursor += count;
    return start;
}

// A buffer of `per_sample` reals for each of N samples, seen from sample n0 on.
static inline real* take_batch(real** cursor, int64_t N, int64_t n0, int64_t per_sample)
{
    return take(cursor, N * per_sample) + n0 * per_sample;
}

static inline int32_t* take_batch_int32(int32_t** cursor, int64_t N, int64_t n0, int64_t per_sample)
{
    int32_t* start = *cursor;
    *cursor += N * per_sample;
    return start + n0 * per_sample;
}

// 1 if the `count` reals at src equal their copy at *copy; otherwise refreshes the copy and returns 0. Moves
// *copy past it. (Inference prepares weights again only when one of their sources differs from its copy.)
static inline int same_as_copy(real** copy, const real* src, int64_t count)
{
    int same = memcmp(*copy, src, sizeof(real) * (size_t)count) == 0;
    if (!same) {
        memcpy(*copy, src, sizeof(real) * (size_t)count);
    }
    *copy += count;
    return same;
}

#endif
