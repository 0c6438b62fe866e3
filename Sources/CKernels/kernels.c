// See include/ckernels.h. Functions that use AVX-512 carry their own target attribute, so the
// file builds for any x86-64 (and any other architecture, where ik_available() is 0).
#include "ckernels.h"
#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define IK_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

int ik_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#else
int ik_available(void) { return 0; }
#endif

static size_t chunk_bytes(int kind) { return kind == IK_Q8 ? 640 : 384; }

size_t ik_packed_bytes(int kind, int rows, int cols) { return (size_t)(rows / 16) * (size_t)(cols / 32) * chunk_bytes(kind); }

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else {      // subnormal: normalise
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3FF) << 13;
        }
    } else if (exp == 31) bits = sign | 0x7F800000u | man << 13;
    else bits = sign | (exp + 112) << 23 | man << 13;
    float f; memcpy(&f, &bits, 4); return f;
}

void ik_pack_q4(const void *blocks, size_t row_bytes, int block_bytes, int values_offset, int has_min,
                int rows, int cols, void *dst) {
    const int nb = cols / 32, bb = block_bytes, qoff = values_offset;
    uint8_t *out = (uint8_t *)dst;
    for (int g = 0; g < rows / 16; g++)
        for (int b = 0; b < nb; b++) {
            uint8_t *chunk = out + ((size_t)g * nb + b) * 384;
            float *d = (float *)(chunk + 256), *mm = (float *)(chunk + 320);
            for (int o = 0; o < 16; o++) {
                const uint8_t *blk = (const uint8_t *)blocks + (size_t)(16 * g + o) * row_bytes + (size_t)b * bb;
                uint16_t hd, hm; memcpy(&hd, blk, 2); memcpy(&hm, blk + 2, 2);
                d[o] = half_to_float(hd);
                mm[o] = has_min ? half_to_float(hm) : -8.0f * d[o];
                uint8_t q[32];
                for (int j = 0; j < 16; j++) { q[j] = blk[qoff + j] & 0xF; q[j + 16] = blk[qoff + j] >> 4; }
                for (int s = 0; s < 4; s++)
                    for (int c = 0; c < 4; c++)
                        chunk[64 * s + 4 * o + c] = (uint8_t)(q[8 * s + c] | q[8 * s + 4 + c] << 4);
            }
        }
}

void ik_pack_q8(const void *blocks, size_t row_bytes, int rows, int cols, void *dst) {
    const int nb = cols / 32;
    uint8_t *out = (uint8_t *)dst;
    for (int g = 0; g < rows / 16; g++)
        for (int b = 0; b < nb; b++) {
            uint8_t *chunk = out + ((size_t)g * nb + b) * 640;
            float *d = (float *)(chunk + 512), *c = (float *)(chunk + 576);
            for (int o = 0; o < 16; o++) {
                const uint8_t *blk = (const uint8_t *)blocks + (size_t)(16 * g + o) * row_bytes + (size_t)b * 34;
                uint16_t hd; memcpy(&hd, blk, 2);
                d[o] = half_to_float(hd);
                int sum = 0;
                for (int j = 0; j < 32; j++) {
                    const int8_t q = (int8_t)blk[2 + j];
                    sum += q;
                    chunk[64 * (j / 4) + 4 * o + j % 4] = (uint8_t)q;
                }
                c[o] = -128.0f * d[o] * (float)sum;
            }
        }
}

#if defined(__x86_64__)
// Per group of 16 columns and run of 32 rows: the 32 row segments are 32 vectors of 16 lanes
// (lane o = column 16g + o); rows j = 4t…4t+3 become vector t with lane o = their four bytes.
IK_TARGET
void ik_pack_transposed_q8(const float *w, int rows, int cols, void *dst) {
    const int nb = rows / 32;
    uint8_t *out = (uint8_t *)dst;
    const __m512i byte = _mm512_set1_epi32(0xFF);
    for (int b = 0; b < nb; b++)            // one run of 32 rows (in cache) for all groups
        for (int g = 0; g < cols / 16; g++) {
            uint8_t *chunk = out + ((size_t)g * nb + b) * 640;
            const float *src = w + (size_t)(32 * b) * cols + 16 * g;     // W[32b + j, 16g + o]
            __m512 v[32], amax = _mm512_setzero_ps();
            for (int j = 0; j < 32; j++) {
                v[j] = _mm512_loadu_ps(src + (size_t)j * cols);
                amax = _mm512_max_ps(amax, _mm512_abs_ps(v[j]));
            }
            const __m512 d = _mm512_div_ps(amax, _mm512_set1_ps(127.0f));
            const __mmask16 nz = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_GT_OQ);
            const __m512 inv = _mm512_maskz_div_ps(nz, _mm512_set1_ps(1.0f), d);
            __m512i sum = _mm512_setzero_si512();
            for (int t = 0; t < 8; t++) {
                __m512i lanes = _mm512_setzero_si512();
                for (int c = 0; c < 4; c++) {
                    // round to nearest even (the default rounding mode), as ik_quantize_rows
                    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v[4 * t + c], inv));
                    sum = _mm512_add_epi32(sum, q);
                    lanes = _mm512_or_si512(lanes, _mm512_slli_epi32(_mm512_and_si512(q, byte), 8 * c));
                }
                _mm512_store_si512((void *)(chunk + 64 * t), lanes);
            }
            _mm512_store_ps((void *)(chunk + 512), d);
            _mm512_store_ps((void *)(chunk + 576), _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(-128.0f), d), _mm512_cvtepi32_ps(sum)));
        }
}
#else
void ik_pack_transposed_q8(const float *w, int rows, int cols, void *dst) { (void)w; (void)rows; (void)cols; (void)dst; }
#endif

#if defined(__x86_64__)
IK_TARGET
void ik_quantize_rows(const float *x, int m, int k, int8_t *xq, float *xd, float *xs) {
    const int nb = k / 32;
    for (int i = 0; i < m; i++)
        for (int b = 0; b < nb; b++) {
            const float *v = x + (size_t)i * k + 32 * b;
            const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            const float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
            const __m512 s = _mm512_set1_ps(inv);
            // round to nearest even (the default rounding mode), as lrintf
            const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, s)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, s));
            int8_t *q = xq + (size_t)i * k + 32 * b;
            _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(q1));
            xd[(size_t)i * nb + b] = d;
            xs[(size_t)i * nb + b] = d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
}
#else
void ik_quantize_rows(const float *x, int m, int k, int8_t *xq, float *xd, float *xs) {
    (void)x; (void)m; (void)k; (void)xq; (void)xd; (void)xs;
}
#endif

#if defined(__x86_64__)
// One group of 16 output rows against R activation rows (R a compile-time constant after
// inlining, so acc[] lives in registers): per block, unpack 8 vectors of u8 weights (lane o holds
// q(o, 4t…4t+3)), then per activation row 8 vpdpbusd against its 4-byte groups broadcast, and
// y += cvt(Σ) · (d ⊙ xd) + m ⊙ xs.
static inline __attribute__((always_inline)) IK_TARGET
void group_tile(const uint8_t *chunks, int nb, const int8_t *xq, const float *xd, const float *xs, int k,
                int R, float *y, int ldy, int accumulate) {
    __m512 acc[12];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const __m512i lo = _mm512_set1_epi8(0x0F);
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = chunks + (size_t)b * 384;
        __m512i w[8];
        for (int s = 0; s < 4; s++) {
            __m512i p = _mm512_load_si512((const void *)(c + 64 * s));
            w[2 * s] = _mm512_and_si512(p, lo);
            w[2 * s + 1] = _mm512_and_si512(_mm512_srli_epi16(p, 4), lo);
        }
        const __m512 d = _mm512_load_ps((const void *)(c + 256)), mo = _mm512_load_ps((const void *)(c + 320));
        for (int r = 0; r < R; r++) {
            const int32_t *xr = (const int32_t *)(xq + (size_t)r * k + 32 * b);
            __m512i s = _mm512_setzero_si512();
            for (int t = 0; t < 8; t++) s = _mm512_dpbusd_epi32(s, w[t], _mm512_set1_epi32(xr[t]));
            const float dx = xd[(size_t)r * (k / 32) + b], sx = xs[(size_t)r * (k / 32) + b];
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, _mm512_set1_ps(dx)), acc[r]);
            acc[r] = _mm512_fmadd_ps(mo, _mm512_set1_ps(sx), acc[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        float *yr = y + (size_t)r * ldy;
        if (accumulate) acc[r] = _mm512_add_ps(acc[r], _mm512_loadu_ps(yr));
        _mm512_storeu_ps(yr, acc[r]);
    }
}

// The same for signed 8-bit weights: vpdpbusd takes x + 128 (bytes xor 0x80) as its unsigned
// operand and the weights as its signed one; y += cvt(Σ) · (d ⊙ xd) + c ⊙ xd, c = −128·d·Σq.
static inline __attribute__((always_inline)) IK_TARGET
void group_tile_q8(const uint8_t *chunks, int nb, const int8_t *xq, const float *xd, int k,
                   int R, float *y, int ldy, int accumulate) {
    __m512 acc[12];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = chunks + (size_t)b * 640;
        __m512i w[8];
        for (int t = 0; t < 8; t++) w[t] = _mm512_load_si512((const void *)(c + 64 * t));
        const __m512 d = _mm512_load_ps((const void *)(c + 512)), co = _mm512_load_ps((const void *)(c + 576));
        for (int r = 0; r < R; r++) {
            const uint32_t *xr = (const uint32_t *)(xq + (size_t)r * k + 32 * b);
            __m512i s = _mm512_setzero_si512();
            for (int t = 0; t < 8; t++) s = _mm512_dpbusd_epi32(s, _mm512_set1_epi32((int)(xr[t] ^ 0x80808080u)), w[t]);
            const __m512 dx = _mm512_set1_ps(xd[(size_t)r * (k / 32) + b]);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, dx), acc[r]);
            acc[r] = _mm512_fmadd_ps(co, dx, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        float *yr = y + (size_t)r * ldy;
        if (accumulate) acc[r] = _mm512_add_ps(acc[r], _mm512_loadu_ps(yr));
        _mm512_storeu_ps(yr, acc[r]);
    }
}

#define IK_TILE(R) case R: \
    if (kind == IK_Q8) group_tile_q8(chunks, nb, xq + (size_t)i * k, xd + (size_t)i * nb, k, R, y + (size_t)i * ldy + 16 * g, ldy, accumulate); \
    else group_tile(chunks, nb, xq + (size_t)i * k, xd + (size_t)i * nb, xs + (size_t)i * nb, k, R, y + (size_t)i * ldy + 16 * g, ldy, accumulate); \
    break;

IK_TARGET
void ik_linear(const void *packed, int kind, int k, const int8_t *xq, const float *xd, const float *xs, int m,
               float *y, int ldy, int g0, int g1, int accumulate) {
    const int nb = k / 32;
    for (int g = g0; g < g1; g++) {
        const uint8_t *chunks = (const uint8_t *)packed + (size_t)g * nb * chunk_bytes(kind);
        for (int i = 0; i < m; i += 12) {
            switch (m - i < 12 ? m - i : 12) {
                IK_TILE(1) IK_TILE(2) IK_TILE(3) IK_TILE(4) IK_TILE(5) IK_TILE(6)
                IK_TILE(7) IK_TILE(8) IK_TILE(9) IK_TILE(10) IK_TILE(11) IK_TILE(12)
            }
        }
    }
}
#else
void ik_linear(const void *packed, int kind, int k, const int8_t *xq, const float *xd, const float *xs, int m,
               float *y, int ldy, int g0, int g1, int accumulate) { (void)packed; (void)kind; (void)k; (void)xq; (void)xd;
    (void)xs; (void)m; (void)y; (void)ldy; (void)g0; (void)g1; (void)accumulate; }
#endif
