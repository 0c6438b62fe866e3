// The engine's CPU kernels in C, each level chosen at run time so that the package assumes no CPU
// beyond its architecture's baseline: the int8 products (ik_*, below) and the fp32 few-row
// products (fk_*, at the end).
//
// Integer kernels the Swift engine cannot express: int8 dot products, the level chosen at run
// time: on x86-64 AVX-512 VNNI (512-bit vpdpbusd), AVX-VNNI (256-bit vpdpbusd, VEX-encoded: CPUs
// with AVX-VNNI but no AVX-512, Alder Lake and later clients, Zen 5 clients) or AVX2 (vpmaddubsw +
// vpmaddwd); on aarch64 NEON with the ARMv8.2 dot product (sdot). All levels read the same packed
// layouts and give bit-identical results (Tests/CKernelsCheck/int8_check.c, run by
// cluster/check-aarch64.sh, holds each to one scalar reference). The products and packers are safe
// to call only when ik_available() returns 1; ik_pack_q4/ik_pack_q8 and ik_packed_bytes run
// anywhere.
#ifndef CKERNELS_H
#define CKERNELS_H
#include <stddef.h>
#include <stdint.h>

/// Kernel levels, lowest first. IK_AVX_VNNI_TWIN is for tests only and outside that order: the
/// AVX-VNNI level's source compiled with the EVEX-encoded 256-bit vpdpbusd of AVX-512 VL + VNNI,
/// so that a CPU with AVX-512 VNNI but no AVX-VNNI (which cannot run the VEX encoding) checks
/// the 256-bit algorithm against the other levels. Production code never picks it.
/// IK_NEON_DOTPROD is aarch64's level: NEON with the ARMv8.2 dot product (sdot, FEAT_DotProd;
/// Linux HWCAP_ASIMDDP, macOS hw.optional.arm.FEAT_DotProd). x86 CPUs never run it and aarch64 CPUs
/// run no x86 level; it is numbered above the x86 levels so that asking for it (the default)
/// gives any CPU its best level, and an x86 level asked for on aarch64 gives IK_NONE.
enum { IK_NONE = 0, IK_AVX2_LEVEL = 1, IK_AVX_VNNI = 2, IK_AVX512_VNNI = 3, IK_NEON_DOTPROD = 4,
       IK_AVX_VNNI_TWIN = 64 };

/// 1 when this CPU runs level `level` (any of the above, the twin included), else 0. The levels a
/// CPU runs need not be all those below its best: AVX-512 VNNI CPUs may lack AVX-VNNI (Ice Lake
/// server, Zen 4).
int ik_level_runs(int level);

/// The highest level this CPU runs: AVX-512 F/BW/VL + VNNI, else AVX2 + FMA + AVX-VNNI, else
/// AVX2 + FMA, else none (x86-64); NEON + dot product, else none (aarch64). Never the twin.
int ik_cpu_level(void);

/// The level the products use: at first call the CPU's, lowered by $INTERVENE_INT8_KERNELS
/// ("avx-vnni", "avx2" or "none"; "avx-vnni-twin" for the test-only twin; "neon-dotprod" and
/// anything else keep the CPU's), then whatever ik_set_level chose.
int ik_level(void);

/// Uses `wanted` if the CPU runs it, else the highest level it runs below `wanted` (below the
/// twin: IK_AVX_VNNI, then lower); returns the level now in use. Packed weights stay valid across
/// levels (one layout); ik_pack_transposed_q8's copies too.
int ik_set_level(int wanted);

/// 1 when ik_level() is above IK_NONE (the int8 products can run), else 0.
int ik_available(void);

/// The two packed layouts.
enum { IK_Q4 = 0, IK_Q8 = 1 };

/// Bytes `ik_pack_q4` (kind IK_Q4) or `ik_pack_q8` (IK_Q8) writes for a [rows × cols] matrix
/// (rows % 16 == 0, cols % 32 == 0).
size_t ik_packed_bytes(int kind, int rows, int cols);

/// Repacks a GGUF 4-bit matrix, `row_bytes` bytes per source row, each block of 32 weights
/// `block_bytes` long: f16 d at byte 0, with `has_min` an f16 m at byte 2 (Q4_1; else m = −8·d,
/// Q4_0), the 16 bytes of nibbles at `values_offset` (the layouts are Swift's `PackedKind`),
/// for `ik_linear`: per group of 16 rows and block of 32 columns, 384 bytes: four 64-byte vectors
/// whose byte 4·o + c holds q(o, 8s + c) in its low nibble and q(o, 8s + 4 + c) in its high one
/// (s = 0…3, o the row in the group), then the 16 rows' scales d, then their offsets m
/// (Q4_0: m = −8·d), as fp32. A weight is d·q + m exactly as the GGUF block defines it.
void ik_pack_q4(const void *blocks, size_t row_bytes, int block_bytes, int values_offset, int has_min,
                int rows, int cols, void *dst);

/// Repacks a GGUF Q8_0 matrix for `ik_linear` (kind IK_Q8): per group of 16 rows and block of 32
/// columns, 640 bytes: eight 64-byte vectors whose byte 4·o + c of vector t holds the signed
/// weight q(o, 4t + c), then the scales d and the offsets −128·d·Σ_j q(o, j), as fp32. (The
/// kernel feeds x + 128 as the unsigned operand; the offsets take the 128 back out.)
void ik_pack_q8(const void *blocks, size_t row_bytes, int rows, int cols, void *dst);

/// Packs Wᵀ, for the fp32 matrix W [rows × cols] (rows % 32 == 0, cols % 16 == 0), as an IK_Q8
/// matrix [cols × rows] for `ik_linear`: every 32 consecutive entries of a column of W rounded to
/// int8 with the scale max|w| / 127. `ik_linear` on it computes dy · W (a backward product) with
/// the weights rounded once more, to 8 bits, along the other axis.
void ik_pack_transposed_q8(const float *w, int rows, int cols, void *dst);

/// Rounds x [m × k] (k % 32 == 0) to int8 per block of 32: xq = round(x / d), d = max|x| / 127,
/// xd [m × k/32] = d, xs [m × k/32] = d · Σ xq (the offsets' weight).
void ik_quantize_rows(const float *x, int m, int k, int8_t *xq, float *xd, float *xs);

/// y[i, 16g…16g+15] (+)= Σ_b d_b xd_ib Σ_j q xq + m_b xs_ib (IK_Q4) or Σ_b d_b xd_ib Σ_j q (xq + 128)
/// + c_b xd_ib (IK_Q8) for the row groups [g0, g1) of a packed [n × k] matrix and the m quantised
/// rows: y ≈ x · Wᵀ, with x rounded as above. `ldy` is y's row stride.
void ik_linear(const void *packed, int kind, int k, const int8_t *xq, const float *xd, const float *xs, int m,
               float *y, int ldy, int g0, int g1, int accumulate);

// ---- fp32 products (fp32kernels.c) ----
//
// The few-row products on weights in Swift's packed layout (`PackedWeight`: FK_Q4_1 / FK_Q4_0,
// 64 weights per 48-byte chunk; FK_Q8_0, fp32 d + 32 bytes per 36-byte block), decoded row by row
// to the exact fp32 value of the GGUF block. Two levels: AVX2 + FMA (8-lane vectors, fused
// multiply-adds) and a baseline any CPU runs (SSE2 on x86-64, NEON on aarch64; separate multiply
// and add). The levels sum in the same order (fp32kernels.c says which) and differ only by the
// rounding of the fused multiply-adds. Every function runs at every level.

/// fp32 kernel levels, lowest first.
enum { FK_BASELINE = 0, FK_AVX2 = 1 };

/// The highest fp32 level this CPU runs: AVX2 + FMA, else baseline.
int fk_cpu_level(void);

/// The level the fp32 products use: at first call the CPU's, lowered by $INTERVENE_FP32_KERNELS
/// ("baseline"; anything else keeps the CPU's), then whatever fk_set_level chose.
int fk_level(void);

/// Uses `wanted`, or the CPU's level if lower; returns the level now in use.
int fk_set_level(int wanted);

/// Packed formats.
enum { FK_Q4_1 = 0, FK_Q4_0 = 1, FK_Q8_0 = 2 };

/// Decodes all `k` weights (k % 32 == 0) of one packed row into dst.
void fk_decode_row(int kind, const void *row, int k, float *dst);

/// y[i, r] (+)= x_i · W_r for the weight rows r in [r0, r1) of a packed [n × k] matrix (rows
/// `row_bytes` apart) and the m rows of x [m × k]; y is [m × n].
void fk_linear_rows(int kind, const void *packed, size_t row_bytes, int n, int k, const float *x, int m, float *y,
                    int accumulate, int r0, int r1);

/// out[i, :] += Σ_{r in [r0, r1)} dy[i, r] W_r for dy [m × n]; out is [m × k].
void fk_backward_rows(int kind, const void *packed, size_t row_bytes, int n, int k, const float *dy, int m, float *out,
                      int r0, int r1);

/// The one-pass cross-entropy head's share of vocabulary rows [r0, r1) for h [m × k]: per row i
/// the running max M[i], S[i] = Σ_v exp(z_iv − M[i]) and G[i, :] = Σ_v exp(z_iv − M[i]) W_v,
/// z_iv = h_i · W_v, updated in place (start from M = −∞, S = 0, G = 0).
void fk_head_rows(int kind, const void *packed, size_t row_bytes, int k, const float *h, int m, int r0, int r1,
                  float *M, float *S, float *G);
#endif
