// See include/ckernels.h. Functions that use AVX-512, AVX-VNNI or AVX2 (x86-64) or the NEON
// dot-product instructions (aarch64) carry their own target attribute, so the file builds for any
// x86-64 or aarch64 CPU (and any other architecture, where ik_cpu_level() is 0) and the level is
// picked at run time.
#include "ckernels.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define IK_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define IK_AVX2 __attribute__((target("avx2,fma")))

static int has_avx512_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

static int has_avx2_fma(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// AVX-VNNI (the VEX-encoded vpdpbusd): CPUID leaf 7, subleaf 1, EAX bit 4, read directly.
// __builtin_cpu_supports("avxvnni") compiles with this clang but reads the feature bits that the
// linked runtime sets, here the system's libgcc, and a libgcc older than GCC 11 never sets that
// one. The OS's saving of the ymm registers is AVX2's condition too, checked by has_avx2_fma.
// Read once: CPUID traps to the hypervisor on virtual machines.
static int has_avx_vnni(void) {
    static int known = -1;
    if (known < 0) {
        unsigned a, b, c, d;
        known = __get_cpuid_count(7, 1, &a, &b, &c, &d) ? (int)((a >> 4) & 1) : 0;
    }
    return known;
}

int ik_level_runs(int lvl) {
    switch (lvl) {
    case IK_NONE: return 1;
    case IK_AVX2_LEVEL: return has_avx2_fma();
    case IK_AVX_VNNI: return has_avx2_fma() && has_avx_vnni();
    case IK_AVX512_VNNI: return has_avx512_vnni();
    case IK_AVX_VNNI_TWIN: return has_avx2_fma() && has_avx512_vnni();
    default: return 0;
    }
}
#elif defined(__aarch64__)
#include <arm_neon.h>
// The dot-product instructions (sdot, FEAT_DotProd, optional from ARMv8.2: Cortex-A55/A75 and
// later, Neoverse N1 and later, Apple M1 and later; not Cortex-A53/A57/A72, Raspberry Pi 4).
// Functions that use them carry this attribute (GCC wants the architecture level with the
// feature: its arm_neon.h declares vdotq_* for "arch=armv8.2-a+dotprod"), the rest of the file
// stays baseline ARMv8-A.
#define IK_NEON __attribute__((target("arch=armv8.2-a+dotprod")))
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
static int has_dotprod(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }
#elif defined(__APPLE__)
#include <sys/sysctl.h>
// Written from Apple's documentation and never run: no macOS machine was at hand.
static int has_dotprod(void) {
    static int known = -1;
    if (known < 0) {
        int v = 0;
        size_t n = sizeof v;
        known = sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &n, NULL, 0) == 0 && v != 0;
    }
    return known;
}
#else
static int has_dotprod(void) { return 0; }
#endif

int ik_level_runs(int lvl) {
    switch (lvl) {
    case IK_NONE: return 1;
    case IK_NEON_DOTPROD: return has_dotprod();
    default: return 0;
    }
}
#else
int ik_level_runs(int lvl) { return lvl == IK_NONE; }
#endif

int ik_cpu_level(void) {
    for (int l = IK_NEON_DOTPROD; l > IK_NONE; l--)
        if (ik_level_runs(l)) return l;
    return IK_NONE;
}

// -1: not chosen yet (the first ik_level() reads the CPU and $INTERVENE_INT8_KERNELS).
static int level = -1;

int ik_set_level(int wanted) {
    if (wanted == IK_AVX_VNNI_TWIN) {
        if (ik_level_runs(wanted)) return level = wanted;
        wanted = IK_AVX_VNNI;   // the same algorithm, VEX-encoded, else lower
    }
    // the highest level the CPU runs not above `wanted` (a CPU with AVX-512 VNNI may lack
    // AVX-VNNI: Ice Lake server, Zen 4; an x86 CPU never runs IK_NEON_DOTPROD, an aarch64 one no
    // x86 level)
    int l = wanted > IK_NEON_DOTPROD ? IK_NEON_DOTPROD : wanted;
    while (l > IK_NONE && !ik_level_runs(l)) l--;
    return level = l < IK_NONE ? IK_NONE : l;
}

int ik_level(void) {
    if (level < 0) {
        const char *env = getenv("INTERVENE_INT8_KERNELS");
        int wanted = IK_NEON_DOTPROD;   // the highest: any CPU's best
        if (env && strcmp(env, "neon-dotprod") == 0) wanted = IK_NEON_DOTPROD;
        else if (env && strcmp(env, "avx-vnni") == 0) wanted = IK_AVX_VNNI;
        else if (env && strcmp(env, "avx-vnni-twin") == 0) wanted = IK_AVX_VNNI_TWIN;   // tests only
        else if (env && strcmp(env, "avx2") == 0) wanted = IK_AVX2_LEVEL;
        else if (env && strcmp(env, "none") == 0) wanted = IK_NONE;
        ik_set_level(wanted);
    }
    return level;
}

int ik_available(void) { return ik_level() > IK_NONE; }

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

#if defined(__x86_64__) || defined(__aarch64__)
// The quantised rows staged for the tiles, block-major: block b of row r at (b·m + r)·32 bytes,
// its scale and offset weight at b·m + r, so a tile's rows are one stream (the head's backward,
// k = 49,152, read ten rows 49 KB apart: 20 streams, beyond the prefetchers: 5.1 ms a product
// before, on 1 thread). `flip` 0x80 stores x + 128 for vpdpbusd's unsigned operand (the 8-bit
// weights at the VNNI levels), so the tiles broadcast it straight from memory (AVX2 and NEON
// stage x itself: flip 0). The buffers are the calling thread's own, grown as needed.
typedef struct { const uint8_t *x; const float *d, *s; } ik_staged;

static ik_staged stage_rows(const int8_t *xq, const float *xd, const float *xs, int m, int k, uint8_t flip) {
    static _Thread_local uint8_t *buf = NULL;
    static _Thread_local size_t cap = 0;
    const int nb = k / 32;
    const size_t bytes = (size_t)m * (size_t)k, need = bytes + 2 * sizeof(float) * (size_t)m * (size_t)nb;
    if (need > cap) {
        free(buf);
        cap = need + 4096;
        buf = aligned_alloc(64, (cap + 63) / 64 * 64);
        if (!buf) abort();
    }
    float *d = (float *)(buf + bytes), *sx = d + (size_t)m * nb;
    const uint32_t f4 = 0x01010101u * flip;
    for (int b = 0; b < nb; b++)
        for (int r = 0; r < m; r++) {
            const uint32_t *src = (const uint32_t *)(xq + (size_t)r * k + 32 * b);
            uint32_t *dst = (uint32_t *)(buf + ((size_t)b * m + r) * 32);
            for (int t = 0; t < 8; t++) dst[t] = src[t] ^ f4;
            d[(size_t)b * m + r] = xd[(size_t)r * nb + b];
            sx[(size_t)b * m + r] = xs ? xs[(size_t)r * nb + b] : 0;
        }
    return (ik_staged){ buf, d, sx };
}

// Chunks prefetched ahead of the one a tile decodes. A step streams ~250 MB of packed weights
// (more than the 32 MB L3), and the hardware prefetchers alone left the products waiting:
// `worker bench --threads 1` at 100 steps, median step, AVX-512 VNNI 27.0–29.1 ms without,
// 23.9–25.6 (2 chunks), 23.0–24.3 (4), 23.0–24.3 (8), 25.2 (16) with; AVX2 57.1–58.0 → 53.5–54.2 (8).
#define IK_PREFETCH 8

// Asks for the chunk IK_PREFETCH chunks after `c` (chunks `bytes` long), every level's tiles once
// per chunk (prefetcht0 on x86-64, PRFM PLDL1KEEP on aarch64; neither faults past the end).
static inline __attribute__((always_inline)) void prefetch_ahead(const uint8_t *c, int bytes) {
    for (int l = 0; l < bytes; l += 64) __builtin_prefetch(c + IK_PREFETCH * bytes + l, 0, 3);
}
#endif

#if defined(__x86_64__)
// Per group of 16 columns and run of 32 rows: the 32 row segments are 32 vectors of 16 lanes
// (lane o = column 16g + o); rows j = 4t…4t+3 become vector t with lane o = their four bytes.
IK_TARGET
static void pack_transposed_q8_avx512(const float *w, int rows, int cols, void *dst) {
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

// Sixteen vectors' horizontal maxima (sums) as one vector: lane j = max (Σ) of a[j]'s lanes. A
// tree of shuffles that halves the lanes per vector at each level: 45 instructions for 16
// blocks, where _mm512_reduce_* per block is a chain of ~8 dependent ones. Max and integer sums
// are exact in any order.
#define IK_REDUCE16(name, T, shuf, perm, op)                                                            \
    static inline __attribute__((always_inline)) IK_TARGET T name(T a[16]) {                         \
        const __m512i lo = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29); \
        const __m512i hi = _mm512_setr_epi32(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31); \
        const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30); \
        const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31); \
        T b[8], c[4], d[2];                                                                            \
        for (int j = 0; j < 8; j++) /* [a2j: 8 | a2j+1: 8] */                                          \
            b[j] = op(shuf(a[2 * j], a[2 * j + 1], 0x44), shuf(a[2 * j], a[2 * j + 1], 0xEE));         \
        for (int j = 0; j < 4; j++) /* four blocks × 4 */                                              \
            c[j] = op(shuf(b[2 * j], b[2 * j + 1], 0x88), shuf(b[2 * j], b[2 * j + 1], 0xDD));         \
        for (int j = 0; j < 2; j++) /* eight blocks × 2 */                                             \
            d[j] = op(perm(c[2 * j], lo, c[2 * j + 1]), perm(c[2 * j], hi, c[2 * j + 1]));             \
        return op(perm(d[0], ev, d[1]), perm(d[0], od, d[1]));                                         \
    }
IK_REDUCE16(reduce16_max, __m512, _mm512_shuffle_f32x4, _mm512_permutex2var_ps, _mm512_max_ps)
IK_REDUCE16(reduce16_add, __m512i, _mm512_shuffle_i32x4, _mm512_permutex2var_epi32, _mm512_add_epi32)

// As the per-block loop below, sixteen blocks at a time (a row's blocks are contiguous, so the
// m·nb blocks are one run): the maxima and sums reduced together (reduce16_*), d and 1/d as one
// vector division each (IEEE division rounds the same in a vector as in a scalar), so every
// output is the same bit for bit. 8.8 → 5.4–6.0 ns a block (`m = 10, k = 576…49,152`, one thread,
// this project's AVX-512 VNNI EPYC).
IK_TARGET
static void quantize_rows_avx512(const float *x, int m, int k, int8_t *xq, float *xd, float *xs) {
    const int nb = k / 32, blocks = m * nb;
    int g = 0;
    for (; g + 16 <= blocks; g += 16) {
        const float *v = x + (size_t)32 * g;
        __m512 am[16];
        for (int j = 0; j < 16; j++)
            am[j] = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(v + 32 * j)), _mm512_abs_ps(_mm512_loadu_ps(v + 32 * j + 16)));
        const __m512 d = _mm512_div_ps(reduce16_max(am), _mm512_set1_ps(127.0f));
        const __mmask16 nz = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_GT_OQ);
        __m512 r = _mm512_maskz_div_ps(nz, _mm512_set1_ps(1.0f), d);
        // a block of subnormals: 1/d overflows; its values round to 0, at every level
        r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, _mm512_set1_ps(INFINITY), _CMP_LT_OQ), r);
        float inv[16] __attribute__((aligned(64)));
        _mm512_store_ps(inv, r);
        __m512i sums[16];
        for (int j = 0; j < 16; j++) {
            const __m512 s = _mm512_set1_ps(inv[j]);
            const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + 32 * j), s));
            const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + 32 * j + 16), s));
            int8_t *q = xq + (size_t)32 * (g + j);
            _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(q1));
            sums[j] = _mm512_add_epi32(q0, q1);
        }
        _mm512_storeu_ps(xd + g, d);
        _mm512_storeu_ps(xs + g, _mm512_mul_ps(d, _mm512_cvtepi32_ps(reduce16_add(sums))));
    }
    for (; g < blocks; g++) {   // the last blocks one at a time
        const float *v = x + (size_t)32 * g;
        const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.0f, r = d > 0 ? 1.0f / d : 0.0f;
        const float inv = isfinite(r) ? r : 0.0f;
        const __m512 s = _mm512_set1_ps(inv);
        // round to nearest even (the default rounding mode), as lrintf
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, s)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, s));
        int8_t *q = xq + (size_t)32 * g;
        _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(q1));
        xd[g] = d;
        xs[g] = d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
}

// One group of 16 output rows against R activation rows (R a compile-time constant after
// inlining, so acc[] lives in registers): per block, unpack 8 vectors of u8 weights (lane o holds
// q(o, 4t…4t+3)), then per activation row 8 vpdpbusd against its 4-byte groups broadcast, and
// y += cvt(Σ) · (d ⊙ xd) + m ⊙ xs.
static inline __attribute__((always_inline)) IK_TARGET
void group_tile(const uint8_t *chunks, int nb, const uint8_t *xq, const float *xd, const float *xs, int m,
                int R, float *y, int ldy, int accumulate) {
    __m512 acc[12];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const __m512i lo = _mm512_set1_epi8(0x0F);
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = chunks + (size_t)b * 384;
        prefetch_ahead(c, 384);
        __m512i w[8];
        for (int s = 0; s < 4; s++) {
            __m512i p = _mm512_load_si512((const void *)(c + 64 * s));
            w[2 * s] = _mm512_and_si512(p, lo);
            w[2 * s + 1] = _mm512_and_si512(_mm512_srli_epi16(p, 4), lo);
        }
        const __m512 d = _mm512_load_ps((const void *)(c + 256)), mo = _mm512_load_ps((const void *)(c + 320));
        for (int r = 0; r < R; r++) {
            const int32_t *xr = (const int32_t *)(xq + ((size_t)b * m + r) * 32);
            // two chains of four: vpdpbusd's latency otherwise leaves the ports idle (integer sums: exact in any order)
            __m512i s = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
            for (int t = 0; t < 8; t += 2) {
                s = _mm512_dpbusd_epi32(s, w[t], _mm512_set1_epi32(xr[t]));
                s1 = _mm512_dpbusd_epi32(s1, w[t + 1], _mm512_set1_epi32(xr[t + 1]));
            }
            s = _mm512_add_epi32(s, s1);
            const float dx = xd[(size_t)b * m + r], sx = xs[(size_t)b * m + r];
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
void group_tile_q8(const uint8_t *chunks, int nb, const uint8_t *xq, const float *xd, int m,
                   int R, float *y, int ldy, int accumulate) {
    __m512 acc[12];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = chunks + (size_t)b * 640;
        prefetch_ahead(c, 640);
        __m512i w[8];
        for (int t = 0; t < 8; t++) w[t] = _mm512_load_si512((const void *)(c + 64 * t));
        const __m512 d = _mm512_load_ps((const void *)(c + 512)), co = _mm512_load_ps((const void *)(c + 576));
        for (int r = 0; r < R; r++) {
            const uint32_t *xr = (const uint32_t *)(xq + ((size_t)b * m + r) * 32);   // x + 128, staged
            __m512i s = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
            for (int t = 0; t < 8; t += 2) {
                s = _mm512_dpbusd_epi32(s, _mm512_set1_epi32((int)xr[t]), w[t]);
                s1 = _mm512_dpbusd_epi32(s1, _mm512_set1_epi32((int)xr[t + 1]), w[t + 1]);
            }
            s = _mm512_add_epi32(s, s1);
            const __m512 dx = _mm512_set1_ps(xd[(size_t)b * m + r]);
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
    if (kind == IK_Q8) group_tile_q8(chunks, nb, st.x + 32 * (size_t)i, st.d + i, m, R, y + (size_t)i * ldy + 16 * g, ldy, accumulate); \
    else group_tile(chunks, nb, st.x + 32 * (size_t)i, st.d + i, st.s + i, m, R, y + (size_t)i * ldy + 16 * g, ldy, accumulate); \
    break;

IK_TARGET
static void linear_avx512(const void *packed, int kind, int k, const int8_t *xq, const float *xd, const float *xs, int m,
                          float *y, int ldy, int g0, int g1, int accumulate) {
    const int nb = k / 32;
    const ik_staged st = stage_rows(xq, xd, xs, m, k, kind == IK_Q8 ? 0x80 : 0);
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

// ---- 256-bit levels: AVX2 + FMA, AVX-VNNI (and its test-only twin), one source ----
//
// tile256.h holds the 256-bit kernels once; each level below compiles it with its own integer
// block sums. Every integer sum equals vpdpbusd's exactly, and every float operation is the
// AVX-512 kernel's, lane for lane and in the same order, so a product computed at any level is
// identical. A 16-row group is two halves of 8 lanes (its bytes 32h…32h+31 of each 64-byte
// vector); a tile is at most 4 activation rows, so that 8 weight vectors, 4 accumulators and
// temporaries fit the 16 ymm registers.

// AVX2 (vpmaddubsw + vpmaddwd). 4-bit weights (0…15) against s8 activations (|x| ≤ 127):
// vpmaddubsw's pair sums are at most 2·15·127 = 3,810, and eight of them 30,480 < 32,767, so the
// 16-bit sum over a whole block is exact before vpmaddwd widens it.
// Signed 8-bit weights: vpdpbusd's sum is S = Σ q (x + 128) (the packed offsets take 128·Σq back
// out); here S = Σ q·x + 128·Σ q, both exact: Σ q·x by vpmaddubsw on |q| (≤ 128) and x·sign(q)
// (|x| ≤ 127), pair sums ≤ 32,512, widened per vector; Σ q by vpmaddubsw of ones against q, pair
// sums ≤ 256, eight of them ≤ 2,048, once per block for all rows (IK256_Q8_PREP).
#define IK256_TARGET IK_AVX2
#define IK256_NAME(f) f##_avx2
#define IK256_Q8_FLIP 0
#define IK256_Q4_SUM(w, xr) ({ \
    __m256i s16_ = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(xr[0])); \
    for (int t_ = 1; t_ < 8; t_++) s16_ = _mm256_add_epi16(s16_, _mm256_maddubs_epi16(w[t_], _mm256_set1_epi32(xr[t_]))); \
    _mm256_madd_epi16(s16_, _mm256_set1_epi16(1)); })
#define IK256_Q8_PREP(w) \
    __m256i aw_[8], q16_ = _mm256_setzero_si256(); \
    for (int t_ = 0; t_ < 8; t_++) { \
        aw_[t_] = _mm256_sign_epi8(w[t_], w[t_]);   /* |q| (−128 stays 0x80 = 128 unsigned) */ \
        q16_ = _mm256_add_epi16(q16_, _mm256_maddubs_epi16(_mm256_set1_epi8(1), w[t_])); \
    } \
    const __m256i sum128_ = _mm256_slli_epi32(_mm256_madd_epi16(q16_, _mm256_set1_epi16(1)), 7);
#define IK256_Q8_SUM(w, xr) ({ \
    __m256i s_ = sum128_; \
    for (int t_ = 0; t_ < 8; t_++) { \
        const __m256i xs8_ = _mm256_sign_epi8(_mm256_set1_epi32(xr[t_]), w[t_]); \
        s_ = _mm256_add_epi32(s_, _mm256_madd_epi16(_mm256_maddubs_epi16(aw_[t_], xs8_), _mm256_set1_epi16(1))); \
    } \
    s_; })
#include "tile256.h"
#undef IK256_TARGET
#undef IK256_NAME
#undef IK256_Q4_SUM
#undef IK256_Q8_PREP
#undef IK256_Q8_SUM
#undef IK256_Q8_FLIP

// AVX-VNNI: vpdpbusd on 256 bits, x + 128 (bytes xor 0x80) as the unsigned operand of the 8-bit
// weights, as the AVX-512 kernel. linear_avxvnni is the real level (IK_AVX_VNNI, VEX-encoded
// vpdpbusd: Alder Lake and later client CPUs, Zen 5 clients); linear_avxvnni_twin
// (IK_AVX_VNNI_TWIN, tests only) is the same source with the EVEX-encoded 256-bit vpdpbusd of
// AVX-512 VL + VNNI, so that CPUs without AVX-VNNI (Ice Lake server, Zen 4) check the algorithm
// bit for bit (KernelLevelTests). Quantisation and the transposed packing are AVX2's at both.
#define IK256_Q4_SUM(w, xr) ({ \
    __m256i s_ = _mm256_setzero_si256(); \
    for (int t_ = 0; t_ < 8; t_++) s_ = IK256_DPBUSD(s_, w[t_], _mm256_set1_epi32(xr[t_])); \
    s_; })
#define IK256_Q8_PREP(w)
#define IK256_Q8_FLIP 0x80
#define IK256_Q8_SUM(w, xr) ({ \
    __m256i s_ = _mm256_setzero_si256(); \
    for (int t_ = 0; t_ < 8; t_++) \
        s_ = IK256_DPBUSD(s_, _mm256_set1_epi32(xr[t_]), w[t_]); \
    s_; })

#define IK256_TARGET __attribute__((target("avx2,fma,avxvnni")))
#define IK256_DPBUSD(s, u, w) _mm256_dpbusd_avx_epi32(s, u, w)
#define IK256_NAME(f) f##_avxvnni
#include "tile256.h"
#undef IK256_TARGET
#undef IK256_DPBUSD
#undef IK256_NAME

#define IK256_TARGET __attribute__((target("avx2,fma,avx512vl,avx512vnni")))
#define IK256_DPBUSD(s, u, w) _mm256_dpbusd_epi32(s, u, w)
#define IK256_NAME(f) f##_avxvnni_twin
#include "tile256.h"
#undef IK256_TARGET
#undef IK256_DPBUSD
#undef IK256_NAME
#undef IK256_Q4_SUM
#undef IK256_Q8_PREP
#undef IK256_Q8_SUM
#undef IK256_Q8_FLIP

// As quantize_rows_avx512: the max is exact in any order, d and 1/d are the same scalar
// operations, vcvtps2dq rounds to nearest even in both, and the integer sum is exact.
IK_AVX2
static void quantize_rows_avx2(const float *x, int m, int k, int8_t *xq, float *xd, float *xs) {
    const int nb = k / 32;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int i = 0; i < m; i++)
        for (int b = 0; b < nb; b++) {
            const float *v = x + (size_t)i * k + 32 * b;
            __m256 vs[4], mx = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                vs[j] = _mm256_loadu_ps(v + 8 * j);
                mx = _mm256_max_ps(mx, _mm256_and_ps(vs[j], absmask));
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
            const float amax = _mm_cvtss_f32(m4);
            const float d = amax / 127.0f, r = d > 0 ? 1.0f / d : 0.0f;
            // a block of subnormals: 1/d overflows; its values round to 0, at every level
            const float inv = isfinite(r) ? r : 0.0f;
            const __m256 sc = _mm256_set1_ps(inv);
            __m256i q[4];
            for (int j = 0; j < 4; j++) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(vs[j], sc));
            // |q| ≤ 127: the saturating packs are exact; they interleave 4-byte groups, the
            // permutation puts them back in order
            const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256((__m256i *)(xq + (size_t)i * k + 32 * b), _mm256_permutevar8x32_epi32(p, order));
            __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
            xd[(size_t)i * nb + b] = d;
            xs[(size_t)i * nb + b] = d * (float)_mm_cvtsi128_si32(s4);
        }
}

// As pack_transposed_q8_avx512, 8 columns at a time (half h of a group of 16).
IK_AVX2
static void pack_transposed_q8_avx2(const float *w, int rows, int cols, void *dst) {
    const int nb = rows / 32;
    uint8_t *out = (uint8_t *)dst;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256i byte = _mm256_set1_epi32(0xFF);
    for (int b = 0; b < nb; b++)
        for (int g = 0; g < cols / 16; g++)
            for (int h = 0; h < 2; h++) {
                uint8_t *chunk = out + ((size_t)g * nb + b) * 640;
                const float *src = w + (size_t)(32 * b) * cols + 16 * g + 8 * h;
                __m256 v[32], amax = _mm256_setzero_ps();
                for (int j = 0; j < 32; j++) {
                    v[j] = _mm256_loadu_ps(src + (size_t)j * cols);
                    amax = _mm256_max_ps(amax, _mm256_and_ps(v[j], absmask));
                }
                const __m256 d = _mm256_div_ps(amax, _mm256_set1_ps(127.0f));
                const __m256 nz = _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_GT_OQ);
                const __m256 inv = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), d), nz);
                __m256i sum = _mm256_setzero_si256();
                for (int t = 0; t < 8; t++) {
                    __m256i lanes = _mm256_setzero_si256();
                    for (int c = 0; c < 4; c++) {
                        const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(v[4 * t + c], inv));
                        sum = _mm256_add_epi32(sum, q);
                        lanes = _mm256_or_si256(lanes, _mm256_slli_epi32(_mm256_and_si256(q, byte), 8 * c));
                    }
                    _mm256_store_si256((__m256i *)(chunk + 64 * t + 32 * h), lanes);
                }
                _mm256_store_ps((float *)(chunk + 512 + 32 * h), d);
                _mm256_store_ps((float *)(chunk + 576 + 32 * h),
                                _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(-128.0f), d), _mm256_cvtepi32_ps(sum)));
            }
}
#endif

#if defined(__aarch64__)
// ---- aarch64: NEON with the dot-product instructions (IK_NEON_DOTPROD) ----
//
// The same packed layouts, integer sums and float operations as the x86 levels, lane for lane
// and in the same order, so a product is bit-identical to theirs (Tests/CKernelsCheck/int8_check.c
// holds every level to one scalar reference; cluster/check-aarch64.sh runs it under qemu).
// vcvtnq_s32_f32 rounds to nearest even like vcvtps2dq in the default rounding mode; vcvtq_f32_s32,
// vmulq, vdivq and vfmaq round like their x86 counterparts (IEEE, nearest even; FPCR's flush-to-
// zero is off under Linux and macOS, as MXCSR's under x86). The quantisation and the transposed
// packing need only baseline NEON; the products use sdot (vdotq_laneq_s32: lane t of the
// activations' 4-byte groups against the weight vector, no broadcast).

// vcvtps2dq's conversion: nearest even, and 0x80000000 ("integer indefinite") for NaN and anything
// outside int32, where vcvtnq_s32_f32 saturates (NaN to 0). The transposed packing needs it: a run
// of 32 weights below ~3.7e-37 has a subnormal scale whose reciprocal overflows, and the x86
// levels store what their conversion gives there.
static inline int32x4_t cvt_like_x86(float32x4_t v) {
    const uint32x4_t in_range = vcaltq_f32(v, vdupq_n_f32(2147483648.0f));   // |v| < 2³¹, false for NaN
    return vbslq_s32(in_range, vcvtnq_s32_f32(v), vdupq_n_s32(INT32_MIN));
}

// As quantize_rows_avx512. For finite x, |x · inv| ≤ 127 (plus rounding), so the conversion never
// leaves int32 and the narrowing moves (truncating, like vpmovdb) are exact.
static void quantize_rows_neon(const float *x, int m, int k, int8_t *xq, float *xd, float *xs) {
    const int nb = k / 32;
    for (int i = 0; i < m; i++)
        for (int b = 0; b < nb; b++) {
            const float *v = x + (size_t)i * k + 32 * b;
            float32x4_t vs[8], mx = vdupq_n_f32(0);
            for (int j = 0; j < 8; j++) {
                vs[j] = vld1q_f32(v + 4 * j);
                mx = vmaxq_f32(mx, vabsq_f32(vs[j]));
            }
            const float amax = vmaxvq_f32(mx);
            const float d = amax / 127.0f, r = d > 0 ? 1.0f / d : 0.0f;
            // a block of subnormals: 1/d overflows; its values round to 0, at every level
            const float inv = isfinite(r) ? r : 0.0f;
            int32x4_t q[8], sum = vdupq_n_s32(0);
            for (int j = 0; j < 8; j++) {
                q[j] = vcvtnq_s32_f32(vmulq_n_f32(vs[j], inv));
                sum = vaddq_s32(sum, q[j]);
            }
            int8_t *dst = xq + (size_t)i * k + 32 * b;
            for (int h = 0; h < 2; h++) {
                const int16x8_t lo = vcombine_s16(vmovn_s32(q[4 * h]), vmovn_s32(q[4 * h + 1]));
                const int16x8_t hi = vcombine_s16(vmovn_s32(q[4 * h + 2]), vmovn_s32(q[4 * h + 3]));
                vst1q_s8(dst + 16 * h, vcombine_s8(vmovn_s16(lo), vmovn_s16(hi)));
            }
            xd[(size_t)i * nb + b] = d;
            xs[(size_t)i * nb + b] = d * (float)vaddvq_s32(sum);
        }
}

// As pack_transposed_q8_avx512, 4 columns at a time (quarter u of a group of 16): one pass over
// the run of 32 rows for the scales, a second to round (32 vectors would not stay in registers).
static void pack_transposed_q8_neon(const float *w, int rows, int cols, void *dst) {
    const int nb = rows / 32;
    uint8_t *out = (uint8_t *)dst;
    const uint32x4_t byte = vdupq_n_u32(0xFF);
    for (int b = 0; b < nb; b++)
        for (int g = 0; g < cols / 16; g++)
            for (int u = 0; u < 4; u++) {
                uint8_t *chunk = out + ((size_t)g * nb + b) * 640;
                const float *src = w + (size_t)(32 * b) * cols + 16 * g + 4 * u;
                float32x4_t amax = vdupq_n_f32(0);
                for (int j = 0; j < 32; j++) amax = vmaxq_f32(amax, vabsq_f32(vld1q_f32(src + (size_t)j * cols)));
                const float32x4_t d = vdivq_f32(amax, vdupq_n_f32(127.0f));
                const uint32x4_t nz = vcgtq_f32(d, vdupq_n_f32(0));
                const float32x4_t inv = vreinterpretq_f32_u32(
                    vandq_u32(vreinterpretq_u32_f32(vdivq_f32(vdupq_n_f32(1.0f), d)), nz));
                int32x4_t sum = vdupq_n_s32(0);
                for (int t = 0; t < 8; t++) {
                    uint32x4_t lanes = vdupq_n_u32(0);
                    for (int c = 0; c < 4; c++) {
                        const int32x4_t q = cvt_like_x86(vmulq_f32(vld1q_f32(src + (size_t)(4 * t + c) * cols), inv));
                        sum = vaddq_s32(sum, q);   // wraps like vpaddd where q is 0x80000000
                        const uint32x4_t qb = vandq_u32(vreinterpretq_u32_s32(q), byte);
                        lanes = vorrq_u32(lanes, vshlq_u32(qb, vdupq_n_s32(8 * c)));
                    }
                    vst1q_u32((uint32_t *)(chunk + 64 * t + 16 * u), lanes);
                }
                vst1q_f32((float *)(chunk + 512 + 16 * u), d);
                vst1q_f32((float *)(chunk + 576 + 16 * u),
                          vmulq_f32(vmulq_f32(vdupq_n_f32(-128.0f), d), vcvtq_f32_s32(sum)));
            }
}

// One group of 16 output rows against R ≤ IK_NEON_ROWS activation rows, a quarter of 4 lanes at
// a time (bytes 16u…16u+15 of each 64-byte vector): 8 weight vectors, R accumulators, the scales
// and the rows' activations and sums fit the 32 q registers. clang interleaves the rows' sdot
// chains, 3 registers a row: at 4 rows its code (-O2, armv8-a) has no spill in linear_neon, at 6
// and 8 it spills and reloads in the block loop (counted in the disassembly; speed never measured:
// no aarch64 hardware here). Lane o of the sum is
//   S(o) = Σ_t dot4(w[t] lane o, x bytes 4t…4t+3),
// the activations' 32 bytes two registers, group t lane t % 4 of register t / 4.
//
// 4-bit weights: q in 0…15 is a valid s8, so sdot's signed product is vpdpbusd's unsigned-by-
// signed one; |S| ≤ 32 · 15 · 128 = 61,440.
// 8-bit weights: the x86 levels sum S = Σ q (x + 128) (the packed offsets c = −128·d·Σq take the
// 128 back out); here S = Σ q·x + 128·Σq, with Σq per lane by sdot against ones, once per block
// for all rows: |Σ q·x| ≤ 32 · 128 · 128 = 524,288, |128·Σq| ≤ 524,288, so every int32 sum is exact
// and equal to vpdpbusd's.
// Then y = fma(cvt(S), d ⊙ xd, acc), fma(m, xs, ·) (Q4) or fma(c, xd, ·) (Q8), + y if
// accumulating: the x86 kernels' float operations in their order.
#define IK_NEON_ROWS 4
#define IK_NEON_DOT8(s, w, x0, x1) do { \
    s = vdotq_laneq_s32(s, w[0], x0, 0); s = vdotq_laneq_s32(s, w[1], x0, 1); \
    s = vdotq_laneq_s32(s, w[2], x0, 2); s = vdotq_laneq_s32(s, w[3], x0, 3); \
    s = vdotq_laneq_s32(s, w[4], x1, 0); s = vdotq_laneq_s32(s, w[5], x1, 1); \
    s = vdotq_laneq_s32(s, w[6], x1, 2); s = vdotq_laneq_s32(s, w[7], x1, 3); } while (0)

static inline __attribute__((always_inline)) IK_NEON
void group_tile_neon(const uint8_t *chunks, int nb, const int8_t *xq, const float *xd, const float *xs, int m,
                     int R, float *y, int ldy, int accumulate) {
    const uint8x16_t lo = vdupq_n_u8(0x0F);
    for (int u = 0; u < 4; u++) {
        float32x4_t acc[IK_NEON_ROWS];
        for (int r = 0; r < R; r++) acc[r] = vdupq_n_f32(0);
        for (int b = 0; b < nb; b++) {
            const uint8_t *c = chunks + (size_t)b * 384;
            if (u == 0) prefetch_ahead(c, 384);
            int8x16_t w[8];
            for (int s = 0; s < 4; s++) {
                const uint8x16_t p = vld1q_u8(c + 64 * s + 16 * u);
                w[2 * s] = vreinterpretq_s8_u8(vandq_u8(p, lo));          // q(o, 8s + c)
                w[2 * s + 1] = vreinterpretq_s8_u8(vshrq_n_u8(p, 4));     // q(o, 8s + 4 + c)
            }
            const float32x4_t d = vld1q_f32((const float *)(c + 256 + 16 * u));
            const float32x4_t mo = vld1q_f32((const float *)(c + 320 + 16 * u));
            for (int r = 0; r < R; r++) {
                const int8_t *xr = xq + ((size_t)b * m + r) * 32;
                const int8x16_t x0 = vld1q_s8(xr), x1 = vld1q_s8(xr + 16);
                int32x4_t s = vdupq_n_s32(0);
                IK_NEON_DOT8(s, w, x0, x1);
                const float dx = xd[(size_t)b * m + r], sx = xs[(size_t)b * m + r];
                acc[r] = vfmaq_f32(acc[r], vcvtq_f32_s32(s), vmulq_n_f32(d, dx));
                acc[r] = vfmaq_f32(acc[r], mo, vdupq_n_f32(sx));
            }
        }
        for (int r = 0; r < R; r++) {
            float *yr = y + (size_t)r * ldy + 4 * u;
            if (accumulate) acc[r] = vaddq_f32(acc[r], vld1q_f32(yr));
            vst1q_f32(yr, acc[r]);
        }
    }
}

static inline __attribute__((always_inline)) IK_NEON
void group_tile_q8_neon(const uint8_t *chunks, int nb, const int8_t *xq, const float *xd, int m,
                        int R, float *y, int ldy, int accumulate) {
    const int8x16_t ones = vdupq_n_s8(1);
    for (int u = 0; u < 4; u++) {
        float32x4_t acc[IK_NEON_ROWS];
        for (int r = 0; r < R; r++) acc[r] = vdupq_n_f32(0);
        for (int b = 0; b < nb; b++) {
            const uint8_t *c = chunks + (size_t)b * 640;
            if (u == 0) prefetch_ahead(c, 640);
            int8x16_t w[8];
            int32x4_t qsum = vdupq_n_s32(0);
            for (int t = 0; t < 8; t++) {
                w[t] = vld1q_s8((const int8_t *)(c + 64 * t + 16 * u));
                qsum = vdotq_s32(qsum, w[t], ones);
            }
            const int32x4_t sum128 = vshlq_n_s32(qsum, 7);
            const float32x4_t d = vld1q_f32((const float *)(c + 512 + 16 * u));
            const float32x4_t co = vld1q_f32((const float *)(c + 576 + 16 * u));
            for (int r = 0; r < R; r++) {
                const int8_t *xr = xq + ((size_t)b * m + r) * 32;
                const int8x16_t x0 = vld1q_s8(xr), x1 = vld1q_s8(xr + 16);
                int32x4_t s = sum128;
                IK_NEON_DOT8(s, w, x0, x1);
                const float32x4_t dx = vdupq_n_f32(xd[(size_t)b * m + r]);
                acc[r] = vfmaq_f32(acc[r], vcvtq_f32_s32(s), vmulq_f32(d, dx));
                acc[r] = vfmaq_f32(acc[r], co, dx);
            }
        }
        for (int r = 0; r < R; r++) {
            float *yr = y + (size_t)r * ldy + 4 * u;
            if (accumulate) acc[r] = vaddq_f32(acc[r], vld1q_f32(yr));
            vst1q_f32(yr, acc[r]);
        }
    }
}

#define IK_NEON_TILE(R) case R: \
    if (kind == IK_Q8) group_tile_q8_neon(chunks, nb, sx + 32 * (size_t)i, st.d + i, m, R, \
                                          y + (size_t)i * ldy + 16 * g, ldy, accumulate); \
    else group_tile_neon(chunks, nb, sx + 32 * (size_t)i, st.d + i, st.s + i, m, R, \
                         y + (size_t)i * ldy + 16 * g, ldy, accumulate); \
    break;

IK_NEON
static void linear_neon(const void *packed, int kind, int k, const int8_t *xq, const float *xd, const float *xs, int m,
                        float *y, int ldy, int g0, int g1, int accumulate) {
    const int nb = k / 32;
    const ik_staged st = stage_rows(xq, xd, xs, m, k, 0);   // x itself: sdot is signed by signed
    const int8_t *sx = (const int8_t *)st.x;
    for (int g = g0; g < g1; g++) {
        const uint8_t *chunks = (const uint8_t *)packed + (size_t)g * nb * chunk_bytes(kind);
        for (int i = 0; i < m; i += IK_NEON_ROWS) {
            switch (m - i < IK_NEON_ROWS ? m - i : IK_NEON_ROWS) {
                IK_NEON_TILE(1) IK_NEON_TILE(2) IK_NEON_TILE(3) IK_NEON_TILE(4)
            }
        }
    }
}
#undef IK_NEON_TILE
#undef IK_NEON_DOT8
#endif

// ---- dispatch: the level ik_level() names ----

void ik_pack_transposed_q8(const float *w, int rows, int cols, void *dst) {
#if defined(__x86_64__)
    const int l = ik_level();
    if (l == IK_AVX512_VNNI) pack_transposed_q8_avx512(w, rows, cols, dst);
    else if (l != IK_NONE) pack_transposed_q8_avx2(w, rows, cols, dst);   // AVX2, AVX-VNNI, twin
#elif defined(__aarch64__)
    if (ik_level() == IK_NEON_DOTPROD) pack_transposed_q8_neon(w, rows, cols, dst);
#else
    (void)w; (void)rows; (void)cols; (void)dst;
#endif
}

void ik_quantize_rows(const float *x, int m, int k, int8_t *xq, float *xd, float *xs) {
#if defined(__x86_64__)
    const int l = ik_level();
    if (l == IK_AVX512_VNNI) quantize_rows_avx512(x, m, k, xq, xd, xs);
    else if (l != IK_NONE) quantize_rows_avx2(x, m, k, xq, xd, xs);   // AVX2, AVX-VNNI, twin
#elif defined(__aarch64__)
    if (ik_level() == IK_NEON_DOTPROD) quantize_rows_neon(x, m, k, xq, xd, xs);
#else
    (void)x; (void)m; (void)k; (void)xq; (void)xd; (void)xs;
#endif
}

void ik_linear(const void *packed, int kind, int k, const int8_t *xq, const float *xd, const float *xs, int m,
               float *y, int ldy, int g0, int g1, int accumulate) {
#if defined(__x86_64__)
    const int l = ik_level();
    if (l == IK_AVX512_VNNI) linear_avx512(packed, kind, k, xq, xd, xs, m, y, ldy, g0, g1, accumulate);
    else if (l == IK_AVX_VNNI) linear_avxvnni(packed, kind, k, xq, xd, xs, m, y, ldy, g0, g1, accumulate);
    else if (l == IK_AVX_VNNI_TWIN) linear_avxvnni_twin(packed, kind, k, xq, xd, xs, m, y, ldy, g0, g1, accumulate);
    else if (l == IK_AVX2_LEVEL) linear_avx2(packed, kind, k, xq, xd, xs, m, y, ldy, g0, g1, accumulate);
#elif defined(__aarch64__)
    if (ik_level() == IK_NEON_DOTPROD) linear_neon(packed, kind, k, xq, xd, xs, m, y, ldy, g0, g1, accumulate);
#else
    (void)packed; (void)kind; (void)k; (void)xq; (void)xd; (void)xs; (void)m; (void)y; (void)ldy; (void)g0; (void)g1;
    (void)accumulate;
#endif
}
