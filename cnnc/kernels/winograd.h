// winograd.h: the stride-1 3x3 convolution's forward pass and both gradients by Winograd's minimal filtering
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
// is Winograd's too (winograd_weight_grad: 16 GEMMs per sample reducing over the tiles), over the forward
// pass's tiles of the input (no padded copy of the input is kept: every pass pads in its tile plane).
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
    const int rows = w.IH < HT - w.TOP ? w.IH : HT - w.TOP;
    const int cols = w.IW < WT - w.LEFT ? w.IW : WT - w.LEFT;
    if (TRANSPOSE_IN_REGISTERS) {  // the copy below writes every channel (zeros past CIN) of the input's
        const int64_t row_size = (int64_t)WT * w.CP;  // rectangle: only the frame around it is zeroed
        memset(plane, 0, sizeof(real) * w.TOP * row_size);
        for (int h = 0; h < rows; h++) {
            real* plane_row = plane + (w.TOP + h) * row_size;
            memset(plane_row, 0, sizeof(real) * w.LEFT * w.CP);
            memset(plane_row + (int64_t)(w.LEFT + cols) * w.CP, 0, sizeof(real) * (WT - w.LEFT - cols) * w.CP);
        }
        memset(plane + (w.TOP + rows) * row_size, 0, sizeof(real) * (HT - w.TOP - rows) * row_size);
    } else {
        memset(plane, 0, sizeof(real) * HT * WT * w.CP);
    }
    for (int h = 0; h < rows; h++) {  // (gathering loads, contiguous stores: faster than the other way round)
        real* plane_row = plane + ((int64_t)(w.TOP + h) * WT + w.LEFT) * w.CP;
        const real* in_row = inp_n + (int64_t)h * w.IW;
        if (TRANSPOSE_IN_REGISTERS) {  // 16 channels x 16 columns at a time, transposed in registers; the
            for (int cv = 0; cv < w.CP / VL; cv++) {  // last block of a row ends at its end (overlapping)
                for (int x0 = 0; x0 < cols; x0 += 16) {
                    const int x = x0 + 16 <= cols ? x0 : (cols >= 16 ? cols - 16 : 0);
                    const int width = cols < 16 ? cols : 16;
                    vec16f r[16];  // r[c]: channel cv*16 + c at columns x .. x+15, then the reverse
#pragma GCC unroll 16
                    for (int c = 0; c < 16; c++) {
                        r[c] = (vec16f){0};
                        if (cv * 16 + c < w.CIN) {
                            load16_first(&r[c], in_row + (int64_t)(cv * 16 + c) * w.IH * w.IW + x, width);
                        }
                    }
                    transpose_16x16(r);
#pragma GCC unroll 16
                    for (int j = 0; j < width; j++) {
                        memcpy(plane_row + (int64_t)(x + j) * w.CP + cv * 16, &r[j], sizeof(vec16f));
                    }
                }
            }
            continue;
        }
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
            if (TRANSPOSE_IN_REGISTERS) {  // 16 columns x 16 channels at a time, transposed in registers;
                for (int i = 0; i < height; i++) {  // the last block of a row ends at its end (overlapping)
                    for (int x0 = 0; x0 < w.OW; x0 += 16) {
                        const int x = x0 + 16 <= w.OW ? x0 : (w.OW >= 16 ? w.OW - 16 : 0);
                        const int width = w.OW < 16 ? w.OW : 16;
                        vec16f r[16];  // r[j]: the channels of column x + j, then r[l]: channel l's columns
#pragma GCC unroll 16
                        for (int j = 0; j < 16; j++) {
                            r[j] = (vec16f){0};
                            if (j < width) {
                                memcpy(&r[j], rows + ((int64_t)i * RW + x + j) * VL, sizeof(vec16f));
                            }
                        }
                        transpose_16x16(r);
#pragma GCC unroll 16
                        for (int l = 0; l < count; l++) {
                            store16_first(out_n + ((int64_t)(fv * VL + l) * w.OH + 2 * ty + i) * w.OW + x, &r[l], width);
                        }
                    }
                }
                continue;
            }
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

// ---- the weight gradient by Winograd ---------------------------------------------------------------------
// A tile's outputs are Y = A^T (U (.) V) A with U = G g G^T, V = B^T d B, so the tile's output gradient dY
// (2x2) gives dU = V (.) (A dY A^T), and the kernel's gradient is dg = G^T (sum of dU over tiles and samples) G:
// per sample, 16 GEMMs (CIN x tiles) . (tiles x M) reducing over the tiles, where the direct weight gradient
// multiplies 36 times per tile and channel pair.

// dout_n (M, OH, OW), one sample's output gradient -> e (16, T, MV * VL): e[k][t] = (A dY A^T)[k / 4][k % 4],
// dY the 2x2 output gradients of tile t (zero past the plane's edge), A = [1 0; 1 1; 1 -1; 0 -1], a vector of
// output channels at a time. Each row of tiles goes through rows (2, 2*TW, VL): its two rows of dout with
// the channels last (16 x 16 register transposes where TRANSPOSE_IN_REGISTERS, else value by value).
static inline __attribute__((always_inline))
void winograd_dout_transform(real* restrict e, const real* restrict dout_n, real* restrict rows, WinogradPass w)
{
    const int T = w.TH * w.TW, MP = w.MV * VL, RW = 2 * w.TW;
    for (int ty = 0; ty < w.TH; ty++) {
        for (int fv = 0; fv < w.MV; fv++) {
            for (int a = 0; a < 2; a++) {
                const int oy = 2 * ty + a;
                vec* row = (vec*)rows + a * RW;  // row[x]: channels fv*VL .. of dout at (oy, x)
                int x_end = 0;                   // columns from x_end on are zero
                if (oy < w.OH && TRANSPOSE_IN_REGISTERS) {
                    const int width = w.OW < 16 ? w.OW : 16;
                    for (int x0 = 0; x0 < w.OW; x0 += 16) {  // the last block ends at the row's end (overlapping)
                        const int x = x0 + 16 <= w.OW ? x0 : (w.OW >= 16 ? w.OW - 16 : 0);
                        vec16f r[16];  // r[l]: channel fv*16 + l at columns x .. x+15, then the reverse
#pragma GCC unroll 16
                        for (int l = 0; l < 16; l++) {
                            r[l] = (vec16f){0};
                            if (fv * 16 + l < w.M) {
                                load16_first(&r[l], dout_n + ((int64_t)(fv * 16 + l) * w.OH + oy) * w.OW + x, width);
                            }
                        }
                        transpose_16x16(r);
#pragma GCC unroll 16
                        for (int j = 0; j < width; j++) {
                            memcpy(&row[x + j], &r[j], sizeof(vec16f));
                        }
                    }
                    x_end = w.OW;
                } else if (oy < w.OH) {
                    for (int x = 0; x < w.OW; x++) {
                        for (int l = 0; l < VL; l++) {
                            row[x][l] = fv * VL + l < w.M ? dout_n[((int64_t)(fv * VL + l) * w.OH + oy) * w.OW + x] : 0;
                        }
                    }
                    x_end = w.OW;
                }
                for (int x = x_end; x < RW; x++) {
                    row[x] = (vec){0};
                }
            }
            const vec* row0 = (const vec*)rows;
            const vec* row1 = row0 + RW;
            for (int tx = 0; tx < w.TW; tx++) {
                const int t = ty * w.TW + tx;
                vec r[4][2];
#pragma GCC unroll 2
                for (int b = 0; b < 2; b++) {  // A dY
                    vec d0 = row0[2 * tx + b], d1 = row1[2 * tx + b];
                    r[0][b] = d0;
                    r[1][b] = d0 + d1;
                    r[2][b] = d0 - d1;
                    r[3][b] = -d1;
                }
                vec* e_t = (vec*)(e + (int64_t)t * MP) + fv;
                const int64_t k_step = (int64_t)T * w.MV;  // vectors from one position k to the next
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {  // (A dY) A^T
                    e_t[(i * 4 + 0) * k_step] = r[i][0];
                    e_t[(i * 4 + 1) * k_step] = r[i][0] + r[i][1];
                    e_t[(i * 4 + 2) * k_step] = r[i][0] - r[i][1];
                    e_t[(i * 4 + 3) * k_step] = -r[i][1];
                }
            }
        }
    }
}

// One weight-gradient GEMM tile at position k: du_k[c0 + i][fv0 + b] += sum over t of v_k[t][c0 + i] *
// e_k[t][fv0 + b] for `width` channels i and FB vectors b (v_k (T, CP), e_k (T, MV * VL), du_k (CIN, MV * VL)).
static inline __attribute__((always_inline))
void winograd_weight_grad_tile(real* restrict du_k, const real* restrict v_k, const real* restrict e_k, int c0,
                               int fv0, const int width, const int FB, WinogradPass w)
{
    vec acc[24];
    const int T = w.TH * w.TW, MV = w.MV;
#pragma GCC unroll 24
    for (int i = 0; i < width; i++) {
#pragma GCC unroll 2
        for (int b = 0; b < FB; b++) {
            acc[i * FB + b] = ((const vec*)(du_k + (int64_t)(c0 + i) * MV * VL))[fv0 + b];
        }
    }
    const real* v_t = v_k + c0;
    const vec* e_t = (const vec*)e_k + fv0;
    for (int t = 0; t < T; t++, v_t += w.CP, e_t += MV) {
        vec ev[2];
#pragma GCC unroll 2
        for (int b = 0; b < FB; b++) {
            ev[b] = e_t[b];
        }
#pragma GCC unroll 24
        for (int i = 0; i < width; i++) {
            real d = v_t[i];
#pragma GCC unroll 2
            for (int b = 0; b < FB; b++) {
                acc[i * FB + b] += d * ev[b];
            }
        }
    }
#pragma GCC unroll 24
    for (int i = 0; i < width; i++) {
#pragma GCC unroll 2
        for (int b = 0; b < FB; b++) {
            ((vec*)(du_k + (int64_t)(c0 + i) * MV * VL))[fv0 + b] = acc[i * FB + b];
        }
    }
}

// dout (N, M, OH, OW), and x (N, CIN, IH, IW) at row TOP, column LEFT of the tile plane as w says -> dweight
// (M, CIN, 3, 3), accumulated (+=):
//   dweight[m][c][p][q] += sum over n, oy, ox of dout[n][m][oy][ox] * plane_nc[oy + p][ox + q]
// Scratch: du (16, CIN, MV * VL), scratch (winograd_scratch_size(w) reals: tile plane, V, then e where M goes;
// the plane, once transformed, holds the rows of dout).
CNNC_KERNEL void winograd_weight_grad(real* restrict dweight, const real* restrict dout, const real* restrict x,
                                      real* restrict du, real* restrict scratch, int64_t N, WinogradPass w)
{
    const int T = w.TH * w.TW, MP = w.MV * VL;
    const int FB = w.MV % 2 == 0 ? 2 : 1;  // tiles of CB channels x FB vectors of filters: 16 accumulators
    const int CB = 16 / FB;
    real* plane = scratch;
    real* v = plane + (int64_t)(2 * w.TH + 2) * (2 * w.TW + 2) * w.CP;
    real* e = v + (int64_t)16 * T * w.CP;
    memset(du, 0, sizeof(real) * 16 * w.CIN * MP);
    for (int64_t n = 0; n < N; n++) {
        winograd_plane(plane, x + n * w.CIN * w.IH * w.IW, w);
        winograd_input_transform(v, plane, w);
        winograd_dout_transform(e, dout + n * w.M * w.OH * w.OW, plane, w);
        for (int k = 0; k < 16; k++) {
            const real* v_k = v + (int64_t)k * T * w.CP;
            const real* e_k = e + (int64_t)k * T * MP;
            real* du_k = du + (int64_t)k * w.CIN * MP;
            for (int fv0 = 0; fv0 < w.MV; fv0 += FB) {
                int c0 = 0;
                for (; c0 + CB <= w.CIN; c0 += CB) {
                    winograd_weight_grad_tile(du_k, v_k, e_k, c0, fv0, CB, FB, w);
                }
                if (c0 < w.CIN) {
                    winograd_weight_grad_tile(du_k, v_k, e_k, c0, fv0, w.CIN % CB, FB, w);
                }
            }
        }
    }
    // dg = G^T du G, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
    for (int m = 0; m < w.M; m++) {
        for (int c = 0; c < w.CIN; c++) {
            real d[4][4], h[3][4];
            for (int k = 0; k < 16; k++) {
                d[k / 4][k % 4] = du[((int64_t)k * w.CIN + c) * MP + m];
            }
            for (int j = 0; j < 4; j++) {  // G^T du
                h[0][j] = d[0][j] + (d[1][j] + d[2][j]) / 2;
                h[1][j] = (d[1][j] - d[2][j]) / 2;
                h[2][j] = (d[1][j] + d[2][j]) / 2 + d[3][j];
            }
            real* dw = dweight + ((int64_t)m * w.CIN + c) * 9;
            for (int p = 0; p < 3; p++) {  // (G^T du) G
                dw[p * 3 + 0] += h[p][0] + (h[p][1] + h[p][2]) / 2;
                dw[p * 3 + 1] += (h[p][1] - h[p][2]) / 2;
                dw[p * 3 + 2] += (h[p][1] + h[p][2]) / 2 + h[p][3];
            }
        }
    }
}

// inp is (N, C, H, W), weight (F, C, 3, 3), bias (F) or NULL -> out (N, F, OH, OW), as conv2d_forward.
// Scratch: u (16, C, FV * VL) the transformed weights, bpack the bias padded to whole vectors, wino
// (winograd_scratch_size; the tile plane holds the padding, so no padded copy of inp is made). prepare:
// transform weight and pad bias first; 0 when u and bpack already hold them (an inference pass whose weights
// are unchanged).
CNNC_KERNEL void conv2d_winograd_forward(real* restrict out, const real* restrict inp, const real* restrict weight,
                                         const real* restrict bias, real* restrict u, real* restrict bpack,
                                         real* restrict wino, int prepare, int64_t N, Conv2dWinograd b)
{
    if (prepare) {
        winograd_transform_weights(u, weight, 0, b.forward);
        memset(bpack, 0, sizeof(real) * b.forward.MV * VL);
        if (bias != NULL) {
            memcpy(bpack, bias, sizeof(real) * b.forward.M);
        }
    }
    winograd_correlation(out, inp, u, bias != NULL ? bpack : NULL, wino, N, b.forward);
}

// dout is (N, F, OH, OW), x the input (N, C, H, W) forward read, weight (F, C, 3, 3); accumulates (+=) dweight and dbias (F, or NULL), both by Winograd (winograd_weight_grad), and writes
// (=) the input gradient unless dinp is NULL, by Winograd over the padded output gradient:
//   dinp[n][c][h][w] = sum over f, p, q of weight[f][c][2 - p][2 - q] * dout[n][f][h - (2 - PH) + p][w - (2 - PW) + q]
// Scratch: u (16, max(C * FV, F * CV) * VL): the weight gradient's sums, then the turned weights; wino.
CNNC_KERNEL void conv2d_winograd_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                          const real* restrict dout, const real* restrict x,
                                          const real* restrict weight, real* restrict u, real* restrict wino,
                                          int64_t N, Conv2dWinograd b)
{
    Conv2d g = b.blocked.conv;
    if (dbias != NULL) {
        bias_grad(dbias, dout, N, g.F, g.OH * g.OW);  // dbias[f] += sum over n, oh, ow of dout[n][f][oh][ow]
    }
    winograd_weight_grad(dweight, dout, x, u, wino, N, b.forward);  // over the forward pass's tiles
    if (dinp != NULL) {
        winograd_transform_weights(u, weight, 1, b.input_grad);
        winograd_correlation(dinp, dout, u, NULL, wino, N, b.input_grad);
    }
}

#endif
