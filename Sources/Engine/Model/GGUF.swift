import Foundation

/// Errors from reading a model file. Every case says what was wrong and where.
public enum ModelFileError: Error, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, reason: String)
    case badMagic(path: String, found: String)
    case unsupportedVersion(path: String, version: UInt32)
    case truncated(path: String, what: String, offset: Int)
    case absurd(path: String, what: String)
    case unsupportedTensorType(tensor: String, type: String)
    case missingTensor(String)
    case missingMetadata(String)
    case badMetadata(key: String, expected: String)
    case badShape(tensor: String, expected: [Int], found: [Int])

    public var description: String {
        switch self {
        case let .cannotOpen(p, r): return "cannot open \(p): \(r)"
        case let .badMagic(p, f): return "\(p) is not a GGUF file (magic \(f), expected \"GGUF\")"
        case let .unsupportedVersion(p, v): return "\(p): GGUF version \(v) is not supported (2 and 3 are)"
        case let .truncated(p, w, o): return "\(p) is truncated: \(w) at byte \(o) runs past the end of the file"
        case let .absurd(p, w): return "\(p) is corrupt: \(w)"
        case let .unsupportedTensorType(t, ty): return "tensor \(t) has type \(ty), which this engine cannot dequantise (supported: \(WeightFormat.names))"
        case let .missingTensor(t): return "the model file has no tensor named \(t)"
        case let .missingMetadata(k): return "the model file has no metadata key \(k)"
        case let .badMetadata(k, e): return "metadata \(k) is not \(e)"
        case let .badShape(t, e, f): return "tensor \(t) has shape \(f), expected \(e)"
        }
    }
}

/// A GGUF metadata value (all types of GGUF v2/v3, arrays included).
public indirect enum GGUFValue: Equatable, CustomStringConvertible {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case float32(Float), bool(Bool), string(String), uint64(UInt64), int64(Int64), float64(Double)
    case array([GGUFValue])

    public var int: Int? {
        switch self {
        case let .uint8(v): return Int(v)
        case let .int8(v): return Int(v)
        case let .uint16(v): return Int(v)
        case let .int16(v): return Int(v)
        case let .uint32(v): return Int(v)
        case let .int32(v): return Int(v)
        case let .uint64(v): return v <= UInt64(Int.max) ? Int(v) : nil
        case let .int64(v): return Int(v)
        default: return nil
        }
    }
    public var double: Double? {
        switch self {
        case let .float32(v): return Double(v)
        case let .float64(v): return v
        default: return int.map(Double.init)
        }
    }
    public var string: String? { if case let .string(s) = self { return s } else { return nil } }
    public var bool: Bool? { if case let .bool(b) = self { return b } else { return nil } }
    public var array: [GGUFValue]? { if case let .array(a) = self { return a } else { return nil } }

    public var description: String {
        switch self {
        case let .string(s): return s.count > 60 ? "\"\(s.prefix(60))…\"" : "\"\(s)\""
        case let .array(a): return "[\(a.count) items]"
        case let .bool(b): return "\(b)"
        default: return double.map { "\($0)" } ?? "?"
        }
    }
}

/// ggml tensor element types (the numbering of the GGUF format).
public enum GGMLType: UInt32, CustomStringConvertible, Sendable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22
    case iq4_xs = 23, i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35

    public var description: String {
        let names: [GGMLType: String] = [.f32: "F32", .f16: "F16", .q4_0: "Q4_0", .q4_1: "Q4_1", .q5_0: "Q5_0", .q5_1: "Q5_1",
            .q8_0: "Q8_0", .q8_1: "Q8_1", .q2_K: "Q2_K", .q3_K: "Q3_K", .q4_K: "Q4_K", .q5_K: "Q5_K", .q6_K: "Q6_K",
            .q8_K: "Q8_K", .bf16: "BF16", .i8: "I8", .i16: "I16", .i32: "I32", .i64: "I64", .f64: "F64"]
        return names[self] ?? "type #\(rawValue)"
    }

    /// (elements per block, bytes per block)
    public var blockLayout: (elements: Int, bytes: Int)? {
        switch self {
        case .f32: return (1, 4)
        case .f16, .bf16: return (1, 2)
        case .q4_0: return (32, 18)
        case .q4_1: return (32, 20)
        case .q5_0: return (32, 22)
        case .q5_1: return (32, 24)
        case .q8_0: return (32, 34)
        case .q8_1: return (32, 36)
        case .q2_K: return (256, 84)
        case .q3_K: return (256, 110)
        case .q4_K: return (256, 144)
        case .q5_K: return (256, 176)
        case .q6_K: return (256, 210)
        case .q8_K: return (256, 292)
        case .i8: return (1, 1)
        case .i16: return (1, 2)
        case .i32: return (1, 4)
        case .i64, .f64: return (1, 8)
        default: return nil
        }
    }
}

/// One tensor's header: name, shape (GGUF order: dims[0] is the innermost, contiguous one), type,
/// and where its bytes lie in the file.
public struct GGUFTensorInfo: Sendable {
    public let name: String
    public let dims: [Int]
    public let type: GGMLType
    /// Absolute byte offset in the file.
    public let offset: Int
    public let byteCount: Int
    public var elementCount: Int { dims.reduce(1, *) }
    /// Row-major view: rows × columns, columns = dims[0].
    public var rows: Int { elementCount / max(dims.first ?? 1, 1) }
    public var columns: Int { dims.first ?? 1 }
}

/// A memory-mapped GGUF v2/v3 file: metadata, tensor infos, and the tensor bytes (never copied
/// until dequantised). Every count and offset is checked against the file size before use, so a
/// truncated or corrupt file gives a `ModelFileError`, not a crash or a giant allocation.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    public let tensors: [String: GGUFTensorInfo]
    public let tensorOrder: [String]
    public let alignment: Int
    public let dataOffset: Int
    public let fileSize: Int
    let base: UnsafeRawPointer
    private let mappedLength: Int

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw ModelFileError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ModelFileError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        if (st.st_mode & S_IFMT) == S_IFDIR { throw ModelFileError.cannotOpen(path: path, reason: "is a directory") }
        let size = Int(st.st_size)
        fileSize = size
        guard size >= 24 else {
            throw size >= 4 && Self.magicOK(fd: fd) ? ModelFileError.truncated(path: path, what: "header", offset: 0)
                : ModelFileError.badMagic(path: path, found: Self.magicString(fd: fd))
        }
        guard let m = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else {
            throw ModelFileError.cannotOpen(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(m)
        mappedLength = size
        var r = Reader(base: base, size: size, path: path)
        do {
            let magic = try r.bytes(4, "magic")
            guard magic == [0x47, 0x47, 0x55, 0x46] else {
                throw ModelFileError.badMagic(path: path, found: String(decoding: magic, as: UTF8.self).debugDescription)
            }
            version = try r.u32("version")
            guard version == 2 || version == 3 else { throw ModelFileError.unsupportedVersion(path: path, version: version) }
            let tensorCount = try r.count("tensor count", elementMinBytes: 8 + 4 + 8 + 4 + 8)
            let kvCount = try r.count("metadata count", elementMinBytes: 8 + 4 + 1)
            var md: [String: GGUFValue] = [:]
            var keys: [String] = []
            keys.reserveCapacity(kvCount)
            for _ in 0..<kvCount {
                let key = try r.string("metadata key")
                let type = try r.u32("metadata type of \(key)")
                md[key] = try r.value(type: type, key: key, depth: 0)
                keys.append(key)
            }
            metadata = md
            metadataKeys = keys
            let align = md["general.alignment"]?.int ?? 32
            guard align > 0, align <= 1 << 20, align & (align - 1) == 0 else {
                throw ModelFileError.absurd(path: path, what: "general.alignment \(align) is not a power of two")
            }
            alignment = align
            var infos: [(String, [Int], UInt32, UInt64)] = []
            infos.reserveCapacity(tensorCount)
            for _ in 0..<tensorCount {
                let name = try r.string("tensor name")
                let nd = Int(try r.u32("dimension count of \(name)"))
                guard nd >= 1, nd <= 4 else { throw ModelFileError.absurd(path: path, what: "tensor \(name) has \(nd) dimensions") }
                var dims: [Int] = []
                for _ in 0..<nd {
                    let d = try r.u64("dimension of \(name)")
                    guard d >= 1, d <= UInt64(size) * 2 else { throw ModelFileError.absurd(path: path, what: "tensor \(name) has dimension \(d)") }
                    dims.append(Int(d))
                }
                let type = try r.u32("type of \(name)")
                let off = try r.u64("offset of \(name)")
                infos.append((name, dims, type, off))
            }
            dataOffset = (r.offset + align - 1) / align * align
            var ts: [String: GGUFTensorInfo] = [:]
            var order: [String] = []
            for (name, dims, rawType, off) in infos {
                guard let type = GGMLType(rawValue: rawType) else {
                    throw ModelFileError.unsupportedTensorType(tensor: name, type: "#\(rawType) (unknown)")
                }
                guard let (be, bb) = type.blockLayout else {
                    throw ModelFileError.unsupportedTensorType(tensor: name, type: type.description)
                }
                let (count, ovf) = dims.reduce((1, false)) { acc, d in
                    let (p, o) = acc.0.multipliedReportingOverflow(by: d); return (p, acc.1 || o)
                }
                guard !ovf, count % be == 0 || dims[0] % be == 0 else {
                    throw ModelFileError.absurd(path: path, what: "tensor \(name) has \(count) elements, not whole \(type) blocks")
                }
                let bytes = count / be * bb
                guard off <= UInt64(size), dataOffset + Int(off) + bytes <= size else {
                    throw ModelFileError.truncated(path: path, what: "data of tensor \(name) (\(bytes) bytes)", offset: dataOffset + Int(min(off, UInt64(size))))
                }
                ts[name] = GGUFTensorInfo(name: name, dims: dims, type: type, offset: dataOffset + Int(off), byteCount: bytes)
                order.append(name)
            }
            tensors = ts
            tensorOrder = order
        } catch {
            munmap(UnsafeMutableRawPointer(mutating: base), size)
            throw error
        }
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), mappedLength) }

    /// The raw (still quantised) bytes of a tensor, inside the mapping.
    public func rawBytes(_ info: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + info.offset, count: info.byteCount)
    }

    public func tensor(_ name: String) throws -> GGUFTensorInfo {
        guard let t = tensors[name] else { throw ModelFileError.missingTensor(name) }
        return t
    }

    public func int(_ key: String) throws -> Int {
        guard let v = metadata[key] else { throw ModelFileError.missingMetadata(key) }
        guard let i = v.int else { throw ModelFileError.badMetadata(key: key, expected: "an integer") }
        return i
    }

    public func double(_ key: String) throws -> Double {
        guard let v = metadata[key] else { throw ModelFileError.missingMetadata(key) }
        guard let d = v.double else { throw ModelFileError.badMetadata(key: key, expected: "a number") }
        return d
    }

    public func string(_ key: String) throws -> String {
        guard let v = metadata[key] else { throw ModelFileError.missingMetadata(key) }
        guard let s = v.string else { throw ModelFileError.badMetadata(key: key, expected: "a string") }
        return s
    }

    private static func magicOK(fd: Int32) -> Bool { magicString(fd: fd) == "\"GGUF\"" }
    private static func magicString(fd: Int32) -> String {
        var b = [UInt8](repeating: 0, count: 4)
        let n = pread(fd, &b, 4, 0)
        return String(decoding: b.prefix(max(n, 0)), as: UTF8.self).debugDescription
    }

    /// A bounds-checked little-endian cursor over the mapping.
    struct Reader {
        let base: UnsafeRawPointer
        let size: Int
        let path: String
        var offset = 0

        mutating func need(_ n: Int, _ what: String) throws {
            guard n >= 0, offset <= size, n <= size - offset else {
                throw ModelFileError.truncated(path: path, what: what, offset: offset)
            }
        }
        mutating func bytes(_ n: Int, _ what: String) throws -> [UInt8] {
            try need(n, what)
            defer { offset += n }
            return Array(UnsafeRawBufferPointer(start: base + offset, count: n))
        }
        mutating func load<T: FixedWidthInteger>(_: T.Type, _ what: String) throws -> T {
            try need(MemoryLayout<T>.size, what)
            defer { offset += MemoryLayout<T>.size }
            return T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
        }
        mutating func u32(_ what: String) throws -> UInt32 { try load(UInt32.self, what) }
        mutating func u64(_ what: String) throws -> UInt64 { try load(UInt64.self, what) }
        /// A count of items that each take at least `elementMinBytes`: more than the rest of the
        /// file could hold is corrupt, which bounds every allocation by the file size.
        mutating func count(_ what: String, elementMinBytes: Int) throws -> Int {
            let c = try u64(what)
            guard c <= UInt64((size - offset) / max(elementMinBytes, 1)) else {
                throw ModelFileError.absurd(path: path, what: "\(what) \(c) exceeds what the file can hold")
            }
            return Int(c)
        }
        mutating func string(_ what: String) throws -> String {
            let n = try count("length of \(what)", elementMinBytes: 1)
            try need(n, what)
            defer { offset += n }
            return String(decoding: UnsafeRawBufferPointer(start: base + offset, count: n), as: UTF8.self)
        }
        mutating func value(type: UInt32, key: String, depth: Int) throws -> GGUFValue {
            switch type {
            case 0: return .uint8(try load(UInt8.self, key))
            case 1: return .int8(try load(Int8.self, key))
            case 2: return .uint16(try load(UInt16.self, key))
            case 3: return .int16(try load(Int16.self, key))
            case 4: return .uint32(try load(UInt32.self, key))
            case 5: return .int32(try load(Int32.self, key))
            case 6: return .float32(Float(bitPattern: try load(UInt32.self, key)))
            case 7: return .bool(try load(UInt8.self, key) != 0)
            case 8: return .string(try string(key))
            case 9:
                guard depth < 4 else { throw ModelFileError.absurd(path: path, what: "metadata \(key) nests arrays too deeply") }
                let et = try u32("array type of \(key)")
                let minBytes: Int
                switch et {
                case 0, 1, 7: minBytes = 1
                case 2, 3: minBytes = 2
                case 4, 5, 6: minBytes = 4
                case 8, 10, 11, 12: minBytes = 8
                case 9: minBytes = 12
                default: throw ModelFileError.absurd(path: path, what: "metadata \(key) has array element type \(et)")
                }
                let n = try count("array length of \(key)", elementMinBytes: minBytes)
                var out: [GGUFValue] = []
                out.reserveCapacity(n)
                for _ in 0..<n { out.append(try value(type: et, key: key, depth: depth + 1)) }
                return .array(out)
            case 10: return .uint64(try load(UInt64.self, key))
            case 11: return .int64(try load(Int64.self, key))
            case 12: return .float64(Double(bitPattern: try load(UInt64.self, key)))
            default: throw ModelFileError.absurd(path: path, what: "metadata \(key) has value type \(type)")
            }
        }
    }
}
