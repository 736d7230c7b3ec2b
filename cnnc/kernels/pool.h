// pool.h: max pooling, average pooling (also with ceil=true and count_pad=false), global average and global
// max pooling. A 1-D pooling layer is a 2-D one of
// height 1. Padding is at most half the window (cnnc checks), so every window holds an input cell.
#ifndef CNNC_KERNELS_POOL_H
#define CNNC_KERNELS_POOL_H

#include "common.h"

// The sizes of one pooling layer.
typedef struct {
    int C, H, W;   // input: channels, height, width
    int OH, OW;    // output: height, width (channels: C)
    int KH, KW;    // window
    int SH, SW;    // stride
    int PH, PW;    // padding above, left
} Pool2d;

// inp is (N, C, H, W) -> out and argmax are (N, C, OH, OW):
//   out[n][c][oh][ow] = the largest inp[n][c][ih][iw] over the window ih = oh*SH - PH + p, iw = ow*SW - PW + q
//   (p < KH, q < KW); padding never wins. argmax (NULL: not saved) gets where it was, as ih*W + iw within
//   the (n, c) plane, the first in window order on ties (like PyTorch); a NaN beats every number, and the
//   first NaN wins (like np.argmax: NaN propagates, as in PyTorch).
CNNC_KERNEL void maxpool2d_forward(real* restrict out, int32_t* restrict argmax, const real* restrict inp, int64_t N,
                                   Pool2d g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            const real* inp_nc = inp + (n * g.C + c) * g.H * g.W;
            int64_t out_nc = (n * g.C + c) * g.OH * g.OW;
            for (int oh = 0; oh < g.OH; oh++) {
                Range rows = window(oh * g.SH - g.PH, g.KH, g.H);
                for (int ow = 0; ow < g.OW; ow++) {
                    Range cols = window(ow * g.SW - g.PW, g.KW, g.W);
                    int best = rows.begin * g.W + cols.begin;
                    for (int ih = rows.begin; ih < rows.end; ih++) {
                        for (int iw = cols.begin; iw < cols.end; iw++) {
                            real v = inp_nc[ih * g.W + iw];
                            if (v > inp_nc[best] || (v != v && inp_nc[best] == inp_nc[best])) {
                                best = ih * g.W + iw;
                            }
                        }
                    }
                    out[out_nc + oh * g.OW + ow] = inp_nc[best];
                    if (argmax != NULL) {
                        argmax[out_nc + oh * g.OW + ow] = best;
                    }
                }
            }
        }
    }
}

// dout and argmax are (N, C, OH, OW); accumulates (+=) dinp (N, C, H, W): each output's gradient goes to
// the input cell that won its window.
CNNC_KERNEL void maxpool2d_backward(real* restrict dinp, const real* restrict dout, const int32_t* restrict argmax,
                                    int64_t N, Pool2d g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            real* dinp_nc = dinp + (n * g.C + c) * g.H * g.W;
            const real* dout_nc = dout + (n * g.C + c) * g.OH * g.OW;
            const int32_t* argmax_nc = argmax + (n * g.C + c) * g.OH * g.OW;
            for (int o = 0; o < g.OH * g.OW; o++) {
                dinp_nc[argmax_nc[o]] += dout_nc[o];
            }
        }
    }
}

// The fast variant for the 2x2 window, stride 2, no padding: the same results as maxpool2d_forward
// (argmax required), each window four fixed loads and no branches (which candidate wins is data:
// mispredicted branches cost more than the work, and branch-free code vectorises).
CNNC_KERNEL void maxpool2d_2x2_forward(real* restrict out, int32_t* restrict argmax, const real* restrict inp,
                                       int64_t N, Pool2d g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            const real* inp_nc = inp + (n * g.C + c) * g.H * g.W;
            real* out_nc = out + (n * g.C + c) * g.OH * g.OW;
            int32_t* argmax_nc = argmax + (n * g.C + c) * g.OH * g.OW;
            for (int oh = 0; oh < g.OH; oh++) {
                const real* top = inp_nc + 2 * oh * g.W;
                const real* bottom = top + g.W;
                for (int ow = 0; ow < g.OW; ow++) {
                    // take is all ones where a candidate beats the best so far, and picks its position
                    real top_left = top[2 * ow], top_right = top[2 * ow + 1];
                    real bottom_left = bottom[2 * ow], bottom_right = bottom[2 * ow + 1];
                    int32_t corner = 2 * oh * g.W + 2 * ow;
                    real best = top_left;
                    int32_t where = corner;
                    int32_t take = -(int32_t)(top_right > best);
                    where = (where & ~take) | ((corner + 1) & take);
                    best = top_right > best ? top_right : best;
                    take = -(int32_t)(bottom_left > best);
                    where = (where & ~take) | ((corner + g.W) & take);
                    best = bottom_left > best ? bottom_left : best;
                    take = -(int32_t)(bottom_right > best);
                    where = (where & ~take) | ((corner + g.W + 1) & take);
                    best = bottom_right > best ? bottom_right : best;
                    // a NaN never compares greater: in a window holding one, the first NaN in window order
                    // wins instead (the sum of the four is then NaN too)
                    int32_t nan0 = -(int32_t)(top_left != top_left), nan1 = -(int32_t)(top_right != top_right);
                    int32_t nan2 = -(int32_t)(bottom_left != bottom_left), nan3 = -(int32_t)(bottom_right != bottom_right);
                    int32_t first_nan = (nan0 & corner) | (~nan0 & nan1 & (corner + 1))
                                        | (~nan0 & ~nan1 & nan2 & (corner + g.W))
                                        | (~nan0 & ~nan1 & ~nan2 & nan3 & (corner + g.W + 1));
                    int32_t any_nan = nan0 | nan1 | nan2 | nan3;
                    where = (where & ~any_nan) | (first_nan & any_nan);
                    best = any_nan ? top_left + top_right + bottom_left + bottom_right : best;
                    out_nc[oh * g.OW + ow] = best;
                    argmax_nc[oh * g.OW + ow] = where;
                }
            }
        }
    }
}

// dout and argmax are (N, C, OH, OW); writes (=) all of dinp (N, C, H, W): the 2x2 windows do not overlap,
// so each input cell gets its window's gradient if it won the window and 0 otherwise; rows and columns
// past the last window (odd H or W) get 0. No zeroing pass first.
CNNC_KERNEL void maxpool2d_2x2_backward(real* restrict dinp, const real* restrict dout, const int32_t* restrict argmax,
                                        int64_t N, Pool2d g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            real* dinp_nc = dinp + (n * g.C + c) * g.H * g.W;
            const real* dout_nc = dout + (n * g.C + c) * g.OH * g.OW;
            const int32_t* argmax_nc = argmax + (n * g.C + c) * g.OH * g.OW;
            for (int oh = 0; oh < g.OH; oh++) {
                real* top = dinp_nc + 2 * oh * g.W;
                real* bottom = top + g.W;
                for (int ow = 0; ow < g.OW; ow++) {
                    // the window's four cells get 0, then the winner its gradient: no branches on which won
                    top[2 * ow] = 0;
                    top[2 * ow + 1] = 0;
                    bottom[2 * ow] = 0;
                    bottom[2 * ow + 1] = 0;
                    dinp_nc[argmax_nc[oh * g.OW + ow]] = dout_nc[oh * g.OW + ow];
                }
                for (int iw = 2 * g.OW; iw < g.W; iw++) {
                    top[iw] = 0;
                    bottom[iw] = 0;
                }
            }
            for (int ih = 2 * g.OH; ih < g.H; ih++) {
                for (int iw = 0; iw < g.W; iw++) {
                    dinp_nc[ih * g.W + iw] = 0;
                }
            }
        }
    }
}

// inp is (N, C, H, W) -> out is (N, C, OH, OW):
//   out[n][c][oh][ow] = (sum over the window ih = oh*SH - PH + p, iw = ow*SW - PW + q of inp[n][c][ih][iw]) / (KH*KW)
// Padded cells count as zeros in the window area (PyTorch's count_include_pad).
CNNC_KERNEL void avgpool2d_forward(real* restrict out, const real* restrict inp, int64_t N, Pool2d g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            const real* inp_nc = inp + (n * g.C + c) * g.H * g.W;
            real* out_nc = out + (n * g.C + c) * g.OH * g.OW;
            for (int oh = 0; oh < g.OH; oh++) {
                Range rows = window(oh * g.SH - g.PH, g.KH, g.H);
                for (int ow = 0; ow < g.OW; ow++) {
                    Range cols = window(ow * g.SW - g.PW, g.KW, g.W);
                    real sum = 0;
                    for (int ih = rows.begin; ih < rows.end; ih++) {
                        for (int iw = cols.begin; iw < cols.end; iw++) {
                            sum += inp_nc[ih * g.W + iw];
                        }
                    }
                    out_nc[oh * g.OW + ow] = sum / (g.KH * g.KW);
                }
            }
        }
    }
}

// dout is (N, C, OH, OW); accumulates (+=) dinp (N, C, H, W): each output's gradient is shared equally by
// the KH*KW cells of its window (padding takes its share too).
CNNC_KERNEL void avgpool2d_backward(real* restrict dinp, const real* restrict dout, int64_t N, Pool2d g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            real* dinp_nc = dinp + (n * g.C + c) * g.H * g.W;
            const real* dout_nc = dout + (n * g.C + c) * g.OH * g.OW;
            for (int oh = 0; oh < g.OH; oh++) {
                Range rows = window(oh * g.SH - g.PH, g.KH, g.H);
                for (int ow = 0; ow < g.OW; ow++) {
                    Range cols = window(ow * g.SW - g.PW, g.KW, g.W);
                    real share = dout_nc[oh * g.OW + ow] / (g.KH * g.KW);
                    for (int ih = rows.begin; ih < rows.end; ih++) {
                        for (int iw = cols.begin; iw < cols.end; iw++) {
                            dinp_nc[ih * g.W + iw] += share;
                        }
                    }
                }
            }
        }
    }
}

// Average pooling whose divisor changes from window to window (ceil=true or count_pad=false): the pooling's
// sizes, the padding below and right (PHA, PWA), and whether padded cells count in the divisor.
typedef struct {
    Pool2d pool;
    int PHA, PWA;    // padding below, right
    int count_pad;   // 1: divide by the window's cells inside the padded input; 0: inside the input only
} AvgPool2dClipped;

// The cells of the window [start, start + length) that count in the divisor: those inside the padded input
// [-pad_before, size + pad_after) (ceil's last window may run past it), or inside [0, size) without count_pad.
static inline int window_divisor(int start, int length, int size, int pad_after, int count_pad)
{
    int end = start + length < size + pad_after ? start + length : size + pad_after;
    if (count_pad) {
        return end - start;
    }
    return (end < size ? end : size) - (start > 0 ? start : 0);
}

// inp is (N, C, H, W) -> out is (N, C, OH, OW):
//   out[n][c][oh][ow] = (sum of inp[n][c][ih][iw] over the window's cells inside the input) / divisor[oh][ow]
// with the divisor of window_divisor per axis (PyTorch's avg_pool2d with ceil_mode and count_include_pad).
CNNC_KERNEL void avgpool2d_clipped_forward(real* restrict out, const real* restrict inp, int64_t N, AvgPool2dClipped a)
{
    Pool2d g = a.pool;
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            const real* inp_nc = inp + (n * g.C + c) * g.H * g.W;
            real* out_nc = out + (n * g.C + c) * g.OH * g.OW;
            for (int oh = 0; oh < g.OH; oh++) {
                Range rows = window(oh * g.SH - g.PH, g.KH, g.H);
                int row_cells = window_divisor(oh * g.SH - g.PH, g.KH, g.H, a.PHA, a.count_pad);
                for (int ow = 0; ow < g.OW; ow++) {
                    Range cols = window(ow * g.SW - g.PW, g.KW, g.W);
                    int cells = row_cells * window_divisor(ow * g.SW - g.PW, g.KW, g.W, a.PWA, a.count_pad);
                    real sum = 0;
                    for (int ih = rows.begin; ih < rows.end; ih++) {
                        for (int iw = cols.begin; iw < cols.end; iw++) {
                            sum += inp_nc[ih * g.W + iw];
                        }
                    }
                    out_nc[oh * g.OW + ow] = sum / cells;
                }
            }
        }
    }
}

// dout is (N, C, OH, OW); accumulates (+=) dinp (N, C, H, W): each output's gradient / its divisor goes to
// every input cell of its window.
CNNC_KERNEL void avgpool2d_clipped_backward(real* restrict dinp, const real* restrict dout, int64_t N,
                                            AvgPool2dClipped a)
{
    Pool2d g = a.pool;
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            real* dinp_nc = dinp + (n * g.C + c) * g.H * g.W;
            const real* dout_nc = dout + (n * g.C + c) * g.OH * g.OW;
            for (int oh = 0; oh < g.OH; oh++) {
                Range rows = window(oh * g.SH - g.PH, g.KH, g.H);
                int row_cells = window_divisor(oh * g.SH - g.PH, g.KH, g.H, a.PHA, a.count_pad);
                for (int ow = 0; ow < g.OW; ow++) {
                    Range cols = window(ow * g.SW - g.PW, g.KW, g.W);
                    int cells = row_cells * window_divisor(ow * g.SW - g.PW, g.KW, g.W, a.PWA, a.count_pad);
                    real share = dout_nc[oh * g.OW + ow] / cells;
                    for (int ih = rows.begin; ih < rows.end; ih++) {
                        for (int iw = cols.begin; iw < cols.end; iw++) {
                            dinp_nc[ih * g.W + iw] += share;
                        }
                    }
                }
            }
        }
    }
}

typedef struct {
    int C, HW;  // channels, positions per channel
} GlobalAvgPool;

// inp is (N, C, HW) -> out is (N, C): the mean of each channel over its HW positions.
CNNC_KERNEL void global_avgpool_forward(real* restrict out, const real* restrict inp, int64_t N, GlobalAvgPool g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            const real* inp_nc = inp + (n * g.C + c) * g.HW;
            real sum = 0;
            CNNC_SIMD_SUM
            for (int i = 0; i < g.HW; i++) {
                sum += inp_nc[i];
            }
            out[n * g.C + c] = sum / g.HW;
        }
    }
}

// dout is (N, C); writes (=) dinp (N, C, HW): each position gets 1/HW of its channel's gradient.
CNNC_KERNEL void global_avgpool_backward(real* restrict dinp, const real* restrict dout, int64_t N, GlobalAvgPool g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            real* dinp_nc = dinp + (n * g.C + c) * g.HW;
            real share = dout[n * g.C + c] / g.HW;
            for (int i = 0; i < g.HW; i++) {
                dinp_nc[i] = share;
            }
        }
    }
}

typedef struct {
    int C, HW;  // channels, positions per channel
} GlobalMaxPool;

// inp is (N, C, HW) -> out and argmax are (N, C): the largest of each channel's HW positions, and where it
// was (the first on ties; a NaN beats every number and the first NaN wins, like np.argmax).
CNNC_KERNEL void global_maxpool_forward(real* restrict out, int32_t* restrict argmax, const real* restrict inp,
                                        int64_t N, GlobalMaxPool g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            const real* inp_nc = inp + (n * g.C + c) * g.HW;
            int best = 0;
            for (int i = 1; i < g.HW; i++) {
                if (inp_nc[i] > inp_nc[best] || (inp_nc[i] != inp_nc[i] && inp_nc[best] == inp_nc[best])) {
                    best = i;
                }
            }
            out[n * g.C + c] = inp_nc[best];
            argmax[n * g.C + c] = best;
        }
    }
}

// dout and argmax are (N, C); accumulates (+=) dinp (N, C, HW): each channel's gradient goes to its maximum.
CNNC_KERNEL void global_maxpool_backward(real* restrict dinp, const real* restrict dout, const int32_t* restrict argmax,
                                         int64_t N, GlobalMaxPool g)
{
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < g.C; c++) {
            dinp[(n * g.C + c) * g.HW + argmax[n * g.C + c]] += dout[n * g.C + c];
        }
    }
}

#endif
