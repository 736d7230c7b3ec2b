// conv_blocked.h: the register-blocked 2-D convolution, forward and backward. The same maths as conv.h
// (whose comments state it), organised for vector registers: tiles of output columns x a vector of output
// channels (or, with few channels, output channels x rows x a vector of columns) stay in registers while the
// inputs stream past. The input gradient is the same correlation with the channels exchanged, over the
// output gradient spread out by the stride and the kernel turned 180 degrees. Every tile size is a field
// of Conv2dBlocked, chosen per layer by cnnc's planner (c_codegen.BlockedConv); with the geometry a
// constant, every tile loop unrolls and the accumulators live in registers.
#ifndef CNNC_KERNELS_CONV_BLOCKED_H
#define CNNC_KERNELS_CONV_BLOCKED_H

#include "conv.h"
#include "vector.h"

typedef struct {
    Conv2d conv;                 // the layer
    int FV, CV;                  // vectors of VL filters, of VL input channels
    int HP, WP;                  // input plane as forward reads it (a zero-padded copy when `padded`)
    int HD, WD;                  // output-gradient plane, padded by the kernel's reach (and spread by the stride
                                 // unless input_grad_phases)
    int OB, OB_TAIL;             // output columns per forward tile, in the last tile (0: none)
    int XB, XB_TAIL;             // input columns per input-gradient tile, in the last tile
    int CB, KB;                  // input channels, kernel columns per weight-gradient tile
    int padded;                  // forward copies the input into xpad (kept for backward)
    int forward_by_columns;      // forward vectorised over output columns (few filters), FMB x FRB tiles
    int FMB, FRB;
    int input_grad_by_columns;   // the input gradient likewise, XMB x XRB tiles
    int XMB, XRB;
    int weight_grad_by_columns;  // the weight gradient vectorised over output columns, WMB filters x KW taps
    int WMB;
    int input_grad_phases;       // stride > 1: the input gradient one phase of the stride at a time (see below)
    int pointwise;               // 1x1, no padding: forward a GEMM over the flat planes (see below), and
    int pointwise_weight_grad;   // the weight gradient, the input gradient likewise (always with a stride; with
    int pointwise_input_grad;    // stride 1 where the planner finds it faster than the general path)
    int PMB, PSB;                // pointwise forward and input gradient: outputs x vectors of positions per tile
    int PFB, PCB, PNB;           // pointwise weight gradient: filters x channels per tile, samples per cache block
} Conv2dBlocked;

// One correlation: OH x OW outputs per channel from inp (CIN, IH, IW) per sample, with the kernel, stride and
// dilation, reading input rows from ROW0 and columns from COL0; input rows outside ROW_LO .. ROW_HI are zero
// padding. Tiles: OB / OB_TAIL output columns x a vector of channels, or (by_columns) MB channels x RB rows x a
// vector. Output (oy, ox) of channel m lands at out[m][OROW0 + oy*OSH][OCOL0 + ox*OSW] of planes (M, OPH, OPW):
// one phase of a strided input gradient (OSH, OSW > 1, vectors over channels only), else OPH, OPW = OH, OW.
typedef struct {
    int CIN, M, MV, IH, IW, OH, OW, KH, KW, SH, SW, DH, DW, ROW0, COL0, ROW_LO, ROW_HI, OB, OB_TAIL, by_columns, MB, RB;
    int OPH, OPW, OROW0, OCOL0, OSH, OSW;
} Correlation;

static inline Correlation conv2d_forward_correlation(Conv2dBlocked b)
{
    Conv2d g = b.conv;
    Correlation c = {g.C, g.F, b.FV, b.HP, b.WP, g.OH, g.OW, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW, 0, 0,
                     g.PH, g.PH + g.H - 1, b.OB, b.OB_TAIL, b.forward_by_columns, b.FMB, b.FRB,
                     g.OH, g.OW, 0, 0, 1, 1};
    return c;
}

static inline Correlation conv2d_input_grad_correlation(Conv2dBlocked b)
{
    Conv2d g = b.conv;
    Correlation c = {g.F, g.C, b.CV, b.HD, b.WD, g.H, g.W, g.KH, g.KW, 1, 1, g.DH, g.DW, g.PH, g.PW,
                     (g.KH - 1) * g.DH, (g.KH - 1) * g.DH + (g.OH - 1) * g.SH, b.XB, b.XB_TAIL,
                     b.input_grad_by_columns, b.XMB, b.XRB, g.H, g.W, 0, 0, 1, 1};
    return c;
}

// One register tile: `width` output columns x VL output channels mv*VL .. mv*VL + VL-1 of output row oy,
// from column ox0. Each input value is broadcast and multiplied by a vector of VL weights; the width x VL
// sums stay in registers until the transposed store:
//   out[m][oy][ox0 + j] = bias[m] + sum over c, p, q of w[p][q][c][m] * inp[c][ROW0 + oy*SH + p*DH][COL0 + (ox0 + j)*SW + q*DW]
static inline __attribute__((always_inline))
void correlation_tile(real* restrict out, const real* restrict inp, const vec* restrict w, const real* restrict bias,
                      int oy, int ox0, int mv, const int width, Correlation g)
{
    vec acc[MAX_TILE];
    vec b = {0};
    if (bias != NULL) {
        memcpy(&b, bias + mv * VL, sizeof(vec));
    }
    // every loop over the tile unrolled fully, however large the function it is inlined into: otherwise
    // the accumulators live in memory (measured: a 28x28 input gradient 40% slower)
    #pragma GCC unroll 16
    for (int j = 0; j < width; j++) {
        acc[j] = b;
    }
    // kernel rows that read only zero padding (input rows outside ROW_LO .. ROW_HI) add nothing: skipped
    int p_begin = 0, p_end = g.KH;
    while (p_begin < p_end && g.ROW0 + oy * g.SH + p_begin * g.DH < g.ROW_LO) {
        p_begin++;
    }
    while (p_end > p_begin && g.ROW0 + oy * g.SH + (p_end - 1) * g.DH > g.ROW_HI) {
        p_end--;
    }
    // channels innermost: consecutive steps read different planes (no register juggling between taps)
    for (int p = p_begin; p < p_end; p++) {
        for (int q = 0; q < g.KW; q++) {
            const real* tap = inp + (g.ROW0 + oy * g.SH + p * g.DH) * g.IW + g.COL0 + ox0 * g.SW + q * g.DW;
            const vec* w_pq = w + (p * g.KW + q) * g.CIN * g.MV + mv;
            for (int c = 0; c < g.CIN; c++) {
                vec wv = w_pq[c * g.MV];
                const real* x = tap + (int64_t)c * g.IH * g.IW;
                #pragma GCC unroll 16
                for (int j = 0; j < width; j++) {
                    acc[j] += wv * x[j * g.SW];
                }
            }
        }
    }
    // the transposed store: lane l of acc[j] is output (oy, ox0 + j) of channel mv*VL + l
    real lanes[MAX_TILE][VL];
    #pragma GCC unroll 16
    for (int j = 0; j < width; j++) {
        memcpy(lanes[j], &acc[j], sizeof(vec));
    }
    int count = g.M - mv * VL < VL ? g.M - mv * VL : VL;
    for (int l = 0; l < count; l++) {
        real* out_row = out + ((int64_t)(mv * VL + l) * g.OPH + g.OROW0 + oy * g.OSH) * g.OPW + g.OCOL0 + ox0 * g.OSW;
        for (int j = 0; j < width; j++) {
            out_row[j * g.OSW] = lanes[j][l];
        }
    }
}

// The same correlation vectorised over output columns, for few output channels (unit column stride).
// One tile: output channels m0 .. m0+MB-1 x output rows oy .. oy+RB-1 x `width` <= VL columns from ox0.
// Each weight is broadcast and multiplied by a vector of VL neighbouring input columns; w is the plain
// (M, CIN, KH, KW) array:
//   out[m][oy + r][ox0 + j] = bias[m] + sum over c, p, q of w[m][c][p][q] * inp[c][ROW0 + (oy + r)*SH + p*DH][COL0 + ox0 + j + q*DW]
// The input vectors may read up to VL-1 reals past a row (into the next row, or the block's slack): those
// lanes are never stored.
static inline __attribute__((always_inline))
void correlation_by_columns_tile(real* restrict out, const real* restrict inp, const real* restrict w,
                                 const real* restrict bias, int oy, int ox0, int m0, const int width, Correlation g)
{
    vec acc[MAX_TILE];  // acc[i * RB + r]: channel m0 + i, row oy + r
    for (int i = 0; i < g.MB; i++) {
        vec b = {0};
        b += (bias != NULL) ? bias[m0 + i] : 0;
        for (int r = 0; r < g.RB; r++) {
            acc[i * g.RB + r] = b;
        }
    }
    // kernel rows whose input rows, for every output row of the tile, lie outside ROW_LO .. ROW_HI (zero
    // padding) add nothing: skipped
    int p_begin = 0, p_end = g.KH;
    while (p_begin < p_end && g.ROW0 + (oy + g.RB - 1) * g.SH + p_begin * g.DH < g.ROW_LO) {
        p_begin++;
    }
    while (p_end > p_begin && g.ROW0 + oy * g.SH + (p_end - 1) * g.DH > g.ROW_HI) {
        p_end--;
    }
    for (int c = 0; c < g.CIN; c++) {
        for (int p = p_begin; p < p_end; p++) {
            for (int q = 0; q < g.KW; q++) {
                vec x[MAX_TILE];
                for (int r = 0; r < g.RB; r++) {
                    memcpy(&x[r], inp + ((int64_t)c * g.IH + g.ROW0 + (oy + r) * g.SH + p * g.DH) * g.IW
                                  + g.COL0 + ox0 + q * g.DW, sizeof(vec));
                }
                for (int i = 0; i < g.MB; i++) {
                    real wv = w[(((m0 + i) * g.CIN + c) * g.KH + p) * g.KW + q];
                    for (int r = 0; r < g.RB; r++) {
                        acc[i * g.RB + r] += wv * x[r];
                    }
                }
            }
        }
    }
    for (int i = 0; i < g.MB; i++) {
        for (int r = 0; r < g.RB; r++) {
            memcpy(out + ((int64_t)(m0 + i) * g.OH + oy + r) * g.OW + ox0, &acc[i * g.RB + r], sizeof(real) * width);
        }
    }
}

// out is (N, M, OH, OW), inp is (N, CIN, IH, IW). Not by columns: w is the packed (KH, KW, CIN, MV) vectors,
// bias (MV * VL) or NULL; every output row is OW / OB tiles of OB columns and, if OB_TAIL, one of OB_TAIL.
// By columns: w is (M, CIN, KH, KW), bias (M) or NULL; every output row is OW / VL vectors and a last one
// of OB_TAIL columns.
CNNC_KERNEL void correlation(real* restrict out, const real* restrict inp, const real* restrict w,
                             const real* restrict bias, int64_t N, Correlation g)
{
    for (int64_t n = 0; n < N; n++) {
        real* out_n = out + n * g.M * g.OPH * g.OPW;
        const real* inp_n = inp + n * g.CIN * g.IH * g.IW;
        if (g.by_columns) {
            for (int oy = 0; oy < g.OH; oy += g.RB) {
                for (int m0 = 0; m0 < g.M; m0 += g.MB) {
                    int ox0 = 0;
                    for (; ox0 + VL <= g.OW; ox0 += VL) {
                        correlation_by_columns_tile(out_n, inp_n, w, bias, oy, ox0, m0, VL, g);
                    }
                    if (g.OB_TAIL) {
                        correlation_by_columns_tile(out_n, inp_n, w, bias, oy, ox0, m0, g.OB_TAIL, g);
                    }
                }
            }
        } else {
            for (int oy = 0; oy < g.OH; oy++) {
                for (int mv = 0; mv < g.MV; mv++) {
                    int ox0 = 0;
                    for (; ox0 + g.OB <= g.OW; ox0 += g.OB) {
                        correlation_tile(out_n, inp_n, (const vec*)w, bias, oy, ox0, mv, g.OB, g);
                    }
                    if (g.OB_TAIL) {
                        correlation_tile(out_n, inp_n, (const vec*)w, bias, oy, ox0, mv, g.OB_TAIL, g);
                    }
                }
            }
        }
    }
}

// weight (F, C, KH, KW), bias (F) or NULL -> wpack (KH, KW, C, FV * VL), bpack (FV * VL): filters last, zero
// beyond F
CNNC_KERNEL void conv2d_blocked_pack(real* restrict wpack, real* restrict bpack, const real* restrict weight,
                                     const real* restrict bias, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    for (int pq = 0; pq < g.KH * g.KW; pq++) {
        for (int c = 0; c < g.C; c++) {
            real* w_cpq = wpack + (pq * g.C + c) * b.FV * VL;
            for (int f = 0; f < b.FV * VL; f++) {
                w_cpq[f] = f < g.F ? weight[(f * g.C + c) * g.KH * g.KW + pq] : 0;
            }
        }
    }
    for (int f = 0; f < b.FV * VL; f++) {
        bpack[f] = (bias != NULL && f < g.F) ? bias[f] : 0;
    }
}

// src (H, W) -> dst (HP, WP): src at row top, column left, zeros around it. Only the frame is zeroed (not
// the whole plane first): each value of dst is written once.
static inline __attribute__((always_inline))
void copy_into_frame(real* restrict dst, const real* restrict src, const int H, const int W, const int HP,
                     const int WP, const int top, const int left)
{
    memset(dst, 0, sizeof(real) * top * WP);
    for (int h = 0; h < H; h++) {
        real* row = dst + (int64_t)(top + h) * WP;
        memset(row, 0, sizeof(real) * left);
        memcpy(row + left, src + (int64_t)h * W, sizeof(real) * W);
        memset(row + left + W, 0, sizeof(real) * (WP - left - W));
    }
    memset(dst + (int64_t)(top + H) * WP, 0, sizeof(real) * (HP - top - H) * WP);
}

// inp is (N, C, H, W) -> xpad (N, C, HP, WP): inp at row PH, column PW, zeros around it
CNNC_KERNEL void conv2d_blocked_pad(real* restrict xpad, const real* restrict inp, int64_t N, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    for (int64_t nc = 0; nc < N * g.C; nc++) {
        copy_into_frame(xpad + nc * b.HP * b.WP, inp + nc * g.H * g.W, g.H, g.W, b.HP, b.WP, g.PH, g.PW);
    }
}

// ---- pointwise convolutions (1x1, no padding): GEMMs over the flat planes --------------------------------
// With a 1x1 kernel of stride 1 and no padding, each sample's planes are matrices of S = H*W positions:
//   forward         out[n][f][s]  = bias[f] + sum over c of w[f][c] * x[n][c][s]       (F x C) . (C x S)
//   input gradient  dinp[n][c][s] = sum over f of w[f][c] * dout[n][f][s]              (C x F) . (F x S)
//   weight gradient dw[f][c]     += sum over n, s of dout[n][f][s] * x[n][c][s]        (F x NS) . (NS x C)
// All three are vectorised over positions, which are contiguous in NCHW: no packing, no transposed stores.
// (The vectors-of-filters tiles of the general path store each output value on its own, which costs as
// much as the arithmetic when a 1x1 kernel has few input channels.) With a stride, forward first copies the
// inputs it reads into xsub (N, C, OH, OW), which backward reads as x; the input gradient is computed on
// that grid (into a scratch dsub) and spread back, zeros between (conv2d_pointwise_spread).
// S = OH*OW in all of them.

// The first `count` reals from p in lanes 0 .. count-1, zeros after them; and the first `count` lanes of v
// stored to p. Lane by lane (a memcpy into a vector on the stack makes the next full load of it wait for the
// partial store). Only for planes shorter than a vector: longer planes end in a whole vector that overlaps
// the one before it.
static inline __attribute__((always_inline)) void load_partial(vec* v, const real* restrict p, const int count)
{
    *v = (vec){0};
    for (int l = 0; l < count; l++) {
        (*v)[l] = p[l];
    }
}

static inline __attribute__((always_inline)) void store_partial(real* restrict p, const vec* v, const int count)
{
    for (int l = 0; l < count; l++) {
        p[l] = (*v)[l];
    }
}

// Every loop over a tile's accumulators or operands below is unrolled fully (`#pragma GCC unroll`), so that
// they stay in registers however large the function the kernel is inlined into.

// One GEMM of the forward or input-gradient kind: out (M, S) = w . in (K, S) per sample, w[m][k] at
// w[m*WM + k*WK] (forward: the weight as it is, input gradient: transposed by the strides).
typedef struct {
    int M, K, S, MB, SB, WM, WK;
} PointwiseGemm;

// One register tile: outputs m0 .. m0+mb-1 x `full` whole vectors of positions from s0, then, if tail > 0,
// one vector for the plane's last `tail` positions: when the plane holds a whole vector, the one that ends
// at the plane's end (overlapping positions the tile before computed: it writes the same values again),
// else a partial one. Nothing is read or written past a plane.
//   out[m][s] = bias[m] + sum over k of w[m][k] * in[k][s]
static inline __attribute__((always_inline))
void pointwise_tile(real* restrict out, const real* restrict in, const real* restrict w, const real* restrict bias,
                    int m0, int s0, const int mb, const int full, const int tail, PointwiseGemm g)
{
    const int nv = full + (tail > 0);
    vec acc[32];  // acc[i * nv + r]: output m0 + i, vector r (the planner keeps mb * nv <= 24)
    #pragma GCC unroll 32
    for (int i = 0; i < mb; i++) {
        vec b = {0};
        b += (bias != NULL) ? bias[m0 + i] : 0;
        #pragma GCC unroll 32
        for (int r = 0; r < nv; r++) {
            acc[i * nv + r] = b;
        }
    }
    for (int k = 0; k < g.K; k++) {
        const real* in_k = in + (int64_t)k * g.S + s0;
        vec x[32];
        #pragma GCC unroll 32
        for (int r = 0; r < full; r++) {
            memcpy(&x[r], in_k + r * VL, sizeof(vec));
        }
        if (tail > 0 && g.S >= VL) {
            memcpy(&x[full], in_k + full * VL + tail - VL, sizeof(vec));
        } else if (tail > 0) {
            load_partial(&x[full], in_k + full * VL, tail);
        }
        #pragma GCC unroll 32
        for (int i = 0; i < mb; i++) {
            real wv = w[(m0 + i) * g.WM + k * g.WK];
            #pragma GCC unroll 32
            for (int r = 0; r < nv; r++) {
                acc[i * nv + r] += wv * x[r];
            }
        }
    }
    #pragma GCC unroll 32
    for (int i = 0; i < mb; i++) {
        real* out_m = out + (int64_t)(m0 + i) * g.S + s0;
        #pragma GCC unroll 32
        for (int r = 0; r < full; r++) {
            memcpy(out_m + r * VL, &acc[i * nv + r], sizeof(vec));
        }
        if (tail > 0 && g.S >= VL) {
            memcpy(out_m + full * VL + tail - VL, &acc[i * nv + full], sizeof(vec));
        } else if (tail > 0) {
            store_partial(out_m + full * VL, &acc[i * nv + full], tail);
        }
    }
}

// The tiles of outputs m0 .. m0+mb-1 over a whole plane: blocks of SB vectors, then the remaining whole
// vectors and the partial one in a last tile.
static inline __attribute__((always_inline))
void pointwise_row(real* restrict out, const real* restrict in, const real* restrict w, const real* restrict bias,
                   int m0, const int mb, PointwiseGemm g)
{
    const int vectors = g.S / VL, tail = g.S % VL;
    int s0 = 0;
    for (int v = 0; v + g.SB <= vectors; v += g.SB, s0 += g.SB * VL) {
        pointwise_tile(out, in, w, bias, m0, s0, mb, g.SB, 0, g);
    }
    if (vectors % g.SB != 0 || tail != 0) {
        pointwise_tile(out, in, w, bias, m0, s0, mb, vectors % g.SB, tail, g);
    }
}

// out is (N, M, S), in (N, K, S), w as PointwiseGemm says, bias (M) or NULL: out = w . in (+ bias), written (=).
CNNC_KERNEL void pointwise_gemm(real* restrict out, const real* restrict in, const real* restrict w,
                                const real* restrict bias, int64_t N, PointwiseGemm g)
{
    for (int64_t n = 0; n < N; n++) {
        real* out_n = out + n * g.M * g.S;
        const real* in_n = in + n * g.K * g.S;
        int m0 = 0;
        for (; m0 + g.MB <= g.M; m0 += g.MB) {
            pointwise_row(out_n, in_n, w, bias, m0, g.MB, g);
        }
        if (g.M % g.MB != 0) {
            pointwise_row(out_n, in_n, w, bias, m0, g.M % g.MB, g);
        }
    }
}

// One step of a weight-gradient tile: the vector of positions from s0, its lanes weighted by `keep`
// (masked: a plane's last vector, which ends at the plane's end and overlaps the one before it, counts only
// the lanes that one did not), or, with count < VL (a plane shorter than a vector), its first `count`
// positions and zeros. acc[i * cb + j] += dout_f0+i[s] * x_c0+j[s] per lane.
static inline __attribute__((always_inline))
void pointwise_weight_grad_step(vec* acc, const real* restrict dout_n, const real* restrict x_n, int s0,
                                const int count, const int masked, vec keep, const int fb, const int cb, const int S)
{
    vec dy[32];
    #pragma GCC unroll 32
    for (int i = 0; i < fb; i++) {
        if (count < VL) {
            load_partial(&dy[i], dout_n + (int64_t)i * S + s0, count);
        } else {
            memcpy(&dy[i], dout_n + (int64_t)i * S + s0, sizeof(vec));
        }
    }
    #pragma GCC unroll 32
    for (int j = 0; j < cb; j++) {
        vec xv;
        if (count < VL) {
            load_partial(&xv, x_n + (int64_t)j * S + s0, count);
        } else {
            memcpy(&xv, x_n + (int64_t)j * S + s0, sizeof(vec));
        }
        if (masked) {  // here, not on dy: fb masked dy vectors would stay live beside the fb * cb accumulators
            xv *= keep;
        }
        #pragma GCC unroll 32
        for (int i = 0; i < fb; i++) {
            acc[i * cb + j] += dy[i] * xv;
        }
    }
}

// One weight-gradient tile: filters f0 .. f0+fb-1 x channels c0 .. c0+cb-1, over samples n0 .. n1-1. Each
// accumulator is a vector of per-position partial sums, added across its lanes into dweight at the end:
//   dweight[f][c] += sum over n in n0..n1-1, s of dout[n][f][s] * x[n][c][s]
static inline __attribute__((always_inline))
void pointwise_weight_grad_tile(real* restrict dweight, const real* restrict dout, const real* restrict x,
                                int64_t n0, int64_t n1, int f0, int c0, const int fb, const int cb, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    const int S = g.OH * g.OW, vectors = S / VL, tail = S % VL;
    vec acc[32];  // acc[i * cb + j]: filter f0 + i, channel c0 + j (the planner keeps fb * cb <= 24)
    #pragma GCC unroll 32
    for (int i = 0; i < fb * cb; i++) {
        acc[i] = (vec){0};
    }
    vec keep;  // the last, overlapping vector of a plane counts only its last `tail` positions
    for (int l = 0; l < VL; l++) {
        keep[l] = l >= VL - tail;
    }
    for (int64_t n = n0; n < n1; n++) {
        const real* dout_n = dout + (n * g.F + f0) * S;
        const real* x_n = x + (n * g.C + c0) * S;
        for (int v = 0; v < vectors; v++) {
            pointwise_weight_grad_step(acc, dout_n, x_n, v * VL, VL, 0, keep, fb, cb, S);
        }
        if (tail != 0 && S >= VL) {
            pointwise_weight_grad_step(acc, dout_n, x_n, S - VL, VL, 1, keep, fb, cb, S);
        } else if (tail != 0) {
            pointwise_weight_grad_step(acc, dout_n, x_n, 0, tail, 0, keep, fb, cb, S);
        }
    }
    #pragma GCC unroll 32
    for (int i = 0; i < fb; i++) {
        #pragma GCC unroll 32
        for (int j = 0; j < cb; j++) {
            real lanes[VL];
            memcpy(lanes, &acc[i * cb + j], sizeof(vec));
            real sum = 0;
            for (int l = 0; l < VL; l++) {
                sum += lanes[l];
            }
            dweight[(f0 + i) * g.C + c0 + j] += sum;
        }
    }
}

// The filters f0 .. f0+fb-1 against every channel, over samples n0 .. n1-1.
static inline __attribute__((always_inline))
void pointwise_weight_grad_row(real* restrict dweight, const real* restrict dout, const real* restrict x,
                               int64_t n0, int64_t n1, int f0, const int fb, Conv2dBlocked b)
{
    int c0 = 0;
    for (; c0 + b.PCB <= b.conv.C; c0 += b.PCB) {
        pointwise_weight_grad_tile(dweight, dout, x, n0, n1, f0, c0, fb, b.PCB, b);
    }
    if (b.conv.C % b.PCB != 0) {
        pointwise_weight_grad_tile(dweight, dout, x, n0, n1, f0, c0, fb, b.conv.C % b.PCB, b);
    }
}

// dout (N, F, H, W), x (N, C, H, W) -> dweight (F, C, 1, 1), accumulated (+=). The batch goes in blocks of
// PNB samples whose dout and x fit in L2 together; every tile runs over one block before the next.
CNNC_KERNEL void conv2d_pointwise_weight_grad(real* restrict dweight, const real* restrict dout,
                                              const real* restrict x, int64_t N, Conv2dBlocked b)
{
    for (int64_t n0 = 0; n0 < N; n0 += b.PNB) {
        int64_t n1 = n0 + b.PNB < N ? n0 + b.PNB : N;
        int f0 = 0;
        for (; f0 + b.PFB <= b.conv.F; f0 += b.PFB) {
            pointwise_weight_grad_row(dweight, dout, x, n0, n1, f0, b.PFB, b);
        }
        if (b.conv.F % b.PFB != 0) {
            pointwise_weight_grad_row(dweight, dout, x, n0, n1, f0, b.conv.F % b.PFB, b);
        }
    }
}

// inp (N, C, H, W) -> xsub (N, C, OH, OW): xsub[n][c][oh][ow] = inp[n][c][oh*SH][ow*SW]
CNNC_KERNEL void conv2d_pointwise_subsample(real* restrict xsub, const real* restrict inp, int64_t N, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    for (int64_t nc = 0; nc < N * g.C; nc++) {
        for (int oh = 0; oh < g.OH; oh++) {
            const real* row = inp + (nc * g.H + oh * g.SH) * g.W;
            real* sub_row = xsub + (nc * g.OH + oh) * g.OW;
            for (int ow = 0; ow < g.OW; ow++) {
                sub_row[ow] = row[ow * g.SW];
            }
        }
    }
}

// dsub (N, C, OH, OW) -> dinp (N, C, H, W), written (=): dinp[n][c][oh*SH][ow*SW] = dsub[n][c][oh][ow], zero
// at every other input (a 1x1 kernel with a stride reads none of them)
CNNC_KERNEL void conv2d_pointwise_spread(real* restrict dinp, const real* restrict dsub, int64_t N, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    for (int64_t nc = 0; nc < N * g.C; nc++) {
        real* plane = dinp + nc * g.H * g.W;
        memset(plane, 0, sizeof(real) * g.H * g.W);
        for (int oh = 0; oh < g.OH; oh++) {
            real* row = plane + (int64_t)oh * g.SH * g.W;
            const real* sub_row = dsub + (nc * g.OH + oh) * g.OW;
            for (int ow = 0; ow < g.OW; ow++) {
                row[ow * g.SW] = sub_row[ow];
            }
        }
    }
}

static inline __attribute__((always_inline)) PointwiseGemm conv2d_pointwise_forward_gemm(Conv2dBlocked b)
{
    PointwiseGemm p = {b.conv.F, b.conv.C, b.conv.OH * b.conv.OW, b.PMB, b.PSB, b.conv.C, 1};
    return p;
}

// The input gradient reads the weights transposed, wt (C, F): with w (F, C) as it is, a tile's outputs would
// read neighbouring weights, which gcc gathers into one vector and shuffles out lane by lane (measured: the
// 24 -> 96 layer's input gradient twice as slow).
static inline __attribute__((always_inline)) PointwiseGemm conv2d_pointwise_input_grad_gemm(Conv2dBlocked b)
{
    PointwiseGemm p = {b.conv.C, b.conv.F, b.conv.OH * b.conv.OW, b.PMB, b.PSB, b.conv.F, 1};
    return p;
}

// weight (F, C, 1, 1) -> wt (C, F)
CNNC_KERNEL void conv2d_pointwise_transpose(real* restrict wt, const real* restrict weight, Conv2dBlocked b)
{
    for (int f = 0; f < b.conv.F; f++) {
        for (int c = 0; c < b.conv.C; c++) {
            wt[c * b.conv.F + f] = weight[f * b.conv.C + c];
        }
    }
}

// inp is (N, C, H, W), weight is (F, C, KH, KW), bias is (F) or NULL -> out is (N, F, OH, OW), as
// conv2d_forward. Scratch: xpad (N, C, HP, WP), the zero-padded input that backward reads too (unused unless
// b.padded); wpack and bpack, the packed weights (unused by columns). prepare: pack weight and bias first;
// 0 when wpack and bpack already hold this weight and bias (an inference pass whose weights are unchanged).
CNNC_KERNEL void conv2d_blocked_forward(real* restrict out, const real* restrict inp, const real* restrict weight,
                                        const real* restrict bias, real* restrict xpad, real* restrict wpack,
                                        real* restrict bpack, int prepare, int64_t N, Conv2dBlocked b)
{
    if (b.pointwise) {  // xpad holds the subsampled input (xsub) when there is a stride
        const real* x = inp;
        if (b.conv.SH > 1 || b.conv.SW > 1) {
            conv2d_pointwise_subsample(xpad, inp, N, b);
            x = xpad;
        }
        pointwise_gemm(out, x, weight, bias, N, conv2d_pointwise_forward_gemm(b));
        return;
    }
    const real* x = inp;
    if (b.padded) {
        conv2d_blocked_pad(xpad, inp, N, b);
        x = xpad;
    }
    if (b.forward_by_columns) {
        correlation(out, x, weight, bias, N, conv2d_forward_correlation(b));
    } else {
        if (prepare) {
            conv2d_blocked_pack(wpack, bpack, weight, bias, b);
        }
        correlation(out, x, wpack, bpack, N, conv2d_forward_correlation(b));
    }
}

// One step of the by-columns weight gradient: the VL output columns from ow0 of one output row. dout_f is
// that row of filter f0's gradient, x_row the input row read by kernel row p:
//   acc[i * KW + q] += keep[j] * dout[f0 + i][oh][ow0 + j] * x[c][oh*SH + p*DH][ow0 + j + q*DW]   (lane j)
// keep is all ones, except for the last vector of a row that is not a whole number of vectors long: that
// one ends at the row's end (whole loads, nothing read past the row) and keep zeroes the lanes already counted.
static inline __attribute__((always_inline))
void conv2d_weight_grad_step(vec* acc, const real* restrict dout_f, const real* restrict x_row, int ow0,
                             const int masked, vec keep, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    vec dy[MAX_TILE];
    for (int i = 0; i < b.WMB; i++) {
        memcpy(&dy[i], dout_f + (int64_t)i * g.OH * g.OW + ow0, sizeof(vec));
        if (masked) {
            dy[i] *= keep;
        }
    }
    for (int q = 0; q < g.KW; q++) {
        vec x;
        memcpy(&x, x_row + ow0 + q * g.DW, sizeof(vec));
        for (int i = 0; i < b.WMB; i++) {
            acc[i * g.KW + q] += dy[i] * x;
        }
    }
}

// dweight[f][c][p][q] += sum over n, oh, ow of dout[n][f][oh][ow] * x[n][c][oh*SH + p*DH][ow + q*DW], x (N, C,
// HP, WP) the input as forward read it. By columns (few filters): one task per (block of WMB filters,
// channel, kernel row) keeps WMB x KW vectors of per-column partial sums in registers over the whole batch
// and adds each vector's lanes once at the end.
CNNC_KERNEL void conv2d_weight_grad_by_columns(real* restrict dweight, const real* restrict dout,
                                               const real* restrict x, int64_t N, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    for (int f0 = 0; f0 < g.F; f0 += b.WMB) {
        for (int c = 0; c < g.C; c++) {
            for (int p = 0; p < g.KH; p++) {
                vec acc[MAX_TILE];
                for (int i = 0; i < b.WMB * g.KW; i++) {
                    acc[i] = (vec){0};
                }
                vec keep;  // the last, overlapping vector of a row counts only its last OW % VL columns
                for (int l = 0; l < VL; l++) {
                    keep[l] = l >= VL - g.OW % VL;
                }
                for (int64_t n = 0; n < N; n++) {
                    for (int oh = 0; oh < g.OH; oh++) {
                        const real* dout_f = dout + ((n * g.F + f0) * g.OH + oh) * g.OW;
                        const real* x_row = x + ((n * g.C + c) * b.HP + oh * g.SH + p * g.DH) * b.WP;
                        for (int ow0 = 0; ow0 + VL <= g.OW; ow0 += VL) {
                            conv2d_weight_grad_step(acc, dout_f, x_row, ow0, 0, keep, b);
                        }
                        if (g.OW % VL != 0) {
                            conv2d_weight_grad_step(acc, dout_f, x_row, g.OW - VL, 1, keep, b);
                        }
                    }
                }
                for (int i = 0; i < b.WMB; i++) {
                    for (int q = 0; q < g.KW; q++) {
                        real lanes[VL];
                        memcpy(lanes, &acc[i * g.KW + q], sizeof(vec));
                        real sum = 0;
                        for (int l = 0; l < VL; l++) {
                            sum += lanes[l];
                        }
                        dweight[(((f0 + i) * g.C + c) * g.KH + p) * g.KW + q] += sum;
                    }
                }
            }
        }
    }
}

// dout (N, F, OH, OW) -> dyt (N, OH, OW, FV * VL): dout with the filters last (zero beyond F), so that the
// weight gradient reads one vector of VL filters per output position.
CNNC_KERNEL void conv2d_blocked_transpose(real* restrict dyt, const real* restrict dout, int64_t N, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    for (int64_t n = 0; n < N; n++) {
        real* dyt_n = dyt + n * g.OH * g.OW * b.FV * VL;
        const real* dout_n = dout + n * g.F * g.OH * g.OW;
        for (int o = 0; o < g.OH * g.OW; o++) {
            for (int f = 0; f < b.FV * VL; f++) {
                dyt_n[(int64_t)o * b.FV * VL + f] = f < g.F ? dout_n[(int64_t)f * g.OH * g.OW + o] : 0;
            }
        }
    }
}

// Bytes of the output gradient and input that one block of samples of the weight gradient reads (half of
// this CPU's 1 MiB L2): every task runs over one block before the next, so the block is read from memory
// once rather than once per task.
#define WEIGHT_GRAD_BLOCK_BYTES (512 * 1024)

// The same weight gradient as conv2d_weight_grad_by_columns, vectorised over filters: dyt is dout with the
// filters last (conv2d_blocked_transpose). The batch goes in blocks of samples that fit L2; for each block,
// one task per (filter vector, block of CB channels, kernel row, block of KB kernel columns) keeps CB x KB
// vectors of VL filter sums in registers over the block's samples and adds them into dweight.
CNNC_KERNEL void conv2d_weight_grad(real* restrict dweight, const real* restrict dyt, const real* restrict x,
                                    int64_t N, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    const int64_t sample_bytes = (int64_t)sizeof(real) * (g.OH * g.OW * b.FV * VL + g.C * b.HP * b.WP);
    const int64_t block = WEIGHT_GRAD_BLOCK_BYTES / sample_bytes > 1 ? WEIGHT_GRAD_BLOCK_BYTES / sample_bytes : 1;
    for (int64_t n0 = 0; n0 < N; n0 += block) {
        int64_t n1 = n0 + block < N ? n0 + block : N;
        for (int fv = 0; fv < b.FV; fv++) {
            for (int c0 = 0; c0 < g.C; c0 += b.CB) {
                for (int p = 0; p < g.KH; p++) {
                    for (int q0 = 0; q0 < g.KW; q0 += b.KB) {
                        vec acc[MAX_TILE];  // acc[i * KB + k]: channel c0 + i, kernel column q0 + k
                        for (int i = 0; i < b.CB * b.KB; i++) {
                            acc[i] = (vec){0};
                        }
                        for (int64_t n = n0; n < n1; n++) {
                            const vec* dyt_n = (const vec*)(dyt + n * g.OH * g.OW * b.FV * VL) + fv;
                            const real* x_n = x + (n * g.C + c0) * b.HP * b.WP + p * g.DH * b.WP + q0 * g.DW;
                            for (int oh = 0; oh < g.OH; oh++) {
                                for (int ow = 0; ow < g.OW; ow++) {
                                    vec dy = dyt_n[(oh * g.OW + ow) * b.FV];
                                    const real* x_o = x_n + oh * g.SH * b.WP + ow * g.SW;
                                    for (int i = 0; i < b.CB; i++) {
                                        for (int k = 0; k < b.KB; k++) {
                                            acc[i * b.KB + k] += dy * x_o[(int64_t)i * b.HP * b.WP + k * g.DW];
                                        }
                                    }
                                }
                            }
                        }
                        int count = g.F - fv * VL < VL ? g.F - fv * VL : VL;
                        for (int i = 0; i < b.CB; i++) {
                            for (int k = 0; k < b.KB; k++) {
                                real lanes[VL];
                                memcpy(lanes, &acc[i * b.KB + k], sizeof(vec));
                                for (int l = 0; l < count; l++) {
                                    int f = fv * VL + l;
                                    dweight[((f * g.C + c0 + i) * g.KH + p) * g.KW + q0 + k] += lanes[l];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// dout (N, F, OH, OW) -> dypad (N, F, HD, WD), zero but for the spread-out dout:
//   dypad[n][f][(KH-1)*DH + oh*SH][(KW-1)*DW + ow*SW] = dout[n][f][oh][ow]
CNNC_KERNEL void conv2d_blocked_spread(real* restrict dypad, const real* restrict dout, int64_t N, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    if (g.SH == 1 && g.SW == 1) {  // nothing to spread: dout's rows, in a frame of zeros
        for (int64_t nf = 0; nf < N * g.F; nf++) {
            copy_into_frame(dypad + nf * b.HD * b.WD, dout + nf * g.OH * g.OW, g.OH, g.OW, b.HD, b.WD,
                            (g.KH - 1) * g.DH, (g.KW - 1) * g.DW);
        }
        return;
    }
    for (int64_t n = 0; n < N; n++) {
        real* dypad_n = dypad + n * g.F * b.HD * b.WD;
        memset(dypad_n, 0, sizeof(real) * g.F * b.HD * b.WD);
        for (int f = 0; f < g.F; f++) {
            for (int oh = 0; oh < g.OH; oh++) {
                int row = (g.KH - 1) * g.DH + oh * g.SH;
                if (row >= b.HD) {
                    break;  // gradient for the zero padding below the input: nobody needs it
                }
                for (int ow = 0; ow < g.OW; ow++) {
                    int col = (g.KW - 1) * g.DW + ow * g.SW;
                    if (col < b.WD) {
                        dypad_n[((int64_t)f * b.HD + row) * b.WD + col] = dout[((n * g.F + f) * g.OH + oh) * g.OW + ow];
                    }
                }
            }
        }
    }
}

// weight (F, C, KH, KW) -> wrot, each kernel turned 180 degrees with its channels exchanged:
// by columns (C, F, KH, KW); otherwise (KH, KW, F, CV * VL), zero beyond C.
CNNC_KERNEL void conv2d_blocked_rotate(real* restrict wrot, const real* restrict weight, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    if (b.input_grad_by_columns) {
        for (int f = 0; f < g.F; f++) {
            for (int c = 0; c < g.C; c++) {
                for (int pq = 0; pq < g.KH * g.KW; pq++) {
                    wrot[(c * g.F + f) * g.KH * g.KW + pq] = weight[(f * g.C + c) * g.KH * g.KW + g.KH * g.KW - 1 - pq];
                }
            }
        }
        return;
    }
    for (int f = 0; f < g.F; f++) {
        for (int p = 0; p < g.KH; p++) {
            for (int q = 0; q < g.KW; q++) {
                real* w_fpq = wrot + ((p * g.KW + q) * g.F + f) * b.CV * VL;
                for (int c = 0; c < b.CV * VL; c++) {
                    int tap = (g.KH - 1 - p) * g.KW + g.KW - 1 - q;
                    w_fpq[c] = c < g.C ? weight[(f * g.C + c) * g.KH * g.KW + tap] : 0;
                }
            }
        }
    }
}

// ---- the input gradient of a strided convolution, one phase of the stride at a time ----------------------
// With stride S, the input positions r, r + S, r + 2S, ... (phase r, 0 <= r < S) receive gradient only from
// the kernel taps p with (r + P - p*D) a multiple of S. Correlating the spread-out output gradient with the
// whole kernel (the stride-1 scheme above) would multiply by the zeros between its values: for a 3x3 kernel
// of stride 2, 3/4 of the multiply-adds. Instead each phase (ry, rx) is a dense, stride-1 correlation of the
// (padded, not spread) output gradient with its own taps, written to every SH-th row and SW-th column of dinp.

// The taps of phase r along one dimension (stride S, padding P, kernel K, dilation D, `extent` input
// positions): from tap `first` down, `count` taps `step` apart; for input position r + i*S, tap k reads output
// gradient position base + k*reach + i. `size` is the number of input positions in the phase.
typedef struct {
    int first, count, step, base, reach, size;
} PhaseTaps;

static inline __attribute__((always_inline)) PhaseTaps phase_taps(int r, int S, int P, int K, int D, int extent)
{
    int gcd = S, rest = D;
    while (rest != 0) {
        int t = gcd % rest;
        gcd = rest;
        rest = t;
    }
    PhaseTaps t = {0, 0, S / gcd, 0, D / gcd, extent > r ? (extent - r + S - 1) / S : 0};
    for (int p = K - 1; p >= 0; p--) {
        if ((r + P - p * D) % S == 0) {
            t.first = p;
            t.count = p / t.step + 1;
            t.base = (r + P - p * D) / S;  // exact, possibly negative
            break;
        }
    }
    return t;
}

// Rows above, columns left of the output gradient in its padded plane: enough for every phase's first tap.
static inline int phase_top(Conv2d g) { return ((g.KH - 1) * g.DH + g.SH - 1) / g.SH; }
static inline int phase_left(Conv2d g) { return ((g.KW - 1) * g.DW + g.SW - 1) / g.SW; }

// dout (N, F, OH, OW) -> dypad (N, F, HD, WD): dout at row phase_top, column phase_left, zeros around it
CNNC_KERNEL void conv2d_blocked_pad_dout(real* restrict dypad, const real* restrict dout, int64_t N, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    int top = phase_top(g), left = phase_left(g);
    for (int64_t nf = 0; nf < N * g.F; nf++) {
        copy_into_frame(dypad + nf * b.HD * b.WD, dout + nf * g.OH * g.OW, g.OH, g.OW, b.HD, b.WD, top, left);
    }
}

// dout is (N, F, OH, OW), weight (F, C, KH, KW) -> dinp (N, C, H, W), written (=), as the stride-1 scheme:
//   dinp[n][c][ry + i*SH][rx + j*SW] = sum over f, k, l of weight[f][c][py][qx] * dout[n][f][by + k*RY + i][bx + l*RX]
//   with py = ty.first - k*ty.step, qx = tx.first - l*tx.step (ty, tx: phase_taps of rows ry, columns rx).
// Scratch: dypad (N, F, HD, WD), the padded dout; wrot, each phase's taps packed (KHr, KWr, F, CV * VL) in turn.
// Tiles over each phase's columns: all of them up to MAX_TILE, else 8 and a tail.
CNNC_KERNEL void conv2d_blocked_input_grad_phases(real* restrict dinp, const real* restrict dout,
                                                  const real* restrict weight, real* restrict dypad,
                                                  real* restrict wrot, int64_t N, Conv2dBlocked b)
{
    Conv2d g = b.conv;
    int top = phase_top(g), left = phase_left(g);
    conv2d_blocked_pad_dout(dypad, dout, N, b);
    real* w_phase = wrot;
#pragma GCC unroll 4
    for (int ry = 0; ry < g.SH; ry++) {
#pragma GCC unroll 4
        for (int rx = 0; rx < g.SW; rx++) {
            PhaseTaps ty = phase_taps(ry, g.SH, g.PH, g.KH, g.DH, g.H);
            PhaseTaps tx = phase_taps(rx, g.SW, g.PW, g.KW, g.DW, g.W);
            if (ty.size == 0 || tx.size == 0) {
                continue;
            }
            if (ty.count == 0 || tx.count == 0) {  // no tap reaches these inputs: their gradient is zero
                for (int64_t nc = 0; nc < N * g.C; nc++) {
                    for (int i = 0; i < ty.size; i++) {
                        real* dinp_row = dinp + (nc * g.H + ry + i * g.SH) * g.W + rx;
                        for (int j = 0; j < tx.size; j++) {
                            dinp_row[j * g.SW] = 0;
                        }
                    }
                }
                continue;
            }
            for (int k = 0; k < ty.count; k++) {
                for (int l = 0; l < tx.count; l++) {
                    int tap = (ty.first - k * ty.step) * g.KW + tx.first - l * tx.step;
                    for (int f = 0; f < g.F; f++) {
                        real* w_klf = w_phase + ((k * tx.count + l) * g.F + f) * b.CV * VL;
                        for (int c = 0; c < b.CV * VL; c++) {
                            w_klf[c] = c < g.C ? weight[(f * g.C + c) * g.KH * g.KW + tap] : 0;
                        }
                    }
                }
            }
            int ob = tx.size <= MAX_TILE ? tx.size : 8;
            int ob_tail = tx.size <= MAX_TILE ? 0 : tx.size % 8;
            Correlation phase = {g.F, g.C, b.CV, b.HD, b.WD, ty.size, tx.size, ty.count, tx.count, 1, 1,
                                 ty.reach, tx.reach, top + ty.base, left + tx.base, top, top + g.OH - 1, ob, ob_tail,
                                 0, 0, 0, g.H, g.W, ry, rx, g.SH, g.SW};
            correlation(dinp, dypad, w_phase, NULL, N, phase);
            w_phase += ty.count * tx.count * g.F * b.CV * VL;
        }
    }
}

// dout is (N, F, OH, OW), x the input as forward read it (xpad if b.padded, else inp), weight (F, C, KH, KW);
// accumulates (+=) dweight (like weight) and dbias (F, or NULL), and writes (=) dinp (N, C, H, W) unless it
// is NULL (the first layer of a training step needs no input gradient). dyt, dypad and wrot are scratch; with
// b.input_grad_phases, conv2d_blocked_input_grad_phases computes dinp, otherwise
//   dinp[n][c][h][w] = sum over f, p, q of wrot[f][p][q][c] * dypad[n][f][PH + h + p*DH][PW + w + q*DW]
CNNC_KERNEL void conv2d_blocked_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                         const real* restrict dout, const real* restrict x, const real* restrict weight,
                                         real* restrict dyt, real* restrict dypad, real* restrict wrot, int64_t N,
                                         Conv2dBlocked b)
{
    Conv2d g = b.conv;
    if (dbias != NULL) {
        bias_grad(dbias, dout, N, g.F, g.OH * g.OW);  // dbias[f] += sum over n, oh, ow of dout[n][f][oh][ow]
    }
    if (b.weight_grad_by_columns) {
        conv2d_weight_grad_by_columns(dweight, dout, x, N, b);
    } else if (b.pointwise_weight_grad) {
        conv2d_pointwise_weight_grad(dweight, dout, x, N, b);
    } else {
        conv2d_blocked_transpose(dyt, dout, N, b);
        conv2d_weight_grad(dweight, dyt, x, N, b);
    }
    if (dinp != NULL && b.pointwise_input_grad) {  // wrot holds the transposed weights
        conv2d_pointwise_transpose(wrot, weight, b);
        if (g.SH > 1 || g.SW > 1) {  // on the strided grid in dypad (dsub), then spread
            pointwise_gemm(dypad, dout, wrot, NULL, N, conv2d_pointwise_input_grad_gemm(b));
            conv2d_pointwise_spread(dinp, dypad, N, b);
        } else {
            pointwise_gemm(dinp, dout, wrot, NULL, N, conv2d_pointwise_input_grad_gemm(b));
        }
    } else if (dinp != NULL && b.input_grad_phases) {
        conv2d_blocked_input_grad_phases(dinp, dout, weight, dypad, wrot, N, b);
    } else if (dinp != NULL) {
        conv2d_blocked_spread(dypad, dout, N, b);
        conv2d_blocked_rotate(wrot, weight, b);
        correlation(dinp, dypad, wrot, NULL, N, conv2d_input_grad_correlation(b));
    }
}

#endif
