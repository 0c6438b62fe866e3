import Foundation

/// Writes a GGUF v3 file: metadata in the order added, then the tensor headers, then the tensors'
/// bytes, each aligned to `alignment` (the reader's `GGUFFile` and llama.cpp read it). Used to
/// export Δs for llama.cpp (`DeltaExport`) and by the tests to build model files.
public struct GGUFWriter {
    public var metadata: [(key: String, value: GGUFValue)] = []
    /// dims in GGUF order (dims[0] the contiguous one).
    public var tensors: [(name: String, dims: [Int], type: GGMLType, bytes: Data)] = []
    public var alignment = 32

    public init() {}

    public mutating func add(_ key: String, _ value: GGUFValue) { metadata.append((key, value)) }
    public mutating func addTensor(_ name: String, dims: [Int], type: GGMLType, bytes: Data) {
        tensors.append((name, dims, type, bytes))
    }
    public mutating func addTensor(_ name: String, values: [Float]) {
        addTensor(name, dims: [values.count], type: .f32, bytes: values.withUnsafeBytes { Data($0) })
    }

    static func le<T: FixedWidthInteger>(_ v: T, _ out: inout Data) {
        withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
    }
    static func str(_ s: String, _ out: inout Data) {
        le(UInt64(s.utf8.count), &out)
        out.append(contentsOf: Array(s.utf8))
    }

    /// The GGUF type code of a value.
    static func code(_ v: GGUFValue) -> UInt32 {
        switch v {
        case .uint8: return 0
        case .int8: return 1
        case .uint16: return 2
        case .int16: return 3
        case .uint32: return 4
        case .int32: return 5
        case .float32: return 6
        case .bool: return 7
        case .string: return 8
        case .array: return 9
        case .uint64: return 10
        case .int64: return 11
        case .float64: return 12
        }
    }

    static func payload(_ v: GGUFValue, _ out: inout Data) {
        switch v {
        case .uint8(let x): le(x, &out)
        case .int8(let x): le(x, &out)
        case .uint16(let x): le(x, &out)
        case .int16(let x): le(x, &out)
        case .uint32(let x): le(x, &out)
        case .int32(let x): le(x, &out)
        case .float32(let x): le(x.bitPattern, &out)
        case .bool(let x): out.append(x ? 1 : 0)
        case .string(let s): str(s, &out)
        case .uint64(let x): le(x, &out)
        case .int64(let x): le(x, &out)
        case .float64(let x): le(x.bitPattern, &out)
        case .array(let items):
            // an empty array keeps no element type; uint8 reads back as the same empty array
            le(items.first.map(code) ?? 0, &out)
            le(UInt64(items.count), &out)
            for i in items { payload(i, &out) }
        }
    }

    public func data() -> Data {
        var b = Data("GGUF".utf8)
        Self.le(UInt32(3), &b)
        Self.le(UInt64(tensors.count), &b)
        Self.le(UInt64(metadata.count), &b)
        for (k, v) in metadata {
            Self.str(k, &b)
            Self.le(Self.code(v), &b)
            Self.payload(v, &b)
        }
        var offset = 0
        for t in tensors {
            Self.str(t.name, &b)
            Self.le(UInt32(t.dims.count), &b)
            for d in t.dims { Self.le(UInt64(d), &b) }
            Self.le(UInt32(t.type.rawValue), &b)
            Self.le(UInt64(offset), &b)
            offset += (t.bytes.count + alignment - 1) / alignment * alignment
        }
        func pad() { while b.count % alignment != 0 { b.append(0) } }
        pad()
        for t in tensors {
            b.append(t.bytes)
            pad()
        }
        return b
    }

    /// Writes atomically (a temporary file renamed into place): a crash leaves no half file.
    public func write(to path: String) throws {
        try data().write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}
