// The 256-bit int8 products (ik_linear at IK_AVX2_LEVEL, IK_AVX_VNNI and the test-only
// IK_AVX_VNNI_TWIN), written once and compiled once per level by kernels.c, which defines
// before each #include:
//   IK256_TARGET          the target attribute of every function below
//   IK256_NAME(f)         f's name in this copy
//   IK256_Q4_SUM(w, xr)   the int32 lanes Σ_t dot4(w[t], x) of one block of 4-bit weights (u8)
//                         against the row's 32 activations xr (8 × 4 bytes, s8)
//   IK256_Q8_PREP(w)      statements run once per block of 8-bit weights (locals for the next)
//   IK256_Q8_SUM(w, xr)   the int32 lanes Σ_t dot4(w[t], x + 128) of one block of 8-bit weights
// Each level's sums are vpdpbusd's exactly (see kernels.c); every float operation is the AVX-512
// kernel's lane for lane in the same order: y = fma(cvt(Σ), d ⊙ xd, acc), then fma(m, xs, ·)
// (Q4) or fma(c, xd, ·) (Q8), then + y if accumulating. A 16-row group is two halves of 8 lanes
// (bytes 32h…32h+31 of each 64-byte vector) and a tile at most 4 activation rows: 8 weight
// vectors, 4 accumulators and temporaries fit the 16 ymm registers.
// No include guard: this file is meant to be included more than once.

// 4-bit weights (u8, 0…15) against s8 activations.
static inline __attribute__((always_inline)) IK256_TARGET
void IK256_NAME(group_tile)(const uint8_t *chunks, int nb, const uint8_t *xq, const float *xd, const float *xs, int m,
                            int R, float *y, int ldy, int accumulate) {
    const __m256i lo = _mm256_set1_epi8(0x0F);
    for (int h = 0; h < 2; h++) {
        __m256 acc[4];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const uint8_t *c = chunks + (size_t)b * 384;
            if (h == 0) prefetch_ahead(c, 384);
            __m256i w[8];
            for (int s = 0; s < 4; s++) {
                const __m256i p = _mm256_load_si256((const __m256i *)(c + 64 * s + 32 * h));
                w[2 * s] = _mm256_and_si256(p, lo);
                w[2 * s + 1] = _mm256_and_si256(_mm256_srli_epi16(p, 4), lo);
            }
            const __m256 d = _mm256_load_ps((const float *)(c + 256 + 32 * h));
            const __m256 mo = _mm256_load_ps((const float *)(c + 320 + 32 * h));
            for (int r = 0; r < R; r++) {
                const int32_t *xr = (const int32_t *)(xq + ((size_t)b * m + r) * 32);
                const __m256i s = IK256_Q4_SUM(w, xr);
                const float dx = xd[(size_t)b * m + r], sx = xs[(size_t)b * m + r];
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

// Signed 8-bit weights; the packed offsets c = −128·d·Σq take the 128 back out.
static inline __attribute__((always_inline)) IK256_TARGET
void IK256_NAME(group_tile_q8)(const uint8_t *chunks, int nb, const uint8_t *xq, const float *xd, int m,
                               int R, float *y, int ldy, int accumulate) {
    for (int h = 0; h < 2; h++) {
        __m256 acc[4];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const uint8_t *c = chunks + (size_t)b * 640;
            if (h == 0) prefetch_ahead(c, 640);
            __m256i w[8];
            for (int t = 0; t < 8; t++) w[t] = _mm256_load_si256((const __m256i *)(c + 64 * t + 32 * h));
            IK256_Q8_PREP(w)
            const __m256 d = _mm256_load_ps((const float *)(c + 512 + 32 * h));
            const __m256 co = _mm256_load_ps((const float *)(c + 576 + 32 * h));
            for (int r = 0; r < R; r++) {
                const int32_t *xr = (const int32_t *)(xq + ((size_t)b * m + r) * 32);
                const __m256i s = IK256_Q8_SUM(w, xr);
                const __m256 dx = _mm256_set1_ps(xd[(size_t)b * m + r]);
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
    if (kind == IK_Q8) IK256_NAME(group_tile_q8)(chunks, nb, st.x + 32 * (size_t)i, st.d + i, m, R, \
                                                 y + (size_t)i * ldy + 16 * g, ldy, accumulate); \
    else IK256_NAME(group_tile)(chunks, nb, st.x + 32 * (size_t)i, st.d + i, st.s + i, m, R, \
                                y + (size_t)i * ldy + 16 * g, ldy, accumulate); \
    break;

IK256_TARGET
static void IK256_NAME(linear)(const void *packed, int kind, int k, const int8_t *xq, const float *xd, const float *xs,
                               int m, float *y, int ldy, int g0, int g1, int accumulate) {
    const int nb = k / 32;
    const ik_staged st = stage_rows(xq, xd, xs, m, k, kind == IK_Q8 ? IK256_Q8_FLIP : 0);
    for (int g = g0; g < g1; g++) {
        const uint8_t *chunks = (const uint8_t *)packed + (size_t)g * nb * chunk_bytes(kind);
        for (int i = 0; i < m; i += 4) {
            switch (m - i < 4 ? m - i : 4) { IK256_TILE(1) IK256_TILE(2) IK256_TILE(3) IK256_TILE(4) }
        }
    }
}

#undef IK256_TILE
