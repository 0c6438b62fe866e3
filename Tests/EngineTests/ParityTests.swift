import Engine
import Foundation
import XCTest

/// The Swift engine against ../shared/reference/parity.json, written by an independent
/// PyTorch implementation that dequantised the same GGUF to fp32.
final class ParityTests: XCTestCase {
    struct Prompt { let text: String; let ids: [Int]; let top: [Int]; let logits: [Double]; let greedy: [Int]; let json: [String: Any] }

    func prompts() throws -> [Prompt] {
        let root = try loadJSON(TestPaths.parity) as! [String: Any]
        return (root["prompts"] as! [[String: Any]]).map { p in
            let t = p["top5_last"] as! [String: Any]
            return Prompt(text: p["text"] as! String, ids: p["token_ids"] as! [Int], top: t["ids"] as! [Int],
                          logits: t["logits"] as! [Double], greedy: p["greedy8_ids"] as! [Int], json: p)
        }
    }

    func testModelHyperparametersFromMetadata() throws {
        let lm = try SharedModel.get()
        let root = try loadJSON(TestPaths.parity) as! [String: Any]
        let m = root["model"] as! [String: Any]
        XCTAssertEqual(lm.config.nLayers, m["num_hidden_layers"] as? Int)
        XCTAssertEqual(lm.config.nHeads, m["num_attention_heads"] as? Int)
        XCTAssertEqual(lm.config.nKVHeads, m["num_key_value_heads"] as? Int)
        XCTAssertEqual(lm.config.headDim, m["head_dim"] as? Int)
        XCTAssertEqual(lm.config.dModel, m["hidden_size"] as? Int)
        XCTAssertEqual(lm.config.ffnDim, m["intermediate_size"] as? Int)
        XCTAssertEqual(lm.config.vocabSize, m["vocab_size"] as? Int)
        XCTAssertEqual(Double(lm.config.ropeTheta), m["rope_theta"] as! Double, accuracy: 1e-3)
        XCTAssertTrue(lm.config.tiedEmbeddings)
        XCTAssertEqual(try lm.sha256(), m["sha256"] as? String)
    }

    func testTokenIDs() throws {
        let lm = try SharedModel.get()
        for p in try prompts() {
            XCTAssertEqual(lm.tokenizer.encode(p.text), p.ids, "prompt \(p.text.debugDescription)")
            XCTAssertEqual(lm.tokenizer.decode(p.ids), p.text)
        }
    }

    func testTop5LogitsAndGreedy() throws {
        let lm = try SharedModel.get()
        let ps = try prompts()
        // All prompts in ONE batch (ragged lengths, no padding) must equal the per-prompt reference.
        let caches = ps.map { lm.model.makeCache(capacity: $0.ids.count + 1) }
        let logits = lm.model.forward(tokens: ps.map(\.ids), caches: caches)
        let V = lm.config.vocabSize
        for (i, p) in ps.enumerated() {
            let row = Array(logits[(i * V)..<((i + 1) * V)])
            let top = row.indices.sorted { row[$0] > row[$1] }.prefix(5)
            XCTAssertEqual(Array(top), p.top, "top-5 ids of \(p.text.debugDescription)")
            for (id, want) in zip(p.top, p.logits) {
                XCTAssertEqual(Double(row[id]), want, accuracy: 2e-3, "logit of \(id) for \(p.text.debugDescription)")
            }
        }
        let gen = lm.generate(prompts: ps.map(\.ids), stop: StopRules(maxNewTokens: 8, atNewline: false, atEOS: false))
        for (i, p) in ps.enumerated() {
            XCTAssertEqual(gen.tokens[i], p.greedy, "greedy continuation of \(p.text.debugDescription)")
        }
    }

    final class NormProbe: ForwardHooks {
        var norms: [Double] = []
        func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
            let r = layout.lastRow(0), D = 576
            norms.append(Double(Ops.sumSquares(x + r * D, D)).squareRoot())
        }
        func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
    }

    func testResidualNormsPerLayer() throws {
        let lm = try SharedModel.get()
        let p = try prompts()[0]
        let want = p.json["residual_norm_last_pos_by_layer_input"] as! [Double]
        let probe = NormProbe()
        _ = lm.model.forward(tokens: [p.ids], caches: [lm.model.makeCache(capacity: 4)], hooks: probe)
        XCTAssertEqual(probe.norms.count, want.count + 1)
        for (l, w) in want.enumerated() { XCTAssertEqual(probe.norms[l], w, accuracy: 1e-3 * max(1, w), "layer \(l)") }
        let fin = (p.json["final_hidden_norm_last_pos"] as! [String: Double])["before_final_rmsnorm"]!
        XCTAssertEqual(probe.norms.last!, fin, accuracy: 1e-3 * fin)
    }

    /// Δ added to layer 4's o_proj input at the last position (formula from parity.json).
    final class AddDelta: ForwardHooks {
        let layer: Int; let delta: [Float]
        init(layer: Int, delta: [Float]) { self.layer = layer; self.delta = delta }
        func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
        func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
            guard layer == self.layer else { return }
            for s in 0..<layout.rowCount.count {
                delta.withUnsafeBufferPointer { Ops.add($0.baseAddress!, into: o + layout.lastRow(s) * delta.count, delta.count) }
            }
        }
    }

    func testInterventionLogits() throws {
        let lm = try SharedModel.get()
        let root = try loadJSON(TestPaths.parity) as! [String: Any]
        let iv = root["intervention"] as! [String: Any]
        let t = iv["top5_last"] as! [String: Any]
        let delta = (0..<lm.config.attnDim).map { Float(($0 % 7) - 3) * 0.1 }
        let ids = lm.tokenizer.encode(iv["prompt"] as! String)
        let logits = lm.model.forward(tokens: [ids], caches: [lm.model.makeCache(capacity: 4)],
                                      hooks: AddDelta(layer: iv["layer"] as! Int, delta: delta))
        let top = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(5)
        XCTAssertEqual(Array(top), t["ids"] as! [Int])
        for (id, w) in zip(t["ids"] as! [Int], t["logits"] as! [Double]) { XCTAssertEqual(Double(logits[id]), w, accuracy: 2e-3) }
    }
}

/// The committed reference outputs must be the ones in ../shared (where that exists): a fixture
/// that drifted from the reference would make parity tests pass against the wrong numbers.
final class ReferenceFixtureTests: XCTestCase {
    func testCommittedParityFixtureEqualsTheSharedReference() throws {
        let shared = try TestPaths.sharedFile("reference/parity.json")
        XCTAssertEqual(try Data(contentsOf: TestPaths.parity), try Data(contentsOf: shared))
    }
}
