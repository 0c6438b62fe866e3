// The 256-bit vpdpbusd products (ik_linear at IK_AVX_VNNI), written once and compiled twice by
// kernels.c, which defines before each #include:
//   IK256_TARGET          the target attribute of every function below
//   IK256_DPBUSD(s, u, w) s + the 4-byte dot products of u (unsigned) and w (signed), per lane
//   IK256_NAME(f)         f's name in this copy
// Copy 1 is the real level: target("avx2,fma,avxvnni") and _mm256_dpbusd_avx_epi32, the VEX
// encoding (Alder Lake and later client CPUs, Zen 5 clients: AVX-VNNI without AVX-512). Copy 2,
// the test-only twin IK_AVX_VNNI_TWIN: target("avx2,fma,avx512vl,avx512vnni") and
// _mm256_dpbusd_epi32, the EVEX encoding of the same 256-bit instruction, which CPUs with AVX-512
// VNNI but no AVX-VNNI (Ice Lake server, Zen 4) run; it exists so that this algorithm is checked
// bit for bit (KernelLevelTests) on such CPUs too, where the VEX copy cannot execute.
//
// The integer sums are vpdpbusd's, exactly as the AVX-512 kernel's (int32 lanes, no saturation),
// and every float operation is the AVX2 kernel's (itself the AVX-512 kernel's lane for lane, in
// the same order): y = fma(cvt(Σ), d ⊙ xd, acc), then fma(m, xs, ·) (Q4) or fma(c, xd, ·) (Q8),
// then + y if accumulating. As at AVX2, a 16-row group is two halves of 8 lanes (bytes 32h…32h+31
// of each 64-byte vector) and a tile at most 4 activation rows: 8 weight vectors, 4 accumulators
// and temporaries fit the 16 ymm registers.
// No include guard: this file is meant to be included more than once.

// 4-bit weights (u8, 0…15) against s8 activations.
static inline __attribute__((always_inline)) IK256_TARGET
void IK256_NAME(group_tile)(const uint8_t *chunks, int nb, const int8_t *xq, const float *xd, const float *xs, int k,
                            int R, float *y, int ldy, int accumulate) {
    const __m256i lo = _mm256_set1_epi8(0x0F);
    for (int h = 0; h < 2; h++) {
        __m256 acc[4];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const uint8_t *c = chunks + (size_t)b * 384;
            __m256i w[8];
            for (int s = 0; s < 4; s++) {
                const __m256i p = _mm256_load_si256((const __m256i *)(c + 64 * s + 32 * h));
                w[2 * s] = _mm256_and_si256(p, lo);
                w[2 * s + 1] = _mm256_and_si256(_mm256_srli_epi16(p, 4), lo);
            }
            const __m256 d = _mm256_load_ps((const float *)(c + 256 + 32 * h));
            const __m256 mo = _mm256_load_ps((const float *)(c + 320 + 32 * h));
            for (int r = 0; r < R; r++) {
                const int32_t *xr = (const int32_t *)(xq + (size_t)r * k + 32 * b);
                __m256i s = _mm256_setzero_si256();
                for (int t = 0; t < 8; t++) s = IK256_DPBUSD(s, w[t], _mm256_set1_epi32(xr[t]));
                const float dx = xd[(size_t)r * (k / 32) + b], sx = xs[(size_t)r * (k / 32) + b];
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, _mm256_set1_ps(dx)), acc[r]);
                acc[r] = _mm256_fmadd_ps(mo, _mm256_set1_ps(sx), acc[r]);
            }
        }
        for (int r = 0; r < R; r++) {
            float *yr = y + (size_t)r * ldy + 8 * h;
            if (accumulate) acc[r] = _mm256_add_ps(acc[r], _mm256_loadu_ps(yr));
            _mm256_storeu_ps(yr, acc[r]);
        }
    }
}

// Signed 8-bit weights: x + 128 (bytes xor 0x80) as the unsigned operand, the weights as the
// signed one, as the AVX-512 kernel; the packed offsets c = −128·d·Σq take the 128 back out.
static inline __attribute__((always_inline)) IK256_TARGET
void IK256_NAME(group_tile_q8)(const uint8_t *chunks, int nb, const int8_t *xq, const float *xd, int k,
                               int R, float *y, int ldy, int accumulate) {
    for (int h = 0; h < 2; h++) {
        __m256 acc[4];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const uint8_t *c = chunks + (size_t)b * 640;
            __m256i w[8];
            for (int t = 0; t < 8; t++) w[t] = _mm256_load_si256((const __m256i *)(c + 64 * t + 32 * h));
            const __m256 d = _mm256_load_ps((const float *)(c + 512 + 32 * h));
            const __m256 co = _mm256_load_ps((const float *)(c + 576 + 32 * h));
            for (int r = 0; r < R; r++) {
                const uint32_t *xr = (const uint32_t *)(xq + (size_t)r * k + 32 * b);
                __m256i s = _mm256_setzero_si256();
                for (int t = 0; t < 8; t++) s = IK256_DPBUSD(s, _mm256_set1_epi32((int)(xr[t] ^ 0x80808080u)), w[t]);
                const __m256 dx = _mm256_set1_ps(xd[(size_t)r * (k / 32) + b]);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, dx), acc[r]);
                acc[r] = _mm256_fmadd_ps(co, dx, acc[r]);
            }
        }
        for (int r = 0; r < R; r++) {
            float *yr = y + (size_t)r * ldy + 8 * h;
            if (accumulate) acc[r] = _mm256_add_ps(acc[r], _mm256_loadu_ps(yr));
            _mm256_storeu_ps(yr, acc[r]);
        }
    }
}

#define IK256_TILE(R) case R: \
    if (kind == IK_Q8) IK256_NAME(group_tile_q8)(chunks, nb, xq + (size_t)i * k, xd + (size_t)i * nb, k, R, \
                                                 y + (size_t)i * ldy + 16 * g, ldy, accumulate); \
    else IK256_NAME(group_tile)(chunks, nb, xq + (size_t)i * k, xd + (size_t)i * nb, xs + (size_t)i * nb, k, R, \
                                y + (size_t)i * ldy + 16 * g, ldy, accumulate); \
    break;

IK256_TARGET
static void IK256_NAME(linear)(const void *packed, int kind, int k, const int8_t *xq, const float *xd, const float *xs,
                               int m, float *y, int ldy, int g0, int g1, int accumulate) {
    const int nb = k / 32;
    for (int g = g0; g < g1; g++) {
        const uint8_t *chunks = (const uint8_t *)packed + (size_t)g * nb * chunk_bytes(kind);
        for (int i = 0; i < m; i += 4) {
            switch (m - i < 4 ? m - i : 4) { IK256_TILE(1) IK256_TILE(2) IK256_TILE(3) IK256_TILE(4) }
        }
    }
}

#undef IK256_TILE
