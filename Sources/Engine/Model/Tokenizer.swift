import Foundation

public enum TokenizerError: Error, CustomStringConvertible {
    case unsupportedModel(String)
    case unsupportedPreTokenizer(String)
    case missingToken(String)
    case badVocabulary(String)

    public var description: String {
        switch self {
        case let .unsupportedModel(m):
            return "tokenizer model \"\(m)\" is not supported (supported: \"gpt2\", byte-level BPE; \"llama\", SentencePiece)"
        case let .unsupportedPreTokenizer(p): return "pre-tokenizer \"\(p)\" is not supported (supported: \(BPETokenizer.PreTokenizer.allCases.map(\.rawValue).joined(separator: ", ")))"
        case let .missingToken(t): return "the vocabulary lacks the byte token \(t)"
        case let .badVocabulary(w): return "bad tokenizer vocabulary: \(w)"
        }
    }
}

/// The tokenizer a GGUF file names in `tokenizer.ggml.model`, built from its metadata
/// (`tokenizer.ggml.tokens`, `.token_type`, and `.merges` + `.pre` or `.scores`). Two algorithms:
///
/// - `gpt2`, byte-level BPE (SmolLM, Llama 3): text → UTF-8 bytes → each byte shown as a
///   printable character (GPT-2's byte-to-unicode table) → pre-tokenised into words by the regex
///   that `pre` names → merges applied in rank order within each word.
/// - `llama`, SentencePiece (Gemma, Llama 1/2): spaces become "▁" (and one is put in front when
///   `add_space_prefix` says so) → one symbol per character → the adjacent pair whose joined text
///   is a token with the highest score is joined, repeatedly (ties: the leftmost) → a symbol that
///   is no token is spelt with its UTF-8 bytes' `<0xNN>` tokens (byte fallback).
///
/// In both, control and user-defined tokens (types 3 and 4; Gemma's "\n" and runs of spaces are
/// user-defined) are matched verbatim in the input first, longest first.
public final class BPETokenizer: @unchecked Sendable {
    /// Pre-tokenisers, by the name GGUF gives them. Each is a hand-written scanner equivalent to
    /// the regular expression quoted in its comment.
    public enum PreTokenizer: String, CaseIterable, Sendable {
        /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
        case gpt2
        /// SmolLM / StarCoder: every digit is its own piece, then the GPT-2 expression.
        case smollm
        /// Llama 3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
        ///           ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
        case llamaBPE = "llama-bpe"

        static func named(_ s: String) throws -> PreTokenizer {
            switch s {
            case "smollm", "starcoder", "refact", "codeshell": return .smollm
            case "gpt2", "gpt-2", "default": return .gpt2
            case "llama-bpe", "llama3", "llama-v3": return .llamaBPE
            default: throw TokenizerError.unsupportedPreTokenizer(s)
            }
        }
    }

    /// Which algorithm `tokenizer.ggml.model` names.
    public enum Algorithm: Sendable, Equatable {
        case byteLevelBPE
        case sentencePiece(addSpacePrefix: Bool)
    }

    public let algorithm: Algorithm
    public let tokens: [String]
    public let tokenTypes: [Int32]
    public let preTokenizer: PreTokenizer
    public let bosID: Int?
    public let eosID: Int?
    public let addBOS: Bool
    public let unknownID: Int32?
    public var vocabSize: Int { tokens.count }

    private let tokenToID: [String: Int32]
    /// (left id, right id) → (rank, merged id)
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    private let byteToID: [Int32]            // 256 entries
    private let idToBytes: [[UInt8]]
    /// Control and user-defined tokens matched verbatim in the input, longest first.
    private let specials: [(text: [UInt8], id: Int32)]
    /// Bytes a special token can start with (the scan for specials looks only there).
    private let specialStarts: Set<UInt8>
    /// SentencePiece: each token's score (higher joins first).
    private let scores: [Float]
    private var cache: [String: [Int32]] = [:]
    private let lock = NSLock()

    /// GPT-2's byte → printable character table.
    static let byteChars: [Character] = {
        var bs = Array(33...126) + Array(161...172) + Array(174...255)
        var cs = bs
        var n = 0
        for b in 0..<256 where !bs.contains(b) { bs.append(b); cs.append(256 + n); n += 1 }
        var table = [Character](repeating: " ", count: 256)
        for (b, c) in zip(bs, cs) { table[b] = Character(Unicode.Scalar(UInt32(c))!) }
        return table
    }()

    public convenience init(gguf: GGUFFile) throws {
        let model = try gguf.string("tokenizer.ggml.model")
        let algorithm: Algorithm
        switch model {
        case "gpt2": algorithm = .byteLevelBPE
        case "llama":
            algorithm = .sentencePiece(addSpacePrefix: gguf.metadata["tokenizer.ggml.add_space_prefix"]?.bool ?? true)
        default: throw TokenizerError.unsupportedModel(model)
        }
        guard let toks = gguf.metadata["tokenizer.ggml.tokens"]?.array else {
            throw ModelFileError.missingMetadata("tokenizer.ggml.tokens")
        }
        let tokens = toks.map { $0.string ?? "" }
        let types = gguf.metadata["tokenizer.ggml.token_type"]?.array?.map { Int32($0.int ?? 1) }
            ?? [Int32](repeating: 1, count: tokens.count)
        let merges = gguf.metadata["tokenizer.ggml.merges"]?.array?.map { $0.string ?? "" } ?? []
        let pre = try PreTokenizer.named(gguf.metadata["tokenizer.ggml.pre"]?.string ?? "gpt2")
        var scores: [Float] = []
        if case .sentencePiece = algorithm {
            guard let sc = gguf.metadata["tokenizer.ggml.scores"]?.array, sc.count == tokens.count else {
                throw ModelFileError.missingMetadata(
                    "tokenizer.ggml.scores (one per token, for a SentencePiece vocabulary)")
            }
            scores = sc.map { Float($0.double ?? -1e30) }
        }
        try self.init(tokens: tokens, tokenTypes: types, merges: merges, preTokenizer: pre,
                      algorithm: algorithm, scores: scores,
                      bosID: gguf.metadata["tokenizer.ggml.bos_token_id"]?.int,
                      eosID: gguf.metadata["tokenizer.ggml.eos_token_id"]?.int,
                      addBOS: gguf.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? false,
                      unknownID: gguf.metadata["tokenizer.ggml.unknown_token_id"]?.int)
    }

    public init(tokens: [String], tokenTypes: [Int32], merges: [String], preTokenizer: PreTokenizer,
                algorithm: Algorithm = .byteLevelBPE, scores: [Float] = [],
                bosID: Int?, eosID: Int?, addBOS: Bool, unknownID: Int? = nil) throws {
        self.unknownID = unknownID.map(Int32.init)
        self.algorithm = algorithm
        if case .sentencePiece = algorithm, scores.count != tokens.count {
            throw TokenizerError.badVocabulary("\(tokens.count) tokens but \(scores.count) scores")
        }
        self.scores = scores
        guard tokenTypes.count == tokens.count else {
            throw TokenizerError.badVocabulary("\(tokens.count) tokens but \(tokenTypes.count) token types")
        }
        self.tokens = tokens
        self.tokenTypes = tokenTypes
        self.preTokenizer = preTokenizer
        self.bosID = bosID
        self.eosID = eosID
        self.addBOS = addBOS
        var t2i: [String: Int32] = [:]
        t2i.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where t2i[t] == nil { t2i[t] = Int32(i) }
        tokenToID = t2i

        var charToByte: [Character: UInt8] = [:]
        for (b, c) in Self.byteChars.enumerated() { charToByte[c] = UInt8(b) }
        var b2i = [Int32](repeating: -1, count: 256)
        // Some vocabularies lack a few control bytes; those become the unknown token (as HF does).
        for b in 0..<256 { b2i[b] = t2i[String(Self.byteChars[b])] ?? -1 }
        byteToID = b2i

        var i2b: [[UInt8]] = []
        i2b.reserveCapacity(tokens.count)
        var sp: [(text: [UInt8], id: Int32)] = []
        for (i, t) in tokens.enumerated() {
            let type = tokenTypes[i]
            if type == 3 || type == 4 {           // control / user-defined: literal text
                i2b.append(Array(t.utf8))
                if !t.isEmpty { sp.append((Array(t.utf8), Int32(i))) }
            } else if case .sentencePiece = algorithm {
                if type == 6, let b = Self.byteToken(t) {  // byte fallback "<0xNN>"
                    i2b.append([b])
                } else {
                    i2b.append(Array(t.replacingOccurrences(of: "▁", with: " ").utf8))
                }
            } else {
                var bytes: [UInt8] = []
                for c in t {
                    if let b = charToByte[c] { bytes.append(b) } else { bytes.append(contentsOf: Array(String(c).utf8)) }
                }
                i2b.append(bytes)
            }
        }
        idToBytes = i2b
        specials = sp.sorted { $0.text.count > $1.text.count }
        specialStarts = Set(sp.map { $0.text[0] })
        var fallback = [Int32](repeating: -1, count: 256)
        if case .sentencePiece = algorithm {
            for (i, t) in tokens.enumerated() where tokenTypes[i] == 6 {
                if let b = Self.byteToken(t), fallback[Int(b)] < 0 { fallback[Int(b)] = Int32(i) }
            }
        }
        byteFallback = fallback

        var m: [UInt64: (rank: Int32, id: Int32)] = [:]
        m.reserveCapacity(merges.count)
        for (rank, line) in merges.enumerated() {
            guard let sp = line.firstIndex(of: " ") else { continue }
            let a = String(line[..<sp]), b = String(line[line.index(after: sp)...])
            guard let ia = t2i[a], let ib = t2i[b], let ij = t2i[a + b] else { continue }
            let key = UInt64(UInt32(bitPattern: ia)) << 32 | UInt64(UInt32(bitPattern: ib))
            if m[key] == nil { m[key] = (Int32(rank), ij) }
        }
        merges_count = merges.count
        self.merges = m
    }
    private let merges_count: Int
    /// SentencePiece: byte → its `<0xNN>` token (−1 when the vocabulary lacks it).
    private let byteFallback: [Int32]

    /// The byte a SentencePiece byte token `<0xNN>` stands for.
    static func byteToken(_ t: String) -> UInt8? {
        guard t.count == 6, t.hasPrefix("<0x"), t.hasSuffix(">") else { return nil }
        return UInt8(t.dropFirst(3).prefix(2), radix: 16)
    }

    /// Is this a control token (e.g. `<|im_end|>`), skipped when decoding for a person?
    public func isControl(_ id: Int) -> Bool { id >= 0 && id < tokenTypes.count && tokenTypes[id] == 3 }

    // MARK: encode

    /// Token ids of `text`. Control/user-defined token texts in the input become their ids when
    /// `parseSpecial` is true (as Hugging Face tokenizers do by default). No BOS is added unless
    /// `addBOS` is set in the file and `bos` is true.
    public func encode(_ text: String, parseSpecial: Bool = true, bos: Bool = true) -> [Int] {
        var out: [Int] = []
        if bos && addBOS, let b = bosID { out.append(b) }
        let bytes = Array(text.utf8)
        var start = 0, i = 0
        func flush(_ end: Int) {
            if end > start { encodeOrdinary(bytes[start..<end], into: &out) }
        }
        if parseSpecial && !specials.isEmpty {
            while i < bytes.count {
                if specialStarts.contains(bytes[i]) {
                    if let s = specials.first(where: { sp in
                        sp.text.count <= bytes.count - i && bytes[i..<(i + sp.text.count)].elementsEqual(sp.text)
                    }) {
                        flush(i)
                        out.append(Int(s.id))
                        i += s.text.count
                        start = i
                        continue
                    }
                }
                i += 1
            }
        }
        flush(bytes.count)
        return out
    }

    private func encodeOrdinary(_ bytes: ArraySlice<UInt8>, into out: inout [Int]) {
        if case .sentencePiece(let prefix) = algorithm {
            var text = String(decoding: bytes, as: UTF8.self)
            if prefix && bytes.startIndex == 0 { text = " " + text }
            out.append(contentsOf: sentencePiece(Array(text.replacingOccurrences(of: " ", with: "▁").unicodeScalars))
                .lazy.map(Int.init))
            return
        }
        let text = String(decoding: bytes, as: UTF8.self)
        let scalars = Array(text.unicodeScalars)
        for piece in preTokenize(scalars) {
            let word = String(String.UnicodeScalarView(scalars[piece]))
            lock.lock()
            let hit = cache[word]
            lock.unlock()
            if let hit { out.append(contentsOf: hit.lazy.map(Int.init)); continue }
            let ids = bpe(Array(word.utf8))
            lock.lock()
            if cache.count > 100_000 { cache.removeAll(keepingCapacity: true) }
            cache[word] = ids
            lock.unlock()
            out.append(contentsOf: ids.lazy.map(Int.init))
        }
    }

    /// Applies the merges to one pre-tokenised word, lowest rank first.
    private func bpe(_ bytes: [UInt8]) -> [Int32] {
        var ids = bytes.map { byteToID[Int($0)] }
        if ids.contains(-1) {
            ids = ids.compactMap { $0 >= 0 ? $0 : unknownID }
        }
        while ids.count > 1 {
            var best: Int32 = .max, at = -1, merged: Int32 = 0
            for j in 0..<(ids.count - 1) {
                let key = UInt64(UInt32(bitPattern: ids[j])) << 32 | UInt64(UInt32(bitPattern: ids[j + 1]))
                if let m = merges[key], m.rank < best { best = m.rank; at = j; merged = m.id }
            }
            if at < 0 { break }
            ids[at] = merged
            ids.remove(at: at + 1)
        }
        return ids
    }

    /// SentencePiece: joins adjacent symbols (initially one per character) best score first,
    /// leftmost on ties, while the joined text is a token; then byte fallback for the rest. A
    /// heap of candidate pairs; a popped pair is stale when either side has changed since.
    private func sentencePiece(_ chars: [Unicode.Scalar]) -> [Int32] {
        let n = chars.count
        guard n > 0 else { return [] }
        // symbol k covers chars[start[k] ..< end[k]]; prev/next link the live ones
        var start = Array(0..<n), end = Array(1...n)
        var prev = Array(-1..<(n - 1)), next = Array(1...n)
        next[n - 1] = -1
        func text(_ a: Int, _ b: Int) -> String { String(String.UnicodeScalarView(chars[a..<b])) }
        struct Pair: Comparable {
            let score: Float, left: Int, right: Int, length: Int, id: Int32
            static func < (x: Pair, y: Pair) -> Bool {  // "comes out first"
                x.score != y.score ? x.score > y.score : x.left < y.left
            }
        }
        var heap = Heap<Pair>()
        func consider(_ l: Int, _ r: Int) {
            guard l >= 0, r >= 0, let id = tokenToID[text(start[l], end[r])], tokenTypes[Int(id)] != 6 else { return }
            heap.push(Pair(score: scores[Int(id)], left: l, right: r, length: end[r] - start[l], id: id))
        }
        for k in 0..<(n - 1) { consider(k, k + 1) }
        var alive = [Bool](repeating: true, count: n)
        while let p = heap.pop() {
            // stale: a side was joined away, or grew since the pair was pushed
            guard alive[p.left], alive[p.right], next[p.left] == p.right,
                  end[p.right] - start[p.left] == p.length else { continue }
            end[p.left] = end[p.right]
            alive[p.right] = false
            next[p.left] = next[p.right]
            if next[p.right] >= 0 { prev[next[p.right]] = p.left }
            consider(prev[p.left], p.left)
            consider(p.left, next[p.left])
        }
        var out: [Int32] = []
        var k = 0
        while k >= 0 {
            let t = text(start[k], end[k])
            if let id = tokenToID[t], tokenTypes[Int(id)] != 6 {
                out.append(id)
            } else {
                for b in t.utf8 {
                    let id = byteFallback[Int(b)]
                    if id >= 0 { out.append(id) } else if let u = unknownID { out.append(u) }
                }
            }
            k = next[k]
        }
        return out
    }

    // MARK: pre-tokenisation

    @inline(__always) static func isL(_ s: Unicode.Scalar) -> Bool {
        if s.isASCII { let v = s.value; return (v >= 65 && v <= 90) || (v >= 97 && v <= 122) }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }
    @inline(__always) static func isN(_ s: Unicode.Scalar) -> Bool {
        if s.isASCII { return s.value >= 48 && s.value <= 57 }
        switch s.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }
    @inline(__always) static func isS(_ s: Unicode.Scalar) -> Bool {
        if s.isASCII { let v = s.value; return v == 32 || (v >= 9 && v <= 13) }
        return s.properties.isWhitespace
    }

    /// Splits `s` into word ranges.
    func preTokenize(_ s: [Unicode.Scalar]) -> [Range<Int>] {
        var out: [Range<Int>] = []
        switch preTokenizer {
        case .gpt2:
            Self.gpt2Split(s, 0..<s.count, into: &out)
        case .smollm:
            var start = 0
            for i in 0..<s.count where Self.isN(s[i]) {
                Self.gpt2Split(s, start..<i, into: &out)
                out.append(i..<(i + 1))
                start = i + 1
            }
            Self.gpt2Split(s, start..<s.count, into: &out)
        case .llamaBPE:
            Self.llama3Split(s, into: &out)
        }
        return out
    }

    static func contraction(_ s: [Unicode.Scalar], _ i: Int, _ end: Int, caseInsensitive: Bool) -> Int? {
        guard s[i] == "'", i + 1 < end else { return nil }
        func low(_ c: Unicode.Scalar) -> Unicode.Scalar {
            caseInsensitive && c.value >= 65 && c.value <= 90 ? Unicode.Scalar(c.value + 32)! : c
        }
        let c1 = low(s[i + 1])
        if c1 == "s" || c1 == "t" || c1 == "m" || c1 == "d" { return i + 2 }
        if i + 2 < end {
            let c2 = low(s[i + 2])
            if (c1 == "r" && c2 == "e") || (c1 == "v" && c2 == "e") || (c1 == "l" && c2 == "l") { return i + 3 }
        }
        return nil
    }

    static func gpt2Split(_ s: [Unicode.Scalar], _ r: Range<Int>, into out: inout [Range<Int>]) {
        var i = r.lowerBound
        let end = r.upperBound
        func run(_ j: Int, _ p: (Unicode.Scalar) -> Bool) -> Int { var k = j; while k < end && p(s[k]) { k += 1 }; return k }
        let other: (Unicode.Scalar) -> Bool = { !isS($0) && !isL($0) && !isN($0) }
        while i < end {
            if let j = contraction(s, i, end, caseInsensitive: false) { out.append(i..<j); i = j; continue }
            let sp = s[i] == " " && i + 1 < end ? 1 : 0
            let c = s[i + sp]
            if isL(c) { let j = run(i + sp, isL); out.append(i..<j); i = j; continue }
            if isN(c) { let j = run(i + sp, isN); out.append(i..<j); i = j; continue }
            if other(c) { let j = run(i + sp, other); out.append(i..<j); i = j; continue }
            // whitespace run: \s+(?!\S) leaves the last one for the next word, else \s+
            let j = run(i, isS)
            if j < end && j - i > 1 { out.append(i..<(j - 1)); i = j - 1 } else { out.append(i..<j); i = j }
        }
    }

    static func llama3Split(_ s: [Unicode.Scalar], into out: inout [Range<Int>]) {
        var i = 0
        let end = s.count
        func run(_ j: Int, _ p: (Unicode.Scalar) -> Bool) -> Int { var k = j; while k < end && p(s[k]) { k += 1 }; return k }
        let isNL: (Unicode.Scalar) -> Bool = { $0 == "\r" || $0 == "\n" }
        let other: (Unicode.Scalar) -> Bool = { !isS($0) && !isL($0) && !isN($0) }
        while i < end {
            if let j = contraction(s, i, end, caseInsensitive: true) { out.append(i..<j); i = j; continue }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if isL(s[i]) { let j = run(i, isL); out.append(i..<j); i = j; continue }
            if !isNL(s[i]) && !isN(s[i]) && i + 1 < end && isL(s[i + 1]) {
                let j = run(i + 1, isL); out.append(i..<j); i = j; continue
            }
            // \p{N}{1,3}
            if isN(s[i]) { var j = i; while j < end && j - i < 3 && isN(s[j]) { j += 1 }; out.append(i..<j); i = j; continue }
            // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
            let sp = s[i] == " " && i + 1 < end ? 1 : 0
            if other(s[i + sp]) {
                var j = run(i + sp, other); j = run(j, isNL); out.append(i..<j); i = j; continue
            }
            // whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+
            let j = run(i, isS)
            if let lastNL = (i..<j).last(where: { isNL(s[$0]) }) { out.append(i..<(lastNL + 1)); i = lastNL + 1; continue }
            if j < end && j - i > 1 { out.append(i..<(j - 1)); i = j - 1 } else { out.append(i..<j); i = j }
        }
    }

    // MARK: decode

    /// The bytes of a token (control tokens give their literal text).
    public func bytes(of id: Int) -> [UInt8] { id >= 0 && id < idToBytes.count ? idToBytes[id] : [] }

    /// Text of `ids`. Invalid UTF-8 (a character split across a cut) becomes U+FFFD.
    public func decode(_ ids: [Int], skipSpecial: Bool = true) -> String {
        var b: [UInt8] = []
        for id in ids where !(skipSpecial && isControl(id)) { b.append(contentsOf: bytes(of: id)) }
        return String(decoding: b, as: UTF8.self)
    }

    /// The vocabulary string of a token as stored (byte-level characters, or SentencePiece's "▁").
    public func piece(_ id: Int) -> String { id >= 0 && id < tokens.count ? tokens[id] : "" }
    public func id(of piece: String) -> Int? { tokenToID[piece].map(Int.init) }
}
