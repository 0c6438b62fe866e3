import Engine
import Foundation
import XCTest

/// Builds small GGUF files byte by byte, so the reader's error paths can be exercised.
struct GGUFBuilder {
    var version: UInt32 = 3
    var kv: [(String, UInt32, [UInt8])] = []
    var tensors: [(name: String, dims: [UInt64], type: UInt32, data: [UInt8])] = []
    var alignment = 32

    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    static func str(_ s: String) -> [UInt8] { le(UInt64(s.utf8.count)) + Array(s.utf8) }

    mutating func addString(_ k: String, _ v: String) { kv.append((k, 8, Self.str(v))) }
    mutating func addU32(_ k: String, _ v: UInt32) { kv.append((k, 4, Self.le(v))) }
    mutating func addF32(_ k: String, _ v: Float) { kv.append((k, 6, Self.le(v.bitPattern))) }
    mutating func addStringArray(_ k: String, _ v: [String]) {
        kv.append((k, 9, Self.le(UInt32(8)) + Self.le(UInt64(v.count)) + v.flatMap(Self.str)))
    }

    func bytes() -> [UInt8] {
        var b: [UInt8] = Array("GGUF".utf8) + Self.le(version) + Self.le(UInt64(tensors.count)) + Self.le(UInt64(kv.count))
        for (k, t, v) in kv { b += Self.str(k) + Self.le(t) + v }
        var off: UInt64 = 0
        var offsets: [UInt64] = []
        for t in tensors {
            offsets.append(off)
            off += UInt64((t.data.count + alignment - 1) / alignment * alignment)
        }
        for (t, o) in zip(tensors, offsets) {
            b += Self.str(t.name) + Self.le(UInt32(t.dims.count)) + t.dims.flatMap(Self.le) + Self.le(t.type) + Self.le(o)
        }
        while b.count % alignment != 0 { b.append(0) }
        for t in tensors {
            b += t.data
            while b.count % alignment != 0 { b.append(0) }
        }
        return b
    }

    func write() throws -> String {
        let p = NSTemporaryDirectory() + "gguf-test-\(UUID().uuidString).gguf"
        try Data(bytes()).write(to: URL(fileURLWithPath: p))
        return p
    }
}

final class GGUFTests: XCTestCase {
    func f16(_ x: Float) -> [UInt8] { GGUFBuilder.le(floatToHalf(x)) }

    /// A llama-shaped file of an architecture whose extra scales the engine does not apply
    /// (granite) is refused with the architecture's name, not run silently wrong.
    func testUnsupportedArchitecturesAreRefusedByName() throws {
        for (arch, ok) in [("granite", false), ("phi3", false), ("gemma3", true), ("llama", true)] {
            var g = GGUFBuilder()
            g.addString("general.architecture", arch)
            for (k, v) in [("block_count", 1), ("embedding_length", 4), ("attention.head_count", 2),
                           ("feed_forward_length", 8)] as [(String, UInt32)] { g.addU32("\(arch).\(k)", v) }
            g.tensors.append(("token_embd.weight", [4, 3], 0, [UInt8](repeating: 0, count: 48)))
            let path = try g.write()
            defer { try? FileManager.default.removeItem(atPath: path) }
            let f = try GGUFFile(path: path)
            if ok { XCTAssertNoThrow(try LlamaConfig(gguf: f)); continue }
            XCTAssertThrowsError(try LlamaConfig(gguf: f)) { XCTAssertTrue("\($0)".contains("got \(arch)"), "\($0)") }
        }
    }

    func testMetadataOfEveryKindAndTensorInfos() throws {
        var g = GGUFBuilder()
        g.addString("general.architecture", "llama")
        g.addU32("llama.block_count", 2)
        g.addF32("llama.rope.freq_base", 10000)
        g.addStringArray("tokenizer.ggml.tokens", ["a", "b", "c"])
        g.kv.append(("x.bool", 7, [1]))
        g.kv.append(("x.i64", 11, GGUFBuilder.le(Int64(-5))))
        g.kv.append(("x.f64", 12, GGUFBuilder.le(Double(2.5).bitPattern)))
        g.kv.append(("x.arr.i16", 9, GGUFBuilder.le(UInt32(3)) + GGUFBuilder.le(UInt64(2)) + GGUFBuilder.le(Int16(-1)) + GGUFBuilder.le(Int16(7))))
        g.tensors.append(("w", [4, 2], 0, (0..<8).flatMap { GGUFBuilder.le(Float($0).bitPattern) }))
        let path = try g.write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(try f.string("general.architecture"), "llama")
        XCTAssertEqual(try f.int("llama.block_count"), 2)
        XCTAssertEqual(try f.double("llama.rope.freq_base"), 10000)
        XCTAssertEqual(f.metadata["tokenizer.ggml.tokens"]?.array?.compactMap(\.string), ["a", "b", "c"])
        XCTAssertEqual(f.metadata["x.bool"]?.bool, true)
        XCTAssertEqual(f.metadata["x.i64"]?.int, -5)
        XCTAssertEqual(f.metadata["x.f64"]?.double, 2.5)
        XCTAssertEqual(f.metadata["x.arr.i16"]?.array?.compactMap(\.int), [-1, 7])
        let t = try f.tensor("w")
        XCTAssertEqual(t.dims, [4, 2]); XCTAssertEqual(t.rows, 2); XCTAssertEqual(t.columns, 4)
        XCTAssertEqual(try Dequant.tensor(f, t), (0..<8).map(Float.init))
        XCTAssertEqual(f.dataOffset % 32, 0)
    }

    func testDequantisationOfEachBlockType() throws {
        // Q8_0: d = 0.5, q = -16…15  → x = q/2
        let q8 = f16(0.5) + (0..<32).map { UInt8(bitPattern: Int8($0 - 16)) }
        // Q4_0: d = 2, nibbles: byte j = (j) | (15-j)<<4 → x_j = 2(j−8), x_{j+16} = 2(7−j)
        let q40 = f16(2) + (0..<16).map { UInt8($0) | UInt8(15 - $0) << 4 }
        // Q4_1: d = 0.25, m = -1 → x = 0.25q − 1
        let q41 = f16(0.25) + f16(-1) + (0..<16).map { UInt8($0) | UInt8(15 - $0) << 4 }
        let bf = [Float(1.5), -2, 3.25].flatMap { GGUFBuilder.le(UInt16($0.bitPattern >> 16)) }
        let h = [Float(1.5), -2, 65504, 0.000061035156].flatMap(f16)
        var g = GGUFBuilder()
        g.tensors = [("q8", [32], 8, q8), ("q40", [32], 2, q40), ("q41", [32], 3, q41), ("bf", [3], 30, bf), ("h", [4], 1, h)]
        let path = try g.write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let f = try GGUFFile(path: path)
        XCTAssertEqual(try Dequant.tensor(f, f.tensor("q8")), (0..<32).map { Float($0 - 16) / 2 })
        XCTAssertEqual(try Dequant.tensor(f, f.tensor("q40")), (0..<16).map { Float(2 * ($0 - 8)) } + (0..<16).map { Float(2 * (7 - $0)) })
        XCTAssertEqual(try Dequant.tensor(f, f.tensor("q41")), (0..<16).map { 0.25 * Float($0) - 1 } + (0..<16).map { 0.25 * Float(15 - $0) - 1 })
        XCTAssertEqual(try Dequant.tensor(f, f.tensor("bf")), [1.5, -2, 3.25])
        XCTAssertEqual(try Dequant.tensor(f, f.tensor("h")), [1.5, -2, 65504, 0.000061035156])
    }

    func testHalfConversionRoundTripsEveryFiniteHalf() {
        for bits in UInt16(0)...UInt16.max where (bits & 0x7C00) != 0x7C00 {
            XCTAssertEqual(floatToHalf(halfToFloat(bits)), bits)
        }
    }

    func expectError(_ bytes: [UInt8], _ check: (ModelFileError) -> Bool, file: StaticString = #filePath, line: UInt = #line) throws {
        let p = NSTemporaryDirectory() + "gguf-bad-\(UUID().uuidString).gguf"
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        defer { try? FileManager.default.removeItem(atPath: p) }
        do {
            _ = try GGUFFile(path: p)
            XCTFail("no error for a bad file", file: file, line: line)
        } catch let e as ModelFileError {
            XCTAssertTrue(check(e), "unexpected error: \(e)", file: file, line: line)
            XCTAssertFalse(e.description.isEmpty)
        }
    }

    func testBadFilesGiveClearErrors() throws {
        var g = GGUFBuilder()
        g.addString("general.architecture", "llama")
        g.tensors.append(("w", [32], 8, [UInt8](repeating: 0, count: 34)))
        let good = g.bytes()
        // wrong magic
        try expectError(Array("GGML".utf8) + good.dropFirst(4)) { if case .badMagic = $0 { return true }; return false }
        // unsupported version
        try expectError(Array(good[0..<4]) + GGUFBuilder.le(UInt32(9)) + good.dropFirst(8)) { if case .unsupportedVersion = $0 { return true }; return false }
        // truncated at every length inside the header and in the tensor data
        for cut in [10, 24, 30, 60, good.count - 40] {
            try expectError(Array(good.prefix(cut))) { e in
                if case .truncated = e { return true }; if case .absurd = e { return true }; return false
            }
        }
        // absurd tensor count (2^60) must not allocate
        try expectError(Array(good[0..<8]) + GGUFBuilder.le(UInt64(1) << 60) + good.dropFirst(16)) { if case .absurd = $0 { return true }; return false }
        // absurd string length
        var s = GGUFBuilder(); s.kv.append(("k", 8, GGUFBuilder.le(UInt64.max) + [1, 2, 3]))
        try expectError(s.bytes()) { if case .absurd = $0 { return true }; return false }
        // tensor data offset past the end
        var o = GGUFBuilder(); o.tensors.append(("w", [1 << 20], 0, []))
        try expectError(o.bytes()) { e in
            if case .truncated = e { return true }; if case .absurd = e { return true }; return false
        }
        // unknown tensor type
        var u = GGUFBuilder(); u.tensors.append(("w", [32], 77, [UInt8](repeating: 0, count: 64)))
        try expectError(u.bytes()) { if case let .unsupportedTensorType(t, _) = $0 { return t == "w" }; return false }
    }

    func testUnsupportedQuantTypeNamesTheTensor() throws {
        var g = GGUFBuilder()
        g.tensors.append(("blk.0.ffn_up.weight", [256], 13, [UInt8](repeating: 0, count: 176)))   // Q5_K
        let path = try g.write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let f = try GGUFFile(path: path)
        XCTAssertThrowsError(try Dequant.tensor(f, f.tensor("blk.0.ffn_up.weight"))) { e in
            XCTAssertTrue("\(e)".contains("blk.0.ffn_up.weight") && "\(e)".contains("Q5_K"), "\(e)")
        }
    }

    func testMissingFileAndDirectory() {
        XCTAssertThrowsError(try GGUFFile(path: "/nonexistent/x.gguf")) { XCTAssertTrue("\($0)".contains("/nonexistent/x.gguf")) }
        XCTAssertThrowsError(try GGUFFile(path: NSTemporaryDirectory()))
    }

    func testSHA256() {
        XCTAssertEqual(SHA256.hex(Data()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        // 1,000,000 × "a" (crosses many blocks, and the 56-byte padding boundary)
        XCTAssertEqual(SHA256.hex(Data(repeating: 0x61, count: 1_000_000)), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        XCTAssertEqual(SHA256.hex(Data(repeating: 0x61, count: 55)).count, 64)
    }
}
