// winograd.h: the stride-1 3x3 convolution's forward pass and input gradient by Winograd's minimal filtering
// F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). Each 2x2 block of
// outputs (a tile) comes from the 4x4 inputs under it:
//   Y = A^T [ sum over c of (G g_c G^T) (.) (B^T d_c B) ] A        (.) elementwise, 16 products, not 36
// with
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// The sum over channels is, for each of the 16 positions k of a tile, a GEMM (tiles x channels) . (channels x
// outputs), vectorised over outputs with a register tile of TB tiles x FB vectors. The input gradient of a
// stride-1 convolution is the same correlation over the zero-padded output gradient, with each kernel turned
// 180 degrees and the channels exchanged: one kernel (winograd_correlation) serves both. The weight gradient
// stays on conv_blocked.h's path, which reads the padded input that forward keeps (xpad).
// Chosen by cnnc's planner (c_codegen.winograd_fits) for 3x3 kernels, stride 1, dilation 1, padding 0-2.
#ifndef CNNC_KERNELS_WINOGRAD_H
#define CNNC_KERNELS_WINOGRAD_H

#include "conv_blocked.h"

// One Winograd correlation: M output planes (OH, OW) from CIN input planes (IH, IW) per sample, the input at
// row TOP, column LEFT of a zero plane of (2*TH + 2, 2*TW + 2) (TH x TW tiles of 2x2 outputs).
typedef struct {
    int CIN, M, MV;   // input channels, output channels, vectors of VL output channels
    int IH, IW, OH, OW;
    int TOP, LEFT;    // the input's place in the tile plane (the padding)
    int TH, TW;       // tiles down and across: ceil(OH / 2), ceil(OW / 2)
    int CP;           // input channels padded to whole vectors (the channels-last plane's and V's rows)
    int TB, FB;       // GEMM register tile: TB tiles x FB vectors of output channels (FB divides MV)
} WinogradPass;

typedef struct {
    Conv2dBlocked blocked;       // the layer as conv_blocked.h sees it (padded input, weight gradient)
    WinogradPass forward;        // x -> out with the weights
    WinogradPass input_grad;     // dout -> dinp with the weights turned and exchanged
} Conv2dWinograd;

// Reals of scratch one pass needs per call (the plan sizes `wino` as the larger of the two passes'):
// plane (2*TH + 2, 2*TW + 2, CP) (later the output rows (2, 2*TW, VL)), V (16, TH*TW, CP), M (16, TH*TW, MV*VL).
static inline int64_t winograd_scratch_size(WinogradPass w)
{
    int64_t T = (int64_t)w.TH * w.TW;
    return (int64_t)(2 * w.TH + 2) * (2 * w.TW + 2) * w.CP + 16 * T * w.CP + 16 * T * w.MV * VL;
}

// weight -> u (16, CIN, MV * VL), zero beyond M: u[k][c][m] = (G g G^T)[k / 4][k % 4] with g the 3x3 kernel
// from input c to output m: weight[m][c] (weight (M, CIN, 3, 3)) or, `rotated`, weight[c][m] turned 180
// degrees (weight (CIN, M, 3, 3): the input gradient's).
CNNC_KERNEL void winograd_transform_weights(real* restrict u, const real* restrict weight, int rotated, WinogradPass w)
{
    const int MP = w.MV * VL;
    memset(u, 0, sizeof(real) * 16 * w.CIN * MP);
    for (int m = 0; m < w.M; m++) {
        for (int c = 0; c < w.CIN; c++) {
            real g[3][3], gg[4][3];
            for (int p = 0; p < 3; p++) {
                for (int q = 0; q < 3; q++) {
                    g[p][q] = rotated ? weight[((c * w.M + m) * 3 + 2 - p) * 3 + 2 - q]
                                      : weight[((m * w.CIN + c) * 3 + p) * 3 + q];
                }
            }
            for (int q = 0; q < 3; q++) {  // G g
                gg[0][q] = g[0][q];
                gg[1][q] = (g[0][q] + g[1][q] + g[2][q]) / 2;
                gg[2][q] = (g[0][q] - g[1][q] + g[2][q]) / 2;
                gg[3][q] = g[2][q];
            }
            for (int i = 0; i < 4; i++) {  // (G g) G^T
                real row[4] = {gg[i][0], (gg[i][0] + gg[i][1] + gg[i][2]) / 2, (gg[i][0] - gg[i][1] + gg[i][2]) / 2,
                               gg[i][2]};
                for (int j = 0; j < 4; j++) {
                    u[((i * 4 + j) * w.CIN + c) * MP + m] = row[j];
                }
            }
        }
    }
}

// inp_n (CIN, IH, IW) of one sample -> plane (2*TH + 2, 2*TW + 2, CP): channels last, inp_n at row TOP,
// column LEFT, zeros elsewhere (rows and columns past the plane, which no tile reads, are left out).
static inline __attribute__((always_inline))
void winograd_plane(real* restrict plane, const real* restrict inp_n, WinogradPass w)
{
    const int HT = 2 * w.TH + 2, WT = 2 * w.TW + 2;
    memset(plane, 0, sizeof(real) * HT * WT * w.CP);
    const int rows = w.IH < HT - w.TOP ? w.IH : HT - w.TOP;
    const int cols = w.IW < WT - w.LEFT ? w.IW : WT - w.LEFT;
    for (int h = 0; h < rows; h++) {  // (gathering loads, contiguous stores: faster than the other way round)
        real* plane_row = plane + ((int64_t)(w.TOP + h) * WT + w.LEFT) * w.CP;
        const real* in_row = inp_n + (int64_t)h * w.IW;
        for (int x = 0; x < cols; x++) {
            for (int c = 0; c < w.CIN; c++) {
                plane_row[(int64_t)x * w.CP + c] = in_row[(int64_t)c * w.IH * w.IW + x];
            }
        }
    }
}

// plane -> v (16, T, CP): v[k][t][c] = (B^T d B)[k / 4][k % 4], d the 4x4 inputs of channel c under tile t
// (rows 2*ty .., columns 2*tx .. of the plane), a vector of channels at a time.
static inline __attribute__((always_inline))
void winograd_input_transform(real* restrict v, const real* restrict plane, WinogradPass w)
{
    const int WT = 2 * w.TW + 2, T = w.TH * w.TW, CV = w.CP / VL;
    for (int ty = 0; ty < w.TH; ty++) {
        for (int tx = 0; tx < w.TW; tx++) {
            const int t = ty * w.TW + tx;
            const vec* d0 = (const vec*)(plane + ((int64_t)(2 * ty) * WT + 2 * tx) * w.CP);
            for (int cv = 0; cv < CV; cv++) {
                vec d[4][4], r[4][4];
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
#pragma GCC unroll 4
                    for (int j = 0; j < 4; j++) {
                        d[i][j] = d0[((int64_t)i * WT + j) * CV + cv];
                    }
                }
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {  // B^T d
                    r[0][j] = d[0][j] - d[2][j];
                    r[1][j] = d[1][j] + d[2][j];
                    r[2][j] = d[2][j] - d[1][j];
                    r[3][j] = d[1][j] - d[3][j];
                }
                vec* v_t = (vec*)(v + (int64_t)t * w.CP) + cv;
                const int64_t k_step = (int64_t)T * CV;  // vectors from one position k to the next
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {  // (B^T d) B
                    v_t[(i * 4 + 0) * k_step] = r[i][0] - r[i][2];
                    v_t[(i * 4 + 1) * k_step] = r[i][1] + r[i][2];
                    v_t[(i * 4 + 2) * k_step] = r[i][2] - r[i][1];
                    v_t[(i * 4 + 3) * k_step] = r[i][1] - r[i][3];
                }
            }
        }
    }
}

// One GEMM register tile: mk[t0 + a][fv0 + b] = sum over c of v_k[t0 + a][c] * u_k[c][fv0 + b] for `width`
// tiles a and FB vectors b, at one position k (v_k (T, CP), u_k (CIN, MV * VL), mk (T, MV * VL)).
static inline __attribute__((always_inline))
void winograd_gemm_tile(real* restrict mk, const real* restrict v_k, const real* restrict u_k, int t0, int fv0,
                        const int width, WinogradPass w)
{
    vec acc[24];
    const int MP = w.MV * VL;
#pragma GCC unroll 24
    for (int i = 0; i < width * w.FB; i++) {
        acc[i] = (vec){0};
    }
    // one pointer each into V and U, stepped per channel: the tile's rows are constant offsets from v_c
    const real* v_c = v_k + (int64_t)t0 * w.CP;
    const vec* u_c = (const vec*)u_k + fv0;
    for (int c = 0; c < w.CIN; c++, v_c++, u_c += w.MV) {
#pragma GCC unroll 24
        for (int a = 0; a < width; a++) {
            real d = v_c[a * w.CP];
#pragma GCC unroll 4
            for (int b = 0; b < w.FB; b++) {
                acc[a * w.FB + b] += d * u_c[b];
            }
        }
    }
#pragma GCC unroll 24
    for (int a = 0; a < width; a++) {
#pragma GCC unroll 4
        for (int b = 0; b < w.FB; b++) {
            ((vec*)(mk + (int64_t)(t0 + a) * MP))[fv0 + b] = acc[a * w.FB + b];
        }
    }
}

// mbuf (16, T, MV * VL) -> out_n (M, OH, OW): each tile's 2x2 outputs A^T m A (+ bias), a vector of output
// channels at a time, one row of tiles into rows (2, 2*TW, VL) (whole vector stores), then each channel's two
// output rows copied out of it (strided loads, contiguous stores: cheaper than storing lane by lane).
static inline __attribute__((always_inline))
void winograd_output_transform(real* restrict out_n, const real* restrict mbuf, const real* restrict bias,
                               real* restrict rows, WinogradPass w)
{
    const int T = w.TH * w.TW, MP = w.MV * VL, RW = 2 * w.TW;
    for (int ty = 0; ty < w.TH; ty++) {
        for (int fv = 0; fv < w.MV; fv++) {
            vec b = {0};
            if (bias != NULL) {
                memcpy(&b, bias + fv * VL, sizeof(vec));
            }
            vec* rows_v = (vec*)rows;
            for (int tx = 0; tx < w.TW; tx++) {
                const int t = ty * w.TW + tx;
                vec m[16], r[2][4];
#pragma GCC unroll 16
                for (int k = 0; k < 16; k++) {
                    m[k] = ((const vec*)(mbuf + ((int64_t)k * T + t) * MP))[fv];
                }
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {  // A^T m
                    r[0][j] = m[j] + m[4 + j] + m[8 + j];
                    r[1][j] = m[4 + j] - m[8 + j] - m[12 + j];
                }
#pragma GCC unroll 2
                for (int i = 0; i < 2; i++) {  // (A^T m) A
                    rows_v[i * RW + 2 * tx] = r[i][0] + r[i][1] + r[i][2] + b;
                    rows_v[i * RW + 2 * tx + 1] = r[i][1] - r[i][2] - r[i][3] + b;
                }
            }
            const int count = w.M - fv * VL < VL ? w.M - fv * VL : VL;
            const int height = 2 * ty + 1 < w.OH ? 2 : 1;  // the last row of tiles may be half outside
            for (int l = 0; l < count; l++) {
                for (int i = 0; i < height; i++) {
                    real* out_row = out_n + ((int64_t)(fv * VL + l) * w.OH + 2 * ty + i) * w.OW;
                    const real* lane = rows + (int64_t)i * RW * VL + l;
                    for (int x = 0; x < w.OW; x++) {
                        out_row[x] = lane[x * VL];
                    }
                }
            }
        }
    }
}

// inp (N, CIN, IH, IW), u the transformed weights (winograd_transform_weights), bias (M padded to whole
// vectors) or NULL -> out (N, M, OH, OW), written (=):
//   out[n][m][oy][ox] = bias[m] + sum over c, p, q of g_cm[p][q] * plane_nc[oy + p][ox + q]
// Scratch: winograd_scratch_size(w) reals.
CNNC_KERNEL void winograd_correlation(real* restrict out, const real* restrict inp, const real* restrict u,
                                      const real* restrict bias, real* restrict scratch, int64_t N, WinogradPass w)
{
    const int T = w.TH * w.TW, MP = w.MV * VL;
    real* plane = scratch;
    real* v = plane + (int64_t)(2 * w.TH + 2) * (2 * w.TW + 2) * w.CP;
    real* mbuf = v + (int64_t)16 * T * w.CP;
    for (int64_t n = 0; n < N; n++) {
        winograd_plane(plane, inp + n * w.CIN * w.IH * w.IW, w);
        winograd_input_transform(v, plane, w);
        for (int k = 0; k < 16; k++) {
            const real* v_k = v + (int64_t)k * T * w.CP;
            const real* u_k = u + (int64_t)k * w.CIN * MP;
            real* mk = mbuf + (int64_t)k * T * MP;
            for (int fv0 = 0; fv0 < w.MV; fv0 += w.FB) {
                int t0 = 0;
                for (; t0 + w.TB <= T; t0 += w.TB) {
                    winograd_gemm_tile(mk, v_k, u_k, t0, fv0, w.TB, w);
                }
                if (t0 < T) {
                    winograd_gemm_tile(mk, v_k, u_k, t0, fv0, T % w.TB, w);
                }
            }
        }
        winograd_output_transform(out + n * w.M * w.OH * w.OW, mbuf, bias, plane, w);  // (plane is free now)
    }
}

// inp is (N, C, H, W), weight (F, C, 3, 3), bias (F) or NULL -> out (N, F, OH, OW), as conv2d_forward.
// Scratch: xpad (the padded input the weight gradient reads, when b.blocked.padded), u (16, C, FV * VL) the
// transformed weights, bpack the bias padded to whole vectors, wino (winograd_scratch_size). prepare:
// transform weight and pad bias first; 0 when u and bpack already hold them (an inference pass whose weights
// are unchanged).
CNNC_KERNEL void conv2d_winograd_forward(real* restrict out, const real* restrict inp, const real* restrict weight,
                                         const real* restrict bias, real* restrict xpad, real* restrict u,
                                         real* restrict bpack, real* restrict wino, int prepare, int64_t N,
                                         Conv2dWinograd b)
{
    if (b.blocked.padded) {
        conv2d_blocked_pad(xpad, inp, N, b.blocked);
    }
    if (prepare) {
        winograd_transform_weights(u, weight, 0, b.forward);
        memset(bpack, 0, sizeof(real) * b.forward.MV * VL);
        if (bias != NULL) {
            memcpy(bpack, bias, sizeof(real) * b.forward.M);
        }
    }
    winograd_correlation(out, inp, u, bias != NULL ? bpack : NULL, wino, N, b.forward);
}

// As conv2d_blocked_backward (dweight, dbias accumulated on its path), with the input gradient (written
// (=) unless dinp is NULL) by Winograd over the padded output gradient:
//   dinp[n][c][h][w] = sum over f, p, q of weight[f][c][2 - p][2 - q] * dout[n][f][h - (2 - PH) + p][w - (2 - PW) + q]
// Scratch: dyt for the weight gradient, u (16, F, CV * VL), wino.
CNNC_KERNEL void conv2d_winograd_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                          const real* restrict dout, const real* restrict x,
                                          const real* restrict weight, real* restrict dyt, real* restrict u,
                                          real* restrict wino, int64_t N, Conv2dWinograd b)
{
    conv2d_blocked_backward(NULL, dweight, dbias, dout, x, weight, dyt, NULL, NULL, N, b.blocked);
    if (dinp != NULL) {
        winograd_transform_weights(u, weight, 1, b.input_grad);
        winograd_correlation(dinp, dout, u, NULL, wino, N, b.input_grad);
    }
}

#endif
