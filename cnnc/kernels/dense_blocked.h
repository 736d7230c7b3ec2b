// dense_blocked.h: the register-blocked fully connected layer, forward and backward. The same maths as
// dense.h: tiles of samples x units, each sum a vector of VL partial sums along the inputs, added across
// lanes at the end; the backward passes are products c += a b in column panels of 4 vectors. The tails
// (DT, UT, REST_VECS, REST_LAST) come from the planner (c_codegen.plan_dense).
#ifndef CNNC_KERNELS_DENSE_BLOCKED_H
#define CNNC_KERNELS_DENSE_BLOCKED_H

#include "dense.h"
#include "vector.h"

typedef struct {
    Dense dense;                // the layer
    int DV, DT;                 // whole vectors of inputs, inputs left over
    int UT;                     // units left over by groups of 4
    int REST_VECS, REST_LAST;   // the backward's last, narrower column panel: vectors, reals in its last vector (0: none)
} DenseBlocked;

// One tile of `rows` samples x `units` units (constants once inlined) of out[n][u] = bias[u] + sum over d of
// weight[u][d] * inp[n][d]: inp and weight are both read along d, in DV whole vectors and one of DT reals
// (zero-filled).
static inline __attribute__((always_inline))
void dense_blocked_tile(real* restrict out, const real* restrict inp, const real* restrict weight,
                        const real* restrict bias, int64_t n0, int u0, const int rows, const int units, DenseBlocked b)
{
    Dense g = b.dense;
    vec acc[4][4];
    for (int i = 0; i < rows; i++) {
        for (int u = 0; u < units; u++) {
            acc[i][u] = (vec){0};
        }
    }
    for (int d = 0; d < b.DV * VL; d += VL) {
        vec x[4];
        for (int i = 0; i < rows; i++) {
            memcpy(&x[i], inp + (n0 + i) * g.D + d, sizeof(vec));
        }
        for (int u = 0; u < units; u++) {
            vec w;
            memcpy(&w, weight + (int64_t)(u0 + u) * g.D + d, sizeof(vec));
            for (int i = 0; i < rows; i++) {
                acc[i][u] += x[i] * w;
            }
        }
    }
    if (b.DT) {
        vec x[4];
        for (int i = 0; i < rows; i++) {
            x[i] = (vec){0};
            memcpy(&x[i], inp + (n0 + i) * g.D + b.DV * VL, sizeof(real) * b.DT);
        }
        for (int u = 0; u < units; u++) {
            vec w = {0};
            memcpy(&w, weight + (int64_t)(u0 + u) * g.D + b.DV * VL, sizeof(real) * b.DT);
            for (int i = 0; i < rows; i++) {
                acc[i][u] += x[i] * w;
            }
        }
    }
    for (int i = 0; i < rows; i++) {
        for (int u = 0; u < units; u++) {
            real lanes[VL];
            memcpy(lanes, &acc[i][u], sizeof(vec));
            real sum = (bias != NULL) ? bias[u0 + u] : 0;
            for (int l = 0; l < VL; l++) {
                sum += lanes[l];
            }
            out[(n0 + i) * g.U + u0 + u] = sum;
        }
    }
}

// Units u0 .. u0 + units-1 (a constant once inlined) for every sample: tiles of 4 samples, then 1-3. The
// units' weight rows stay in cache while all the samples pass.
static inline __attribute__((always_inline))
void dense_blocked_units(real* restrict out, const real* restrict inp, const real* restrict weight,
                         const real* restrict bias, int64_t N, int u0, const int units, DenseBlocked b)
{
    int64_t n0 = 0;
    for (; n0 + 4 <= N; n0 += 4) {
        dense_blocked_tile(out, inp, weight, bias, n0, u0, 4, units, b);
    }
    switch (N - n0) {  // the last 1-3 samples, each count its own constant-size tile
    case 3: dense_blocked_tile(out, inp, weight, bias, n0, u0, 3, units, b); break;
    case 2: dense_blocked_tile(out, inp, weight, bias, n0, u0, 2, units, b); break;
    case 1: dense_blocked_tile(out, inp, weight, bias, n0, u0, 1, units, b); break;
    default: break;
    }
}

// inp is (N, D), weight is (U, D), bias is (U) or NULL -> out is (N, U), as dense_forward. Groups of 4
// units (and the last UT): the weights are read once per step.
CNNC_KERNEL void dense_blocked_forward(real* restrict out, const real* restrict inp, const real* restrict weight,
                                       const real* restrict bias, int64_t N, DenseBlocked b)
{
    for (int t = 0; t < b.dense.U / 4; t++) {
        dense_blocked_units(out, inp, weight, bias, N, t * 4, 4, b);
    }
    if (b.UT) {
        dense_blocked_units(out, inp, weight, bias, N, b.dense.U / 4 * 4, b.UT, b);
    }
}

// One tile of `rows` rows x `vecs` vectors along d (the last vector `last` reals):
//   c[i][d] += sum over k < count of a[i*a_row + k*a_col] * bm[k * D + d]   (= instead with `overwrite`)
// the a values are broadcast, the bm rows read as vectors. Used for dinp = dout weight (i: samples, k: units)
// and for dweight = dout^T inp (i: units, k: samples).
static inline __attribute__((always_inline))
void dense_outer_tile(real* restrict c, const real* restrict a, int64_t a_row, int64_t a_col, const real* restrict bm,
                      int64_t count, int d0, const int rows, const int vecs, const int last, const int overwrite, int D)
{
    vec acc[4][4];
    for (int i = 0; i < rows; i++) {
        for (int v = 0; v < vecs; v++) {
            acc[i][v] = (vec){0};
        }
    }
    for (int64_t k = 0; k < count; k++) {
        vec bv[4];
        for (int v = 0; v < vecs; v++) {
            bv[v] = (vec){0};
            memcpy(&bv[v], bm + k * D + d0 + v * VL, sizeof(real) * (v == vecs - 1 ? last : VL));
        }
        for (int i = 0; i < rows; i++) {
            real s = a[i * a_row + k * a_col];
            for (int v = 0; v < vecs; v++) {
                acc[i][v] += s * bv[v];
            }
        }
    }
    for (int i = 0; i < rows; i++) {
        for (int v = 0; v < vecs; v++) {
            real* c_iv = c + (int64_t)i * D + d0 + v * VL;
            if (v < vecs - 1 || last == VL) {  // a whole vector: c += acc (or c = acc) in one go
                vec sum = acc[i][v];
                if (!overwrite) {
                    vec old;
                    memcpy(&old, c_iv, sizeof(vec));
                    sum += old;
                }
                memcpy(c_iv, &sum, sizeof(vec));
            } else {
                real lanes[VL];
                memcpy(lanes, &acc[i][v], sizeof(vec));
                for (int l = 0; l < last; l++) {
                    c_iv[l] = overwrite ? lanes[l] : c_iv[l] + lanes[l];
                }
            }
        }
    }
}

// One column panel of c, d0 .. d0 + vecs*VL (the last vector `last` reals; constants once inlined), for every
// row: tiles of 4 rows, then 1-3. The panel of bm it reads (count x vecs vectors) stays in cache for all rows.
static inline __attribute__((always_inline))
void dense_outer_panel(real* restrict c, const real* restrict a, int64_t a_row, int64_t a_col, const real* restrict bm,
                       int64_t count, int64_t rows_total, int d0, const int vecs, const int last, const int overwrite,
                       int D)
{
    int64_t i0 = 0;
    for (; i0 + 4 <= rows_total; i0 += 4) {
        dense_outer_tile(c + i0 * D, a + i0 * a_row, a_row, a_col, bm, count, d0, 4, vecs, last, overwrite, D);
    }
    switch (rows_total - i0) {
    case 3: dense_outer_tile(c + i0 * D, a + i0 * a_row, a_row, a_col, bm, count, d0, 3, vecs, last, overwrite, D); break;
    case 2: dense_outer_tile(c + i0 * D, a + i0 * a_row, a_row, a_col, bm, count, d0, 2, vecs, last, overwrite, D); break;
    case 1: dense_outer_tile(c + i0 * D, a + i0 * a_row, a_row, a_col, bm, count, d0, 1, vecs, last, overwrite, D); break;
    default: break;
    }
}

// c (rows_total, D) += a bm (overwrite: c = a bm, every element written), a addressed as a[i*a_row + k*a_col]
// (rows_total x count), bm (count, D). Column panels of 4 vectors and the last, narrower one: each output's
// sum in one order.
static inline __attribute__((always_inline))
void dense_outer(real* restrict c, const real* restrict a, int64_t a_row, int64_t a_col, const real* restrict bm,
                 int64_t count, int64_t rows_total, const int overwrite, DenseBlocked b)
{
    int D = b.dense.D;
    for (int t = 0; t < D / (4 * VL); t++) {
        dense_outer_panel(c, a, a_row, a_col, bm, count, rows_total, t * 4 * VL, 4, VL, overwrite, D);
    }
    if (b.REST_VECS) {
        dense_outer_panel(c, a, a_row, a_col, bm, count, rows_total, D / (4 * VL) * 4 * VL, b.REST_VECS, b.REST_LAST,
                          overwrite, D);
    }
}

// dout is (N, U), inp is (N, D), weight is (U, D); writes (=) all of dinp (N, D; skipped if NULL: it needs no
// zeroing first), accumulates (+=) dweight (U, D) and dbias (U, or NULL):
//   dinp[n][d] = sum over u of dout[n][u] * weight[u][d]
//   dweight[u][d] += sum over n of dout[n][u] * inp[n][d]
//   dbias[u] += sum over n of dout[n][u]
CNNC_KERNEL void dense_blocked_backward(real* restrict dinp, real* restrict dweight, real* restrict dbias,
                                        const real* restrict dout, const real* restrict inp, const real* restrict weight,
                                        int64_t N, DenseBlocked b)
{
    int U = b.dense.U;
    if (dinp != NULL) {
        dense_outer(dinp, dout, U, 1, weight, U, N, 1, b);
    }
    dense_outer(dweight, dout, 1, U, inp, N, U, 0, b);
    if (dbias != NULL) {
        for (int64_t n = 0; n < N; n++) {
            for (int u = 0; u < U; u++) {
                dbias[u] += dout[n * U + u];
            }
        }
    }
}

#endif
