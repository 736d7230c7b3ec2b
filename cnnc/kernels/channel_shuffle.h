// channel_shuffle.h: ShuffleNet's channel shuffle, a permutation of the channels. A sample is (C, S): C
// channels of S positions each.
#ifndef CNNC_KERNELS_CHANNEL_SHUFFLE_H
#define CNNC_KERNELS_CHANNEL_SHUFFLE_H

#include "common.h"

typedef struct {
    int C, S;   // channels, positions per channel
    int G;      // groups: C viewed as (G, C/G), transposed to (C/G, G)
} ChannelShuffle;

// inp is (N, C, S) -> out is (N, C, S): out[n][i*G + grp] = inp[n][grp*(C/G) + i], whole channels at a time.
CNNC_KERNEL void channel_shuffle_forward(real* restrict out, const real* restrict inp, int64_t N, ChannelShuffle g)
{
    const int per_group = g.C / g.G;
    for (int64_t n = 0; n < N; n++) {
        for (int grp = 0; grp < g.G; grp++) {
            for (int i = 0; i < per_group; i++) {
                memcpy(out + (n * g.C + i * g.G + grp) * g.S, inp + (n * g.C + grp * per_group + i) * g.S,
                       (size_t)g.S * sizeof(real));
            }
        }
    }
}

// dout is (N, C, S); writes (=) all of dinp (N, C, S): the inverse permutation,
// dinp[n][grp*(C/G) + i] = dout[n][i*G + grp].
CNNC_KERNEL void channel_shuffle_backward(real* restrict dinp, const real* restrict dout, int64_t N, ChannelShuffle g)
{
    const int per_group = g.C / g.G;
    for (int64_t n = 0; n < N; n++) {
        for (int grp = 0; grp < g.G; grp++) {
            for (int i = 0; i < per_group; i++) {
                memcpy(dinp + (n * g.C + grp * per_group + i) * g.S, dout + (n * g.C + i * g.G + grp) * g.S,
                       (size_t)g.S * sizeof(real));
            }
        }
    }
}

#endif
