// Integer kernels the Swift engine cannot express: int8 dot products with AVX-512 VNNI (vpdpbusd)
// or AVX2 (vpmaddubsw + vpmaddwd), the level chosen at run time. Both levels read the same packed
// layouts and give bit-identical results. The products and packers are safe to call only when
// ik_available() returns 1; ik_pack_q4/ik_pack_q8 and ik_packed_bytes run anywhere.
#ifndef CKERNELS_H
#define CKERNELS_H
#include <stddef.h>
#include <stdint.h>

/// Kernel levels, lowest first.
enum { IK_NONE = 0, IK_AVX2_LEVEL = 1, IK_AVX512_VNNI = 2 };

/// The highest level this CPU runs: AVX-512 F/BW/VL + VNNI, else AVX2 + FMA, else none.
int ik_cpu_level(void);

/// The level the products use: at first call the CPU's, lowered by $INTERVENE_INT8_KERNELS
/// ("avx2" or "none"; anything else keeps the CPU's), then whatever ik_set_level chose.
int ik_level(void);

/// Uses `wanted`, or the CPU's level if lower; returns the level now in use. Packed weights stay
/// valid across levels (one layout); ik_pack_transposed_q8's copies too.
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
#endif
