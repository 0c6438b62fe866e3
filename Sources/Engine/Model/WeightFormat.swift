import CKernels

/// Every weight format the engine computes with, in one table: which GGUF type it is, how it
/// decodes to fp32 (`Dequant`), and how the few-row and int8 kernels hold it (`PackedKind`). A
/// GGUF type not listed here is refused at load with an error naming the tensor and the type;
/// nothing falls back to another format. Adding a format is a case here, its decoder in
/// `Dequant`, and (for the fast kernels) a `PackedKind`; the compiler then points at every switch
/// that must learn it (none has a `default`).
///
/// Block layouts (little-endian; the byte counts are GGUF's, `GGMLType.blockLayout`):
///   Q8_0: 34 bytes = f16 d, 32 × int8 q;               x = d·q
///   Q4_0: 18 bytes = f16 d, 16 bytes of nibbles;         x = d·(q − 8)
///   Q4_1: 20 bytes = f16 d, f16 m, 16 bytes of nibbles;  x = d·q + m
///   Q5_0: 22 bytes = f16 d, 4 bytes of fifth bits, 16 bytes of nibbles;  x = d·(q − 16)
/// For the 4- and 5-bit kinds, byte j holds element j in its low nibble and element j+16 in its
/// high one; Q5_0's fifth bit of element i is bit i of its little-endian 32-bit word.
/// The K-quants group 256 elements in a super-block of sub-blocks:
///   Q4_K: 144 bytes = f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) pairs for 8 sub-blocks of
///         32, 128 bytes of nibbles;  x = d·scale_s·q − dmin·min_s
///   Q6_K: 210 bytes = 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales
///         (sub-blocks of 16), f16 d;  x = d·scale_s·(q − 32)
/// (`Dequant` spells out where each element's bits sit.) These three have no few-row or int8
/// layout: their products run in fp32 from the dequantised weights.
public enum WeightFormat: CaseIterable, Sendable {
    case f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q4_K, q6_K

    public init?(_ type: GGMLType) {
        guard let f = Self.allCases.first(where: { $0.ggml == type }) else { return nil }
        self = f
    }

    public var ggml: GGMLType {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q8_0: return .q8_0
        case .q4_0: return .q4_0
        case .q4_1: return .q4_1
        case .q5_0: return .q5_0
        case .q4_K: return .q4_K
        case .q6_K: return .q6_K
        }
    }

    /// How the few-row kernels hold this format; nil = only dequantised fp32 (OpenBLAS).
    public var packed: PackedKind? {
        switch self {
        case .f32, .f16, .bf16, .q5_0, .q4_K, .q6_K: return nil
        case .q8_0: return .q8_0
        case .q4_0: return .q4_0
        case .q4_1: return .q4_1
        }
    }

    /// "F32, F16, BF16, Q8_0, Q4_0, Q4_1, …", for error messages.
    public static var names: String { allCases.map(\.ggml.description).joined(separator: ", ") }

    /// The format of a tensor, or the error that names it.
    public static func of(_ info: GGUFTensorInfo) throws -> WeightFormat {
        guard let f = WeightFormat(info.type) else {
            throw ModelFileError.unsupportedTensorType(tensor: info.name, type: info.type.description)
        }
        return f
    }
}

/// The block formats the few-row kernels decode in registers (after `PackedWeight` repacks them)
/// and the int8 kernels multiply with integer dot products.
public enum PackedKind: Sendable {
    case q8_0, q4_0, q4_1

    /// GGUF block: bytes, and the offset of the quantised values (after d, and m for Q4_1).
    var blockBytes: Int { self == .q8_0 ? 34 : self == .q4_1 ? 20 : 18 }
    var valuesOffset: Int { self == .q4_1 ? 4 : 2 }
    /// Bytes per packed row of `blocks` GGUF blocks (Q8_0: fp32 d + 32 bytes per block; the
    /// 4-bit kinds: 48 bytes per two blocks).
    func packedRowBytes(blocks: Int) -> Int { self == .q8_0 ? blocks * 36 : (blocks + 1) / 2 * 48 }
    /// The int8 kernel's layout (`ckernels.h`): 8-bit values, or 4-bit values with an offset.
    var int8Kind: Int32 { self == .q8_0 ? Int32(IK_Q8) : Int32(IK_Q4) }
    /// The fp32 kernels' name for it (`fk_*` in `ckernels.h`).
    var fp32Kind: Int32 {
        switch self {
        case .q4_1: return Int32(FK_Q4_1)
        case .q4_0: return Int32(FK_Q4_0)
        case .q8_0: return Int32(FK_Q8_0)
        }
    }
}
