import Engine
import Foundation
import XCTest

extension TestPaths {
    /// ../shared/reference/parity_gemma3.json (transformers' GGUF loader, fp32), committed.
    static let parityGemma3: URL = packageRoot.appendingPathComponent("Tests/EngineTests/Fixtures/parity-gemma3.json")
    /// Random GGUF blocks and the values the `gguf` Python package decodes them to
    /// (Fixtures/make_dequant_blocks.py).
    static let dequantBlocks: URL = packageRoot.appendingPathComponent("Tests/EngineTests/Fixtures/dequant-blocks.json")
}

/// Gemma 3 270M, the second family, loaded once per test process.
enum SharedGemma {
    static let result: Result<LanguageModel, Error> = Result {
        try LanguageModel("gemma3-270m", backend: CPUBackend(threads: 1), threads: 2)
    }
    static func get() throws -> LanguageModel {
        switch result {
        case let .success(m): return m
        case let .failure(e): XCTFail("Gemma 3 270M is needed (run cluster/setup.sh): \(e)"); throw e
        }
    }
}

final class GemmaTests: XCTestCase {
    // MARK: the new weight formats

    /// Every block format against an independent decoder (the `gguf` package's numpy one).
    func testDequantisationMatchesAnIndependentDecoder() throws {
        let root = try loadJSON(TestPaths.dequantBlocks) as! [String: Any]
        var seen: Set<String> = []
        for b in root["blocks"] as! [[String: Any]] {
            let name = b["format"] as! String
            let format = try XCTUnwrap(WeightFormat.allCases.first { $0.ggml.description == name }, name)
            let hex = Array((b["hex"] as! String).utf8)
            let bytes = stride(from: 0, to: hex.count, by: 2).map {
                UInt8(String(decoding: hex[$0..<$0 + 2], as: UTF8.self), radix: 16)!
            }
            let (be, bb) = format.ggml.blockLayout!
            let want = b["values"] as! [Double]
            XCTAssertEqual(bytes.count / bb * be, want.count, name)
            var got = [Float](repeating: .nan, count: want.count)
            bytes.withUnsafeBytes { src in
                got.withUnsafeMutableBufferPointer {
                    Dequant.run(format, src.baseAddress!, $0.baseAddress!, count: want.count)
                }
            }
            for (i, (g, w)) in zip(got, want).enumerated() {
                XCTAssertEqual(Double(g), w, accuracy: 1e-6 * max(1, abs(w)), "\(name) element \(i)")
            }
            seen.insert(name)
        }
        XCTAssertTrue(seen.isSuperset(of: ["Q5_0", "Q4_K", "Q6_K"]), "the fixture covers \(seen)")
    }

    // MARK: the reference's outputs

    struct Prompt { let text: String; let ids: [Int]; let top: [Int]; let logits: [Double]; let greedy: [Int] }

    func prompts() throws -> [Prompt] {
        let root = try loadJSON(TestPaths.parityGemma3) as! [String: Any]
        return (root["prompts"] as! [[String: Any]]).map { p in
            Prompt(text: p["text"] as! String, ids: p["token_ids"] as! [Int], top: p["top5_ids"] as! [Int],
                   logits: p["top5_logits"] as! [Double], greedy: p["greedy8_ids"] as! [Int])
        }
    }

    func testConfigurationFromMetadata() throws {
        let lm = try SharedGemma.get()
        let root = try loadJSON(TestPaths.parityGemma3) as! [String: Any]
        let m = root["model"] as! [String: Any]
        let c = lm.config
        XCTAssertEqual(try lm.sha256(), m["sha256"] as? String)
        XCTAssertEqual(c.architecture, "gemma3")
        XCTAssertEqual([c.nLayers, c.dModel, c.nHeads, c.nKVHeads, c.headDim, c.ffnDim, c.vocabSize],
                       [18, 640, 4, 1, 256, 2048, 262_144])
        XCTAssertTrue(c.tiedEmbeddings && c.postNorms && c.qkNorm)
        XCTAssertEqual(c.activation, .geluTanh)
        XCTAssertEqual(c.ropePairs, .halves)
        XCTAssertEqual(c.attentionScale, 1 / 16, accuracy: 1e-7)
        let types = (m["layer_types"] as! [String]).map { $0 == "sliding_attention" }
        XCTAssertEqual((0..<c.nLayers).map { c.window(layer: $0) != nil }, types)
        XCTAssertEqual(c.window(layer: 0), m["sliding_window"] as? Int)
        XCTAssertEqual(c.ropeBase(layer: 0), 10_000)
        XCTAssertEqual(c.ropeBase(layer: 5), 1_000_000)
    }

    /// SentencePiece with scores, byte fallback, user-defined "\n" tokens and the BOS the file asks for.
    func testTokenIDs() throws {
        let lm = try SharedGemma.get()
        guard case .sentencePiece(addSpacePrefix: false) = lm.tokenizer.algorithm else {
            return XCTFail("expected SentencePiece without a space prefix, got \(lm.tokenizer.algorithm)")
        }
        for p in try prompts() {
            XCTAssertEqual(lm.tokenizer.encode(p.text), p.ids, "prompt \(p.text.debugDescription)")
            XCTAssertEqual(lm.tokenizer.decode(p.ids), p.text)
        }
        // byte fallback: a character with no token of its own is spelt with <0xNN> tokens, and decodes back
        let odd = "\u{10FFFD}"
        let ids = lm.tokenizer.encode(odd, bos: false)
        XCTAssertEqual(ids.map { lm.tokenizer.piece($0) }, ["<0xF4>", "<0x8F>", "<0xBF>", "<0xBD>"])
        XCTAssertEqual(lm.tokenizer.decode(ids), odd)
    }

    func testTop5LogitsAndGreedy() throws {
        let lm = try SharedGemma.get()
        let ps = try prompts()
        let caches = ps.map { lm.model.makeCache(capacity: $0.ids.count + 1) }
        let logits = lm.model.forward(tokens: ps.map(\.ids), caches: caches)
        let V = lm.config.vocabSize
        var worst = 0.0
        for (i, p) in ps.enumerated() {
            let row = Array(logits[(i * V)..<((i + 1) * V)])
            let top = row.indices.sorted { row[$0] > row[$1] }.prefix(5)
            XCTAssertEqual(Array(top), p.top, "top-5 ids of \(p.text.debugDescription)")
            for (id, want) in zip(p.top, p.logits) {
                XCTAssertEqual(Double(row[id]), want, accuracy: 5e-3, "logit of \(id) for \(p.text.debugDescription)")
                worst = max(worst, abs(Double(row[id]) - want))
            }
        }
        print("Gemma 3 parity: largest top-5 logit difference \(worst)")
        let gen = lm.generate(prompts: ps.map(\.ids), stop: StopRules(maxNewTokens: 8, atNewline: false, atEOS: false))
        for (i, p) in ps.enumerated() {
            XCTAssertEqual(gen.tokens[i], p.greedy, "greedy continuation of \(p.text.debugDescription)")
        }
    }

    // MARK: the intervention on this block

    func batch(_ lm: LanguageModel) -> (prompts: [[Int]], targets: [Int]) {
        let pairs = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad")]
        return (pairs.map { lm.tokenizer.encode("The opposite of \($0.0) is") },
                pairs.map { lm.tokenizer.encode(" " + $0.1, bos: false)[0] })
    }

    /// The single-token path (post-norms, q/k norms, GeGLU, both RoPE bases) equals a whole
    /// forward with Δ hooked in, at a sliding layer, a global one and the last.
    func testPathLogitsEqualFullForwardWithDelta() throws {
        let lm = try SharedGemma.get()
        assertPathEqualsFullForward(lm, prompts: batch(lm).prompts, layers: [0, 5, 17], tolerance: 5e-3)
    }

    /// Central differences on random coordinates at a random Δ, at three layers.
    func testGradientAgainstFiniteDifferences() throws {
        let lm = try SharedGemma.get()
        let (prompts, targets) = batch(lm)
        let A = lm.config.attnDim
        var rng = SplitMix64(seed: 11)
        for layer in [2, 5, 12] {
            let path = InterventionPath(model: lm, layer: layer, prompts: prompts)
            let delta = (0..<A).map { _ in Float(rng.uniform() - 0.5) }
            let loss = TaskLoss.nextToken(targets: targets)
            let (_, grad) = path.lossAndGradient(delta: delta, loss: loss)
            let picks = (0..<16).map { _ in Int(rng.next() % UInt64(A)) }
            let (worst, _) = centralDifferences(at: delta, grad: grad, picks: picks, eps: { _ in 2e-2 }) {
                path.loss(delta: $0, loss: loss)
            }
            XCTAssertLessThan(worst, 0.02, "layer \(layer)")
        }
    }
}
