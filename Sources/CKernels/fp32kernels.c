// The fp32 few-row products on packed GGUF weights (see include/ckernels.h, "fp32 products").
//
// Each kernel is written once, as generic vector code (clang's vector extensions, 8 floats a
// vector), and compiled twice: inside an `avx2,fma` function, where a vector is one ymm register
// and every multiply-add is fused (vfmadd), and inside a function with no target attribute, where
// a vector is two SSE2 registers (or two NEON ones on aarch64) and a multiply-add is a multiply
// then an add. The level is chosen at run time (fk_level), so the package needs no -mavx2 or
// -target-cpu and runs on any x86-64 or aarch64 CPU.
//
// Summation order, the same at both levels (they differ only in the rounding of fused against
// separate multiply-adds):
//   forward y[i, r] = Σ_c x[i, c] w[r, c]: 8 lanes, lane l summing the columns c ≡ l (mod 8) in
//     increasing order, then ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), then added to y
//     when accumulating; the same for a row in a pair, a lone row and a last strip of 1-3 rows,
//     so that a row's result does not depend on the other rows of its batch.
//   backward out[i, c] += Σ_r dy[i, r] w[r, c]: one multiply-add per weight row, rows in
//     increasing order (QuantGEMM adds the threads' partial sums in thread order).
//   head: as forward and backward, with the online softmax in the order the comments give.
// A decoded weight is the fp32 value Dequant gives (d·q + m, the same multiply and add, never
// fused: contraction is off for the whole file, and the only fused operations are the explicit
// ones `madd` makes at the AVX2 level).
#include "ckernels.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#pragma STDC FP_CONTRACT OFF
// The 8-float vectors pass between functions that are all inlined into one of the two levels, so
// no call ever crosses the AVX / non-AVX ABI boundary this warning is about.
#pragma clang diagnostic ignored "-Wpsabi"

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef int8_t v8b __attribute__((vector_size(8)));
typedef float v4f __attribute__((vector_size(16)));
typedef float v2f __attribute__((vector_size(8)));

#define FK_INLINE static inline __attribute__((always_inline))

// ---- level ----

#if defined(__x86_64__)
int fk_cpu_level(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? FK_AVX2 : FK_BASELINE;
}
#else
int fk_cpu_level(void) { return FK_BASELINE; }
#endif

// -1: not chosen yet (the first fk_level() reads the CPU and $INTERVENE_FP32_KERNELS).
static int fk_current = -1;

int fk_set_level(int wanted) {
    const int cpu = fk_cpu_level();
    fk_current = wanted < FK_BASELINE ? FK_BASELINE : (wanted > cpu ? cpu : wanted);
    return fk_current;
}

int fk_level(void) {
    if (fk_current < 0) {
        const char *env = getenv("INTERVENE_FP32_KERNELS");
        fk_set_level(env && strcmp(env, "baseline") == 0 ? FK_BASELINE : FK_AVX2);
    }
    return fk_current;
}

// ---- vector helpers (no target: they inline into either level) ----

FK_INLINE v8f ld(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
FK_INLINE void st(float *p, v8f v) { memcpy(p, &v, sizeof v); }
FK_INLINE v8f splat(float x) { return (v8f){x, x, x, x, x, x, x, x}; }
// acc + a·b: fused at the AVX2 level (`fused` is a constant after inlining), else rounded twice.
FK_INLINE v8f madd(v8f acc, v8f a, v8f b, int fused) { return fused ? __builtin_elementwise_fma(a, b, acc) : acc + a * b; }
// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) of lanes l0…l3 = lo, l4…l7 = hi
FK_INLINE float hsum_halves(v4f lo, v4f hi) {
    const v4f h = lo + hi;
    const v2f q = __builtin_shufflevector(h, h, 0, 1) + __builtin_shufflevector(h, h, 2, 3);
    return q[0] + q[1];
}
FK_INLINE float hsum(v8f a) {
    return hsum_halves(__builtin_shufflevector(a, a, 0, 1, 2, 3), __builtin_shufflevector(a, a, 4, 5, 6, 7));
}
FK_INLINE v4f ld4(const float *p) { v4f v; memcpy(&v, p, sizeof v); return v; }
FK_INLINE v8f pick(v8i mask, v8f a, v8f b) { return (v8f)(((v8i)a & mask) | ((v8i)b & ~mask)); }

// ---- decoding (the packed layouts are Swift's PackedWeight) ----

// The 32 weights at columns [col, col + 32) of a packed row (col a multiple of 32): one GGUF
// block, so the scale and offset are loaded once and every shift is a constant.
FK_INLINE void decode32(int kind, const uint8_t *row, int col, float *dst) {
    if (kind == FK_Q8_0) {
        const uint8_t *blk = row + (size_t)(col >> 5) * 36;
        float d;
        memcpy(&d, blk, 4);
        for (int g = 0; g < 4; g++) {       // d·q
            v8b q;
            memcpy(&q, blk + 4 + 8 * g, 8);
            st(dst + 8 * g, splat(d) * __builtin_convertvector(q, v8f));
        }
        return;
    }
    // 4-bit: 64 weights per 48-byte chunk, (d₀, m₀, d₁, m₁) then eight 32-bit lanes whose
    // nibble g holds weight 8g + lane; block h of the chunk is nibbles 4h…4h+3
    const uint8_t *chunk = row + (size_t)(col >> 6) * 48;
    const int h = (col >> 5) & 1;
    v8u v;
    memcpy(&v, chunk + 16, 32);
    v = v >> (uint32_t)(16 * h);
    float d, m;
    memcpy(&d, chunk + 8 * h, 4);
    memcpy(&m, chunk + 8 * h + 4, 4);
    for (int g = 0; g < 4; g++) {
        const v8f q = __builtin_convertvector((v8i)((v >> (uint32_t)(4 * g)) & 0xF), v8f);
        if (kind == FK_Q4_1) st(dst + 8 * g, splat(d) * q + splat(m));     // d·q + m
        else st(dst + 8 * g, splat(d) * (q - splat(8)));                    // d·(q − 8)
    }
}

FK_INLINE void decode_row(int kind, const uint8_t *row, int k, float *dst) {
    for (int c = 0; c < k; c += 32) decode32(kind, row, c, dst + c);
}

// ---- the products on one strip of decoded weight rows (4 rows, k floats apart) ----

// y[i, r…r+3] for two activation rows: 8 accumulators of 8 lanes. No decoding interleaved here:
// with 8 accumulators the decoder's registers spill (measured in the Swift kernel this replaces:
// 60 GFLOP/s with it, 72 without, m = 10, 1 thread).
//
// At the baseline level the 8 accumulators are 16 SSE registers, all x86-64 has, and spill; so it
// sums lanes 0-3 over the whole row, then lanes 4-7 (the same sums, in the same order): measured
// 19 → 22-23 GFLOP/s forward, engine-bench --kernels' step 213 → 183 ms (m = 10, 1 thread; the
// rest of the forward is decoding, which SSE2 does in more instructions). aarch64 (32 NEON
// registers) would not need it; it shares the one baseline.
FK_INLINE void pair_forward_halves(const float *xa, const float *xb, const float *w, int k, float *ya, float *yb,
                                   int accumulate) {
    const float *w0 = w, *w1 = w + k, *w2 = w + 2 * k, *w3 = w + 3 * k;
    v4f half[2][8];
    for (int hf = 0; hf < 2; hf++) {
        v4f a0 = {0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int c = 4 * hf; c < k; c += 8) {
            const v4f u = ld4(xa + c), v = ld4(xb + c);
            const v4f p0 = ld4(w0 + c);
            a0 = a0 + u * p0; b0 = b0 + v * p0;
            const v4f p1 = ld4(w1 + c);
            a1 = a1 + u * p1; b1 = b1 + v * p1;
            const v4f p2 = ld4(w2 + c);
            a2 = a2 + u * p2; b2 = b2 + v * p2;
            const v4f p3 = ld4(w3 + c);
            a3 = a3 + u * p3; b3 = b3 + v * p3;
        }
        half[hf][0] = a0; half[hf][1] = a1; half[hf][2] = a2; half[hf][3] = a3;
        half[hf][4] = b0; half[hf][5] = b1; half[hf][6] = b2; half[hf][7] = b3;
    }
    for (int j = 0; j < 4; j++) {
        const float sa = hsum_halves(half[0][j], half[1][j]), sb = hsum_halves(half[0][4 + j], half[1][4 + j]);
        ya[j] = accumulate ? ya[j] + sa : sa;
        yb[j] = accumulate ? yb[j] + sb : sb;
    }
}

FK_INLINE void pair_forward(const float *xa, const float *xb, const float *w, int k, float *ya, float *yb,
                            int accumulate, int fused) {
    if (!fused) { pair_forward_halves(xa, xb, w, k, ya, yb, accumulate); return; }
    const float *w0 = w, *w1 = w + k, *w2 = w + 2 * k, *w3 = w + 3 * k;
    v8f a0 = splat(0), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int c = 0; c < k; c += 8) {
        const v8f u = ld(xa + c), v = ld(xb + c);
        const v8f p0 = ld(w0 + c);
        a0 = madd(a0, u, p0, fused); b0 = madd(b0, v, p0, fused);
        const v8f p1 = ld(w1 + c);
        a1 = madd(a1, u, p1, fused); b1 = madd(b1, v, p1, fused);
        const v8f p2 = ld(w2 + c);
        a2 = madd(a2, u, p2, fused); b2 = madd(b2, v, p2, fused);
        const v8f p3 = ld(w3 + c);
        a3 = madd(a3, u, p3, fused); b3 = madd(b3, v, p3, fused);
    }
    const float s[8] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3), hsum(b0), hsum(b1), hsum(b2), hsum(b3)};
    for (int j = 0; j < 4; j++) {
        ya[j] = accumulate ? ya[j] + s[j] : s[j];
        yb[j] = accumulate ? yb[j] + s[4 + j] : s[4 + j];
    }
}

// out[j] = x · w_j for R (1 or 4, a constant after inlining) weight rows, in pair_forward's order
// (8 lanes, lane l summing c ≡ l mod 8), so that a row's products do not depend on whether it was
// paired: a sequence decodes to the same logits alone or in a batch. (Only R chains in flight;
// 16 lanes would keep 8, but a token sampled alone then differed from the same one sampled in a
// batch, SteeringTests.testSamplingIsSeededAndTopPTinyIsGreedy.)
FK_INLINE void row_dots(const float *x, const float *w, int k, int R, float *out, int fused) {
    v8f acc[4];
    for (int j = 0; j < R; j++) acc[j] = splat(0);
    for (int c = 0; c < k; c += 8) {
        const v8f u = ld(x + c);
        for (int j = 0; j < R; j++) acc[j] = madd(acc[j], u, ld(w + (size_t)j * k + c), fused);
    }
    for (int j = 0; j < R; j++) out[j] = hsum(acc[j]);
}

// y[r + j] (+)= x · w_j for the strip's nr rows.
FK_INLINE void one_forward(const float *x, const float *w, int k, int nr, float *y, int accumulate, int fused) {
    float s[4];
    if (nr == 4) row_dots(x, w, k, 4, s, fused);
    else for (int j = 0; j < nr; j++) row_dots(x, w + (size_t)j * k, k, 1, s + j, fused);
    for (int j = 0; j < nr; j++) y[j] = accumulate ? y[j] + s[j] : s[j];
}

// oa += g[0…3] · W, ob += h[0…3] · W (4 rows), and, with `sink`, the next strip's row `src`
// decoded into `dst` one block per 32 columns: the integer and add ports work while the FMA ports
// are busy (measured in the Swift kernel this replaces: 72 GFLOP/s against 69 without, m = 10).
FK_INLINE void pair_backward(const float *g, const float *h, const float *w, int k, float *oa, float *ob,
                             int sink, int kind, const uint8_t *src, float *dst, int fused) {
    const float *w0 = w, *w1 = w + k, *w2 = w + 2 * k, *w3 = w + 3 * k;
    const v8f g0 = splat(g[0]), g1 = splat(g[1]), g2 = splat(g[2]), g3 = splat(g[3]);
    const v8f h0 = splat(h[0]), h1 = splat(h[1]), h2 = splat(h[2]), h3 = splat(h[3]);
    for (int c0 = 0; c0 < k; c0 += 32) {
        for (int c = c0; c < c0 + 32; c += 8) {
            v8f a = ld(oa + c), b = ld(ob + c);
            const v8f p0 = ld(w0 + c);
            a = madd(a, g0, p0, fused); b = madd(b, h0, p0, fused);
            const v8f p1 = ld(w1 + c);
            a = madd(a, g1, p1, fused); b = madd(b, h1, p1, fused);
            const v8f p2 = ld(w2 + c);
            a = madd(a, g2, p2, fused); b = madd(b, h2, p2, fused);
            const v8f p3 = ld(w3 + c);
            a = madd(a, g3, p3, fused); b = madd(b, h3, p3, fused);
            st(oa + c, a);
            st(ob + c, b);
        }
        if (sink) decode32(kind, src, c0, dst + c0);
    }
}

// o += Σ_j g[j] w_j over the strip's nr rows, row by row (the order pair_backward adds them in).
FK_INLINE void one_backward(const float *g, const float *w, int k, int nr, float *o, int fused) {
    if (nr == 4) {
        const v8f g0 = splat(g[0]), g1 = splat(g[1]), g2 = splat(g[2]), g3 = splat(g[3]);
        for (int c = 0; c < k; c += 8) {
            v8f a = ld(o + c);
            a = madd(a, g0, ld(w + c), fused);
            a = madd(a, g1, ld(w + k + c), fused);
            a = madd(a, g2, ld(w + 2 * k + c), fused);
            a = madd(a, g3, ld(w + 3 * k + c), fused);
            st(o + c, a);
        }
        return;
    }
    for (int j = 0; j < nr; j++) {
        const v8f gj = splat(g[j]);
        for (int c = 0; c < k; c += 8) st(o + c, madd(ld(o + c), gj, ld(w + (size_t)j * k + c), fused));
    }
}

// ---- strips ----

#define ROW(r) ((const uint8_t *)packed + (size_t)(r) * row_bytes)

// Walks weight rows [r0, r1) four at a time through a double-buffered strip: while the backward
// products multiply strip s they decode up to one row of strip s + 1 per activation-row pair
// (`pair_backward`'s sink); the rows they did not reach are decoded afterwards.
typedef struct {
    float *buf, *cur, *nxt;
    int r, nr, rn, nrn, used;
} strips;

FK_INLINE int strips_begin(strips *s, int kind, const void *packed, size_t row_bytes, int k, int r0, int r1) {
    s->buf = (float *)aligned_alloc(64, (size_t)8 * k * sizeof(float));
    if (!s->buf) abort();
    s->cur = s->buf; s->nxt = s->buf + (size_t)4 * k;
    s->r = r0; s->nr = r1 - r0 < 4 ? r1 - r0 : 4;
    for (int j = 0; j < s->nr; j++) decode_row(kind, ROW(r0 + j), k, s->cur + (size_t)j * k);
    return s->r < r1;
}

// Before the products on strip `cur`: the next strip's rows, none decoded yet.
FK_INLINE void strips_plan(strips *s, int r1) {
    s->rn = s->r + s->nr;
    s->nrn = r1 - s->rn < 4 ? (r1 - s->rn > 0 ? r1 - s->rn : 0) : 4;
    s->used = 0;
}

// The sink for the next strip's next undecoded row, if any (0: none).
FK_INLINE int strips_sink(strips *s, const void *packed, size_t row_bytes, int k, const uint8_t **src, float **dst) {
    if (s->used >= s->nrn) return 0;
    *src = ROW(s->rn + s->used);
    *dst = s->nxt + (size_t)s->used * k;
    s->used++;
    return 1;
}

FK_INLINE int strips_next(strips *s, int kind, const void *packed, size_t row_bytes, int k, int r1) {
    for (int j = s->used; j < s->nrn; j++) decode_row(kind, ROW(s->rn + j), k, s->nxt + (size_t)j * k);
    float *t = s->cur; s->cur = s->nxt; s->nxt = t;
    s->r = s->rn; s->nr = s->nrn;
    return s->r < r1;
}

FK_INLINE void strips_end(strips *s) { free(s->buf); }

// ---- the row-range kernels, generic in the format and the level ----

FK_INLINE void linear_rows(int kind, const void *packed, size_t row_bytes, int n, int k, const float *x, int m,
                           float *y, int accumulate, int r0, int r1, int fused) {
    float *strip = (float *)aligned_alloc(64, (size_t)4 * k * sizeof(float));
    if (!strip) abort();
    for (int r = r0; r < r1; r += 4) {
        const int nr = r1 - r < 4 ? r1 - r : 4;
        for (int j = 0; j < nr; j++) decode_row(kind, ROW(r + j), k, strip + (size_t)j * k);
        int i = 0;
        if (nr == 4)
            for (; i + 2 <= m; i += 2)
                pair_forward(x + (size_t)i * k, x + (size_t)(i + 1) * k, strip, k, y + (size_t)i * n + r,
                             y + (size_t)(i + 1) * n + r, accumulate, fused);
        for (; i < m; i++) one_forward(x + (size_t)i * k, strip, k, nr, y + (size_t)i * n + r, accumulate, fused);
    }
    free(strip);
}

FK_INLINE void backward_rows(int kind, const void *packed, size_t row_bytes, int n, int k, const float *dy, int m,
                             float *out, int r0, int r1, int fused) {
    strips s;
    if (strips_begin(&s, kind, packed, row_bytes, k, r0, r1)) {
        do {
            strips_plan(&s, r1);
            int i = 0;
            if (s.nr == 4)
                for (; i + 2 <= m; i += 2) {
                    const float *g = dy + (size_t)i * n + s.r, *h = dy + (size_t)(i + 1) * n + s.r;
                    float *oa = out + (size_t)i * k, *ob = out + (size_t)(i + 1) * k;
                    const uint8_t *src;
                    float *dst;
                    if (strips_sink(&s, packed, row_bytes, k, &src, &dst)) pair_backward(g, h, s.cur, k, oa, ob, 1, kind, src, dst, fused);
                    else pair_backward(g, h, s.cur, k, oa, ob, 0, kind, 0, 0, fused);
                }
            for (; i < m; i++) one_backward(dy + (size_t)i * n + s.r, s.cur, k, s.nr, out + (size_t)i * k, fused);
        } while (strips_next(&s, kind, packed, row_bytes, k, r1));
    }
    strips_end(&s);
}

// e^x for 8 lanes, never fused (the same at both levels): x = k·ln2 + r with |r| ≤ ln2/2, e^r by
// its degree-6 Taylor polynomial (relative error < 2e-7), 2^k put straight into the exponent bits;
// k rounded with the 1.5·2²³ trick. Swift's Ops.exp16 is the same function, operation for operation.
FK_INLINE v8f exp8(v8f x) {
    const v8f lo = splat(-87.3f), hi = splat(88.3f);
    v8f v = pick(x < lo, lo, x);
    v = pick(v > hi, hi, v);
    const v8f magic = splat(12582912.0f);                              // 1.5·2²³
    const v8f t = v * splat(1.44269504f) + magic;                      // round(x·log2 e) in the low bits
    const v8f kf = t - magic;
    const v8f r = (v - kf * splat(0.69314575f)) - kf * splat(1.4286068e-6f);   // ln2 = hi + lo
    v8f p = r * splat(1.0f / 720) + splat(1.0f / 120);
    p = p * r + splat(1.0f / 24); p = p * r + splat(1.0f / 6); p = p * r + splat(0.5f); p = p * r + splat(1); p = p * r + splat(1);
    const v8i ki = (v8i)t - (v8i)magic;
    return p * (v8f)((ki + 127) << 23);
}

// Vocabulary rows [r0, r1) of the one-pass cross-entropy head into one thread's (M, S, G).
FK_INLINE void head_rows(int kind, const void *packed, size_t row_bytes, int k, const float *h, int m, int r0, int r1,
                         float *M, float *S, float *G, int fused) {
    // z (then e = exp(z − M)) for the strip's ≤ 4 rows, 4 per activation row, padded to 8
    const int zn = (4 * m + 7) / 8 * 8;
    float *z = (float *)calloc((size_t)zn, sizeof(float));
    if (!z) abort();
    strips s;
    if (strips_begin(&s, kind, packed, row_bytes, k, r0, r1)) {
        do {
            strips_plan(&s, r1);
            // ---- forward: z[i, j] = h_i · W_{r+j} (−∞ past the strip's rows)
            int i = 0;
            if (s.nr == 4)
                for (; i + 2 <= m; i += 2)
                    pair_forward(h + (size_t)i * k, h + (size_t)(i + 1) * k, s.cur, k, z + 4 * i, z + 4 * (i + 1), 0, fused);
            for (; i < m; i++) {
                one_forward(h + (size_t)i * k, s.cur, k, s.nr, z + 4 * i, 0, fused);
                for (int j = s.nr; j < 4; j++) z[4 * i + j] = -INFINITY;
            }
            // ---- running max, rescaling S and G when it grows; then z − M
            for (i = 0; i < m; i++) {
                float *zi = z + 4 * i;
                const float mx = fmaxf(fmaxf(zi[0], zi[1]), fmaxf(zi[2], zi[3]));
                if (mx > M[i]) {
                    const float c = expf(M[i] - mx);      // 0 on the first strip (M = −∞)
                    S[i] *= c;
                    float *g = G + (size_t)i * k;
                    for (int col = 0; col < k; col += 8) st(g + col, ld(g + col) * splat(c));
                    M[i] = mx;
                }
                for (int j = 0; j < 4; j++) zi[j] -= M[i];
            }
            // ---- e = exp(z − M) (0 past the strip's rows), S_i += ((e0 + e1) + e2) + e3
            for (int o = 0; o < zn; o += 8) st(z + o, exp8(ld(z + o)));
            for (i = 0; i < m; i++) {
                for (int j = s.nr; j < 4; j++) z[4 * i + j] = 0;
                S[i] += z[4 * i] + z[4 * i + 1] + z[4 * i + 2] + z[4 * i + 3];
            }
            // ---- backward: G_i += Σ_j e[i, j] W_{r+j}, decoding the next strip as it goes
            i = 0;
            if (s.nr == 4)
                for (; i + 2 <= m; i += 2) {
                    float *oa = G + (size_t)i * k, *ob = G + (size_t)(i + 1) * k;
                    const uint8_t *src;
                    float *dst;
                    if (strips_sink(&s, packed, row_bytes, k, &src, &dst))
                        pair_backward(z + 4 * i, z + 4 * (i + 1), s.cur, k, oa, ob, 1, kind, src, dst, fused);
                    else pair_backward(z + 4 * i, z + 4 * (i + 1), s.cur, k, oa, ob, 0, kind, 0, 0, fused);
                }
            for (; i < m; i++) one_backward(z + 4 * i, s.cur, k, s.nr, G + (size_t)i * k, fused);
        } while (strips_next(&s, kind, packed, row_bytes, k, r1));
    }
    strips_end(&s);
    free(z);
}

// ---- the two levels: each format's kernel compiled with the level's vectors and multiply-add ----

// f(kind, ...) with `kind` a constant, so that each format gets its own specialised loop.
#define FK_BY_KIND(f, ...) \
    switch (kind) { \
    case FK_Q4_1: f(FK_Q4_1, __VA_ARGS__); break; \
    case FK_Q4_0: f(FK_Q4_0, __VA_ARGS__); break; \
    default: f(FK_Q8_0, __VA_ARGS__); break; \
    }

#define FK_LINEAR_ARGS int kind, const void *packed, size_t row_bytes, int n, int k, const float *x, int m, float *y, \
    int accumulate, int r0, int r1
#define FK_BACKWARD_ARGS int kind, const void *packed, size_t row_bytes, int n, int k, const float *dy, int m, float *out, \
    int r0, int r1
#define FK_HEAD_ARGS int kind, const void *packed, size_t row_bytes, int k, const float *h, int m, int r0, int r1, \
    float *M, float *S, float *G

static void linear_rows_baseline(FK_LINEAR_ARGS) {
    FK_BY_KIND(linear_rows, packed, row_bytes, n, k, x, m, y, accumulate, r0, r1, 0)
}
static void backward_rows_baseline(FK_BACKWARD_ARGS) {
    FK_BY_KIND(backward_rows, packed, row_bytes, n, k, dy, m, out, r0, r1, 0)
}
static void head_rows_baseline(FK_HEAD_ARGS) {
    FK_BY_KIND(head_rows, packed, row_bytes, k, h, m, r0, r1, M, S, G, 0)
}

#if defined(__x86_64__)
#define FK_AVX2_TARGET __attribute__((target("avx2,fma")))
FK_AVX2_TARGET static void linear_rows_avx2(FK_LINEAR_ARGS) {
    FK_BY_KIND(linear_rows, packed, row_bytes, n, k, x, m, y, accumulate, r0, r1, 1)
}
FK_AVX2_TARGET static void backward_rows_avx2(FK_BACKWARD_ARGS) {
    FK_BY_KIND(backward_rows, packed, row_bytes, n, k, dy, m, out, r0, r1, 1)
}
FK_AVX2_TARGET static void head_rows_avx2(FK_HEAD_ARGS) {
    FK_BY_KIND(head_rows, packed, row_bytes, k, h, m, r0, r1, M, S, G, 1)
}
#endif

// ---- dispatch: the level fk_level() names ----

void fk_decode_row(int kind, const void *row, int k, float *dst) {
    FK_BY_KIND(decode_row, (const uint8_t *)row, k, dst)
}

void fk_linear_rows(FK_LINEAR_ARGS) {
#if defined(__x86_64__)
    if (fk_level() == FK_AVX2) { linear_rows_avx2(kind, packed, row_bytes, n, k, x, m, y, accumulate, r0, r1); return; }
#endif
    linear_rows_baseline(kind, packed, row_bytes, n, k, x, m, y, accumulate, r0, r1);
}

void fk_backward_rows(FK_BACKWARD_ARGS) {
#if defined(__x86_64__)
    if (fk_level() == FK_AVX2) { backward_rows_avx2(kind, packed, row_bytes, n, k, dy, m, out, r0, r1); return; }
#endif
    backward_rows_baseline(kind, packed, row_bytes, n, k, dy, m, out, r0, r1);
}

void fk_head_rows(FK_HEAD_ARGS) {
#if defined(__x86_64__)
    if (fk_level() == FK_AVX2) { head_rows_avx2(kind, packed, row_bytes, k, h, m, r0, r1, M, S, G); return; }
#endif
    head_rows_baseline(kind, packed, row_bytes, k, h, m, r0, r1, M, S, G);
}
