// Holds every int8 kernel level this CPU runs (Sources/CKernels/kernels.c) BIT FOR BIT to one plain
// scalar reference written here from the layouts and operation order that include/ckernels.h and
// kernels.c document: ik_quantize_rows, ik_pack_transposed_q8 and ik_linear (4-bit weights with
// and without offsets, 8-bit weights and their transposed copies, fresh and accumulated outputs,
// whole and partial group ranges, 1…13 rows). Since each level matches the reference exactly, the
// levels match each other: this ties the aarch64 level (run under qemu by cluster/check-aarch64.sh)
// to the x86 ones. Built with -DIK_CHECK_FP32 (and fp32kernels.c, which only clang compiles) it
// also holds the fp32 products' levels (fk_*) to double-precision sums within their rounding bound.
//
// Not a SwiftPM target (Tests/ folders that no target names are ignored). Build and run (from
// the package root; cluster/check-aarch64.sh does this for x86-64 and, under qemu, aarch64):
//   cc -O2 -ffp-contract=off -ISources/CKernels/include Tests/CKernelsCheck/int8_check.c
//      Sources/CKernels/kernels.c -lm && ./a.out
// Prints a line per level, `level NAME: N products, Q quantisations, P packings, M mismatches` or
// `level NAME: does not run on this CPU`, and exits 1 on any mismatch. `--levels` prints only
// the CPU's level, the default one ($INTERVENE_INT8_KERNELS applied) and which levels run.
//
// The reference must not be contracted (a·b + c fused where the kernels round twice): compile this
// file with -ffp-contract=off; the fused operations it means are written as fmaf.
#include "ckernels.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- levels ----

static const struct { int level; const char *name; } LEVELS[] = {
    {IK_AVX2_LEVEL, "avx2"}, {IK_AVX_VNNI, "avx-vnni"}, {IK_AVX512_VNNI, "avx512-vnni"},
    {IK_AVX_VNNI_TWIN, "avx-vnni-twin"}, {IK_NEON_DOTPROD, "neon-dotprod"},
};
enum { NLEVELS = sizeof LEVELS / sizeof LEVELS[0] };

static const char *level_name(int level) {
    for (int i = 0; i < NLEVELS; i++)
        if (LEVELS[i].level == level) return LEVELS[i].name;
    return level == IK_NONE ? "none" : "?";
}

// ---- random numbers (SplitMix64, fixed seeds) ----

static uint64_t rng = 1;
static uint64_t next64(void) {
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static int irand(int n) { return (int)(next64() % (uint64_t)n); }
static float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(next64() >> 40) * 0x1p-24f; }

// A GGUF f16 scale: mostly normal (2^-12 … 2^3, either sign), sometimes subnormal or zero.
static uint16_t random_half(void) {
    const int kind = irand(16);
    const uint16_t sign = (uint16_t)(irand(2) << 15);
    if (kind == 0) return sign;
    if (kind == 1) return (uint16_t)(sign | (1 + irand(1023)));
    return (uint16_t)(sign | (3 + irand(16)) << 10 | irand(1024));
}

static void *alloc64(size_t bytes) {
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) abort();
    return p;
}

// ---- the scalar reference ----

// f16 → f32, exactly (every f16 is an f32): ±man · 2^-24 (subnormal) or ±(1024 + man) · 2^(e − 25).
static float ref_half(uint16_t h) {
    const int e = (h >> 10) & 0x1F, man = h & 0x3FF;
    const float v = e == 0 ? ldexpf((float)man, -24) : ldexpf((float)(1024 + man), e - 25);
    return h >> 15 ? -v : v;
}

// vcvtps2dq: nearest even (lrintf in the default rounding mode), 0x80000000 for NaN and anything
// outside int32.
static int32_t ref_cvt(float v) {
    if (!(fabsf(v) < 2147483648.0f)) return INT32_MIN;
    return (int32_t)lrintf(v);
}

// Per block of 32: d = max|x| / 127, inv = 1/d (0 when d is 0 or 1/d overflows), q = round(x · inv),
// xs = d · Σq.
static void ref_quantize(const float *x, int m, int k, int8_t *xq, float *xd, float *xs) {
    const int nb = k / 32;
    for (int i = 0; i < m; i++)
        for (int b = 0; b < nb; b++) {
            const float *v = x + (size_t)i * k + 32 * b;
            float amax = 0;
            for (int j = 0; j < 32; j++)
                if (fabsf(v[j]) > amax) amax = fabsf(v[j]);
            const float d = amax / 127.0f;
            float inv = d > 0 ? 1.0f / d : 0.0f;
            if (!isfinite(inv)) inv = 0;
            int32_t sum = 0;
            for (int j = 0; j < 32; j++) {
                const int32_t q = ref_cvt(v[j] * inv);
                xq[(size_t)i * k + 32 * b + j] = (int8_t)q;
                sum += q;
            }
            xd[(size_t)i * nb + b] = d;
            xs[(size_t)i * nb + b] = d * (float)sum;
        }
}

// GGUF weight j (0…31) of a 4-bit block: byte j's low nibble (j < 16) or byte j − 16's high one.
static int gguf_nibble(const uint8_t *values, int j) { return j < 16 ? values[j] & 0xF : values[j - 16] >> 4; }

// ik_pack_q4's layout (ckernels.h): per group of 16 rows and block of 32 columns, 384 bytes: four
// 64-byte vectors, byte 4·o + c of vector s = q(o, 8s + c) | q(o, 8s + 4 + c) << 4, then d, then m.
static void ref_pack_q4(const uint8_t *blocks, size_t row_bytes, int block_bytes, int values_offset, int has_min,
                        int rows, int cols, uint8_t *dst) {
    const int nb = cols / 32;
    for (int g = 0; g < rows / 16; g++)
        for (int b = 0; b < nb; b++) {
            uint8_t *chunk = dst + ((size_t)g * nb + b) * 384;
            for (int o = 0; o < 16; o++) {
                const uint8_t *blk = blocks + (size_t)(16 * g + o) * row_bytes + (size_t)b * block_bytes;
                const float d = ref_half((uint16_t)(blk[0] | blk[1] << 8));
                const float mo = has_min ? ref_half((uint16_t)(blk[2] | blk[3] << 8)) : -8.0f * d;
                memcpy(chunk + 256 + 4 * o, &d, 4);
                memcpy(chunk + 320 + 4 * o, &mo, 4);
                for (int s = 0; s < 4; s++)
                    for (int c = 0; c < 4; c++)
                        chunk[64 * s + 4 * o + c] = (uint8_t)(gguf_nibble(blk + values_offset, 8 * s + c)
                                                              | gguf_nibble(blk + values_offset, 8 * s + 4 + c) << 4);
            }
        }
}

// ik_pack_q8's layout: 640 bytes, byte 4·o + c of vector t = q(o, 4t + c), then d, then
// c = −128 · d · Σq.
static void ref_pack_q8(const uint8_t *blocks, size_t row_bytes, int rows, int cols, uint8_t *dst) {
    const int nb = cols / 32;
    for (int g = 0; g < rows / 16; g++)
        for (int b = 0; b < nb; b++) {
            uint8_t *chunk = dst + ((size_t)g * nb + b) * 640;
            for (int o = 0; o < 16; o++) {
                const uint8_t *blk = blocks + (size_t)(16 * g + o) * row_bytes + (size_t)b * 34;
                const float d = ref_half((uint16_t)(blk[0] | blk[1] << 8));
                int32_t sum = 0;
                for (int j = 0; j < 32; j++) {
                    chunk[64 * (j / 4) + 4 * o + j % 4] = blk[2 + j];
                    sum += (int8_t)blk[2 + j];
                }
                const float c = -128.0f * d * (float)sum;
                memcpy(chunk + 512 + 4 * o, &d, 4);
                memcpy(chunk + 576 + 4 * o, &c, 4);
            }
        }
}

// Wᵀ as an IK_Q8 matrix [cols × rows]: column 16g + o of W, rows 32b…32b+31, is row o of chunk
// (g, b); d = max|w| / 127, inv = 1/d (0 when d is 0: no overflow guard, as the kernels), the
// conversion as ref_cvt and the sum wrapping in int32 as vpaddd.
static void ref_pack_transposed(const float *w, int rows, int cols, uint8_t *dst) {
    const int nb = rows / 32;
    for (int g = 0; g < cols / 16; g++)
        for (int b = 0; b < nb; b++) {
            uint8_t *chunk = dst + ((size_t)g * nb + b) * 640;
            for (int o = 0; o < 16; o++) {
                const float *col = w + (size_t)(32 * b) * cols + 16 * g + o;
                float amax = 0;
                for (int j = 0; j < 32; j++)
                    if (fabsf(col[(size_t)j * cols]) > amax) amax = fabsf(col[(size_t)j * cols]);
                const float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
                uint32_t sum = 0;
                for (int j = 0; j < 32; j++) {
                    const int32_t q = ref_cvt(col[(size_t)j * cols] * inv);
                    chunk[64 * (j / 4) + 4 * o + j % 4] = (uint8_t)(q & 0xFF);
                    sum += (uint32_t)q;
                }
                const float c = -128.0f * d * (float)(int32_t)sum;
                memcpy(chunk + 512 + 4 * o, &d, 4);
                memcpy(chunk + 576 + 4 * o, &c, 4);
            }
        }
}

static float chunk_float(const uint8_t *chunk, int offset) {
    float f;
    memcpy(&f, chunk + offset, 4);
    return f;
}

// y[i, 16g + o] for g in [g0, g1): per block S = Σ_j q(o, j) · x_ij (4-bit) or Σ_j q(o, j) · (x_ij + 128)
// (8-bit), in int32; acc = fma(float(S), d · xd, acc), then fma(m, xs, acc) or fma(c, xd, acc);
// y = acc, or acc + y when accumulating.
static void ref_linear(const uint8_t *packed, int kind, int k, const int8_t *xq, const float *xd, const float *xs,
                       int m, float *y, int ldy, int g0, int g1, int accumulate) {
    const int nb = k / 32;
    for (int g = g0; g < g1; g++)
        for (int i = 0; i < m; i++)
            for (int o = 0; o < 16; o++) {
                float acc = 0;
                for (int b = 0; b < nb; b++) {
                    const int8_t *x = xq + (size_t)i * k + 32 * b;
                    const float dx = xd[(size_t)i * nb + b];
                    int32_t s = 0;
                    if (kind == IK_Q8) {
                        const uint8_t *chunk = packed + ((size_t)g * nb + b) * 640;
                        for (int j = 0; j < 32; j++) s += (int8_t)chunk[64 * (j / 4) + 4 * o + j % 4] * (x[j] + 128);
                        acc = fmaf((float)s, chunk_float(chunk, 512 + 4 * o) * dx, acc);
                        acc = fmaf(chunk_float(chunk, 576 + 4 * o), dx, acc);
                    } else {
                        const uint8_t *chunk = packed + ((size_t)g * nb + b) * 384;
                        for (int j = 0; j < 32; j++) {
                            const uint8_t byte = chunk[64 * (j / 8) + 4 * o + j % 4];
                            s += (j % 8 < 4 ? byte & 0xF : byte >> 4) * x[j];
                        }
                        acc = fmaf((float)s, chunk_float(chunk, 256 + 4 * o) * dx, acc);
                        acc = fmaf(chunk_float(chunk, 320 + 4 * o), xs[(size_t)i * nb + b], acc);
                    }
                }
                float *yo = y + (size_t)i * ldy + 16 * g + o;
                *yo = accumulate ? acc + *yo : acc;
            }
}

// ---- bookkeeping ----

typedef struct { long products, quantisations, packings, mismatches; int ran; } tally;
static tally tallies[NLEVELS];
static long shown = 0;

static int same_bits(const void *a, const void *b, size_t bytes, size_t *first) {
    const uint8_t *p = a, *q = b;
    for (size_t i = 0; i < bytes; i++)
        if (p[i] != q[i]) { *first = i; return 0; }
    return 1;
}

static void mismatch(int li, const char *what, size_t at) {
    tallies[li].mismatches++;
    if (shown++ < 20) printf("MISMATCH level %s: %s (first differing byte %zu)\n", LEVELS[li].name, what, at);
}

// ---- the test data ----

// m rows of k activations: blocks of random scale (1e-3 … 1e2), and fixed blocks: zeros,
// subnormals (1/d overflows: they round to 0), ties (d = 1: halves round to even) and one exact max.
static float *random_rows(int m, int k) {
    float *x = malloc(sizeof(float) * (size_t)m * k);
    for (int i = 0; i < m; i++)
        for (int b = 0; b < k / 32; b++) {
            float *v = x + (size_t)i * k + 32 * b;
            const int kind = irand(10);
            const float scale = powf(10.0f, uniform(-3, 2));
            for (int j = 0; j < 32; j++) {
                if (kind == 0) v[j] = 0;
                else if (kind == 1) v[j] = (float)(j % 3) * 1e-40f;
                else if (kind == 2) v[j] = j == 0 ? 127.0f : (float)(irand(254) - 127) + 0.5f;
                else v[j] = uniform(-1, 1) * scale;
            }
        }
    return x;
}

typedef struct {
    const char *name;
    int kind, k, n;          // the packed matrix is [n × k]
    uint8_t *ref;            // the reference's packing
    uint8_t *packed;         // the kernels' packing (ik_pack_q4 / ik_pack_q8), or NULL: the level's
                             // own ik_pack_transposed_q8 of `w` (rows k, cols n... of Wᵀ, see below)
    float *w;                // transposed: W [k × n] (ik_pack_transposed_q8 packs Wᵀ, [n × k])
} matrix;

static matrix gguf_q4(int k, int n, int has_min) {
    const int bb = has_min ? 20 : 18, off = has_min ? 4 : 2;
    const size_t row_bytes = (size_t)(k / 32) * bb;
    uint8_t *blocks = malloc(row_bytes * n);
    for (int r = 0; r < n; r++)
        for (int b = 0; b < k / 32; b++) {
            uint8_t *blk = blocks + (size_t)r * row_bytes + (size_t)b * bb;
            const uint16_t d = random_half(), mm = random_half();
            blk[0] = (uint8_t)d; blk[1] = (uint8_t)(d >> 8);
            if (has_min) { blk[2] = (uint8_t)mm; blk[3] = (uint8_t)(mm >> 8); }
            for (int j = 0; j < 16; j++) blk[off + j] = (uint8_t)irand(256);
        }
    matrix mx = { has_min ? "q4_1" : "q4_0", IK_Q4, k, n, alloc64(ik_packed_bytes(IK_Q4, n, k)),
                  alloc64(ik_packed_bytes(IK_Q4, n, k)), NULL };
    ref_pack_q4(blocks, row_bytes, bb, off, has_min, n, k, mx.ref);
    ik_pack_q4(blocks, row_bytes, bb, off, has_min, n, k, mx.packed);
    free(blocks);
    return mx;
}

static matrix gguf_q8(int k, int n) {
    const size_t row_bytes = (size_t)(k / 32) * 34;
    uint8_t *blocks = malloc(row_bytes * n);
    for (int r = 0; r < n; r++)
        for (int b = 0; b < k / 32; b++) {
            uint8_t *blk = blocks + (size_t)r * row_bytes + (size_t)b * 34;
            const uint16_t d = random_half();
            blk[0] = (uint8_t)d; blk[1] = (uint8_t)(d >> 8);
            for (int j = 0; j < 32; j++) blk[2 + j] = (uint8_t)irand(256);   // −128…127
        }
    matrix mx = { "q8_0", IK_Q8, k, n, alloc64(ik_packed_bytes(IK_Q8, n, k)), alloc64(ik_packed_bytes(IK_Q8, n, k)),
                  NULL };
    ref_pack_q8(blocks, row_bytes, n, k, mx.ref);
    ik_pack_q8(blocks, row_bytes, n, k, mx.packed);
    free(blocks);
    return mx;
}

// W [k × n] in fp32, its transposed 8-bit copy [n × k] to be packed at each level. Runs of 32 rows
// in one column: random scales, some all zero (d = 0) and some below ~3.7e-37 (d subnormal,
// 1/d = ∞: what the kernels store there is checked too), one exact zero row.
static matrix transposed_q8(int k, int n) {
    float *w = malloc(sizeof(float) * (size_t)k * n);
    for (int b = 0; b < k / 32; b++)
        for (int c = 0; c < n; c++) {
            const int kind = irand(12);
            const float scale = powf(10.0f, uniform(-4, 1));
            for (int j = 0; j < 32; j++) {
                float *v = w + (size_t)(32 * b + j) * n + c;
                *v = kind == 0 ? 0 : kind == 1 ? uniform(-1, 1) * 1e-38f : uniform(-1, 1) * scale;
            }
        }
    for (int c = 0; c < n; c++) w[(size_t)(k > 5 ? 5 : 0) * n + c] = 0;
    matrix mx = { "transposed q8", IK_Q8, k, n, alloc64(ik_packed_bytes(IK_Q8, n, k)), NULL, w };
    ref_pack_transposed(w, k, n, mx.ref);
    return mx;
}

// ---- fp32 products (fk_*), within their rounding bound ----
#ifdef IK_CHECK_FP32
static long fp32_checks[2], fp32_failures[2];

// Swift's PackedWeight row: 4-bit, per 64 weights 48 bytes (d₀, m₀, d₁, m₁ as fp32, then eight
// 32-bit lanes whose nibble g holds weight 8g + lane); Q8_0, per 32 weights fp32 d + 32 int8.
static size_t fk_row_bytes(int kind, int k) { return kind == FK_Q8_0 ? (size_t)(k / 32) * 36 : (size_t)(k / 64) * 48; }

static float fk_ref_weight(int kind, const uint8_t *row, int c) {
    if (kind == FK_Q8_0) {
        const uint8_t *blk = row + (size_t)(c / 32) * 36;
        return chunk_float(blk, 0) * (float)(int8_t)blk[4 + c % 32];
    }
    const uint8_t *chunk = row + (size_t)(c / 64) * 48;
    const int h = (c % 64) / 32, g = (c % 64) / 8, lane = c % 8;
    uint32_t word;
    memcpy(&word, chunk + 16 + 4 * lane, 4);
    const float q = (float)((word >> (4 * g)) & 0xF), d = chunk_float(chunk, 8 * h);
    return kind == FK_Q4_1 ? d * q + chunk_float(chunk, 8 * h + 4) : d * (q - 8.0f);
}

static void fp32_fail(int level, const char *what, double got, double want, double tol) {
    fp32_failures[level]++;
    if (shown++ < 20) printf("FP32 MISMATCH level %d: %s: %.9g, reference %.9g (tolerance %.3g)\n", level, what, got,
                             want, tol);
}

static void check_fp32(int level) {
    static const int kinds[] = {FK_Q4_1, FK_Q4_0, FK_Q8_0};
    static const int shapes[][2] = {{64, 12}, {576, 37}, {1536, 9}};   // k, n
    for (int ki = 0; ki < 3; ki++)
        for (int si = 0; si < 3; si++) {
            const int kind = kinds[ki], k = shapes[si][0], n = shapes[si][1];
            const size_t rb = fk_row_bytes(kind, k);
            uint8_t *packed = malloc(rb * n);
            for (size_t i = 0; i < rb * n; i++) packed[i] = (uint8_t)irand(256);
            for (int r = 0; r < n; r++)   // sane scales and offsets
                for (int c = 0; c < k; c += kind == FK_Q8_0 ? 32 : 64)
                    for (int f = 0; f < (kind == FK_Q8_0 ? 1 : 4); f++) {
                        const float v = uniform(-1, 1) * 0.05f;
                        memcpy(packed + (size_t)r * rb + (kind == FK_Q8_0 ? (size_t)(c / 32) * 36 : (size_t)(c / 64) * 48)
                                   + 4 * f, &v, 4);
                    }
            // decoding is exact (a multiply, an add, never fused)
            float *wd = malloc(sizeof(float) * (size_t)n * k);
            for (int r = 0; r < n; r++) {
                fk_decode_row(kind, packed + (size_t)r * rb, k, wd + (size_t)r * k);
                for (int c = 0; c < k; c++) {
                    const float want = fk_ref_weight(kind, packed + (size_t)r * rb, c);
                    fp32_checks[level]++;
                    if (memcmp(&want, wd + (size_t)r * k + c, 4) != 0) fp32_fail(level, "decode", wd[(size_t)r * k + c], want, 0);
                }
            }
            for (int m = 1; m <= 13; m += 3) {
                float *x = malloc(sizeof(float) * (size_t)m * k), *y = malloc(sizeof(float) * (size_t)m * n);
                float *dy = malloc(sizeof(float) * (size_t)m * n), *out = malloc(sizeof(float) * (size_t)m * k);
                for (int i = 0; i < m * k; i++) { x[i] = uniform(-2, 2); out[i] = uniform(-1, 1); }
                for (int i = 0; i < m * n; i++) { y[i] = uniform(-1, 1); dy[i] = uniform(-1, 1); }
                float *y0 = malloc(sizeof(float) * (size_t)m * n), *out0 = malloc(sizeof(float) * (size_t)m * k);
                memcpy(y0, y, sizeof(float) * (size_t)m * n);
                memcpy(out0, out, sizeof(float) * (size_t)m * k);
                const int r0 = n > 4 ? 1 : 0, r1 = n > 6 ? n - 2 : n, accumulate = m % 2;
                fk_linear_rows(kind, packed, rb, n, k, x, m, y, accumulate, r0, r1);
                fk_backward_rows(kind, packed, rb, n, k, dy, m, out, r0, r1);
                // lanes of k/8 terms, a tree of 8, the add of y: (k/8 + 8) roundings of at most 2^-24
                // each, relative to Σ|terms| (twice that here)
                for (int i = 0; i < m; i++)
                    for (int r = 0; r < n; r++) {
                        const double prior = accumulate ? y0[(size_t)i * n + r] : 0;
                        double s = 0, mag = fabs(prior);
                        for (int c = 0; c < k; c++) {
                            const double t = (double)x[(size_t)i * k + c] * wd[(size_t)r * k + c];
                            s += t; mag += fabs(t);
                        }
                        const int inside = r >= r0 && r < r1;
                        const double want = inside ? s + prior : y0[(size_t)i * n + r], got = y[(size_t)i * n + r];
                        const double tol = inside ? (k / 8 + 8) * 0x1p-23 * mag : 0;
                        fp32_checks[level]++;
                        if (!(fabs(got - want) <= tol)) fp32_fail(level, "linear_rows", got, want, tol);
                    }
                // one multiply-add per weight row, rows in order: (n + 2) roundings
                for (int i = 0; i < m; i++)
                    for (int c = 0; c < k; c++) {
                        double s = out0[(size_t)i * k + c], mag = fabs(s);
                        for (int r = r0; r < r1; r++) {
                            const double t = (double)dy[(size_t)i * n + r] * wd[(size_t)r * k + c];
                            s += t; mag += fabs(t);
                        }
                        const double got = out[(size_t)i * k + c], tol = (n + 2) * 0x1p-23 * mag;
                        fp32_checks[level]++;
                        if (!(fabs(got - s) <= tol)) fp32_fail(level, "backward_rows", got, s, tol);
                    }
                free(x); free(y); free(dy); free(out); free(y0); free(out0);
            }
            free(wd);
            free(packed);
        }
}
#endif

int main(int argc, char **argv) {
    // the default level first: the first ik_level() reads $INTERVENE_INT8_KERNELS
    const int chosen = ik_level();
    printf("cpu level: %s; default level: %s\n", level_name(ik_cpu_level()), level_name(chosen));
    if (argc > 1 && strcmp(argv[1], "--levels") == 0) {
        for (int li = 0; li < NLEVELS; li++)
            printf("level %s: %s\n", LEVELS[li].name, ik_level_runs(LEVELS[li].level) ? "runs" : "does not run on this CPU");
        return 0;
    }

    rng = 20250101;
    static const int shapes[][2] = {{32, 16}, {64, 48}, {96, 32}, {576, 96}, {1536, 48}};   // k, n
    enum { NSHAPES = sizeof shapes / sizeof shapes[0] };
    static const int tshapes[][2] = {{32, 16}, {64, 192}, {576, 48}, {1536, 32}};   // W's rows (k), cols (n)
    enum { NT = sizeof tshapes / sizeof tshapes[0] };
    matrix mats[3 * NSHAPES + NT];
    int nm = 0;
    for (int s = 0; s < NSHAPES; s++) {
        mats[nm++] = gguf_q4(shapes[s][0], shapes[s][1], 1);
        mats[nm++] = gguf_q4(shapes[s][0], shapes[s][1], 0);
        mats[nm++] = gguf_q8(shapes[s][0], shapes[s][1]);
    }
    for (int s = 0; s < NT; s++) mats[nm++] = transposed_q8(tshapes[s][0], tshapes[s][1]);

    // the packers every level shares (plain C) against the documented layouts
    long failures = 0;
    for (int i = 0; i < nm; i++) {
        size_t at;
        if (mats[i].packed
            && !same_bits(mats[i].ref, mats[i].packed, ik_packed_bytes(mats[i].kind, mats[i].n, mats[i].k), &at)) {
            printf("MISMATCH ik_pack_%s k=%d n=%d (first differing byte %zu)\n", mats[i].name, mats[i].k, mats[i].n, at);
            failures++;
        }
    }

    int runs[NLEVELS];
    for (int li = 0; li < NLEVELS; li++) runs[li] = ik_level_runs(LEVELS[li].level);

    // transposed packing at each level
    uint8_t *tpacked[NT][NLEVELS];
    for (int t = 0; t < NT; t++) {
        matrix *mx = &mats[3 * NSHAPES + t];
        const size_t bytes = ik_packed_bytes(IK_Q8, mx->n, mx->k);
        for (int li = 0; li < NLEVELS; li++) {
            tpacked[t][li] = NULL;
            if (!runs[li]) continue;
            if (ik_set_level(LEVELS[li].level) != LEVELS[li].level) { printf("ik_set_level(%s) failed\n", LEVELS[li].name); return 1; }
            tpacked[t][li] = alloc64(bytes);
            memset(tpacked[t][li], 0xA5, bytes);
            ik_pack_transposed_q8(mx->w, mx->k, mx->n, tpacked[t][li]);
            tallies[li].packings++;
            size_t at;
            if (!same_bits(tpacked[t][li], mx->ref, bytes, &at)) {
                char what[96];
                snprintf(what, sizeof what, "ik_pack_transposed_q8 rows=%d cols=%d", mx->k, mx->n);
                mismatch(li, what, at);
            }
        }
    }

    // every k, every row count: quantisation, then the products of every matrix of that k
    static const int ks[] = {32, 64, 96, 576, 1536};
    for (int ki = 0; ki < 5; ki++) {
        const int k = ks[ki], nb = k / 32;
        for (int m = 1; m <= 13; m++) {
            float *x = random_rows(m, k);
            int8_t *xq = malloc((size_t)m * k), *kq = malloc((size_t)m * k);
            float *xd = malloc(sizeof(float) * m * nb), *xs = malloc(sizeof(float) * m * nb);
            float *kd = malloc(sizeof(float) * m * nb), *ks_ = malloc(sizeof(float) * m * nb);
            ref_quantize(x, m, k, xq, xd, xs);
            for (int li = 0; li < NLEVELS; li++) {
                if (!runs[li]) continue;
                ik_set_level(LEVELS[li].level);
                memset(kq, 0x5A, (size_t)m * k);
                ik_quantize_rows(x, m, k, kq, kd, ks_);
                tallies[li].quantisations++;
                size_t at;
                char what[96];
                snprintf(what, sizeof what, "ik_quantize_rows k=%d m=%d", k, m);
                if (!same_bits(kq, xq, (size_t)m * k, &at) || !same_bits(kd, xd, sizeof(float) * m * nb, &at)
                    || !same_bits(ks_, xs, sizeof(float) * m * nb, &at))
                    mismatch(li, what, at);
            }
            for (int i = 0; i < nm; i++) {
                const matrix *mx = &mats[i];
                if (mx->k != k) continue;
                const int ng = mx->n / 16, ldy = mx->n + 5;
                for (int variant = 0; variant < 2; variant++) {
                    // fresh output over all groups, or accumulated over a partial range
                    const int accumulate = variant, g0 = variant && ng > 1 ? 1 : 0;
                    const int g1 = variant && ng > 2 ? ng - 1 : ng;
                    float *y0 = malloc(sizeof(float) * (size_t)m * ldy), *want = malloc(sizeof(float) * (size_t)m * ldy);
                    float *got = malloc(sizeof(float) * (size_t)m * ldy);
                    for (int j = 0; j < m * ldy; j++) y0[j] = uniform(-4, 4);
                    memcpy(want, y0, sizeof(float) * (size_t)m * ldy);
                    // 8-bit products never read xs: NULL checks that
                    const float *xsk = mx->kind == IK_Q8 ? NULL : xs;
                    ref_linear(mx->ref, mx->kind, k, xq, xd, xs, m, want, ldy, g0, g1, accumulate);
                    for (int li = 0; li < NLEVELS; li++) {
                        if (!runs[li]) continue;
                        ik_set_level(LEVELS[li].level);
                        const uint8_t *w = mx->w ? tpacked[i - 3 * NSHAPES][li] : mx->packed;
                        memcpy(got, y0, sizeof(float) * (size_t)m * ldy);
                        ik_linear(w, mx->kind, k, xq, xd, xsk, m, got, ldy, g0, g1, accumulate);
                        tallies[li].products++;
                        size_t at;
                        if (!same_bits(got, want, sizeof(float) * (size_t)m * ldy, &at)) {
                            char what[128];
                            snprintf(what, sizeof what, "ik_linear %s k=%d n=%d m=%d accumulate=%d groups [%d, %d): y[%zu, %zu]",
                                     mx->name, k, mx->n, m, accumulate, g0, g1, at / 4 / ldy, at / 4 % ldy);
                            mismatch(li, what, at);
                        }
                    }
                    free(y0); free(want); free(got);
                }
            }
            free(x); free(xq); free(kq); free(xd); free(xs); free(kd); free(ks_);
        }
    }

    int compared = 0;
    for (int li = 0; li < NLEVELS; li++) {
        if (!runs[li]) { printf("level %s: does not run on this CPU\n", LEVELS[li].name); continue; }
        compared++;
        failures += tallies[li].mismatches;
        printf("level %s: %ld products, %ld quantisations, %ld packings, %ld mismatches\n", LEVELS[li].name,
               tallies[li].products, tallies[li].quantisations, tallies[li].packings, tallies[li].mismatches);
    }
    printf("levels compared: %d\n", compared);
#ifdef IK_CHECK_FP32
    for (int l = FK_BASELINE; l <= fk_cpu_level(); l++) {
        fk_set_level(l);
        check_fp32(l);
        failures += fp32_failures[l];
        printf("fp32 level %s: %ld checks, %ld outside the rounding bound\n", l == FK_AVX2 ? "avx2" : "baseline",
               fp32_checks[l], fp32_failures[l]);
    }
#endif
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
