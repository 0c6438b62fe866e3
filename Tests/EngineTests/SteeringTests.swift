import Engine
import Foundation
import JobCore
import XCTest

/// Using a learned Δ: steered generation (`worker generate`) against the evaluation's own path,
/// composition, the load checks and sampling.
final class SteeringTests: XCTestCase {
    func artefact(_ lm: LanguageModel, delta: [Float], layer: Int = 4, sha: String? = nil, heads: Int? = nil,
                  positions: String = "last") throws -> DeltaArtefact {
        var md = DeltaMetadata(
            model: lm.name, modelSHA256: try sha ?? lm.sha256(), task: "t", method: "intervention", layer: layer,
            heads: heads ?? lm.config.nHeads, headDim: lm.config.headDim, seed: 0, lambda: 0.01, gamma: 0.01, steps: 1,
            lr: 0.1, solver: "adam", precision: "fp32", trainSize: 10, finalLoss: 0)
        md.positions = positions
        return DeltaArtefact(delta: delta, metadata: md)
    }

    func testSteeredGreedyGenerationIsTheEvaluationsPath() throws {
        let lm = try SharedModel.get()
        let (prompts, _, _) = try trainingBatch(lm)
        let delta = (0..<lm.config.attnDim).map { Float(($0 % 7) - 3) * 0.4 }
        let stop = StopRules(maxNewTokens: 6, atNewline: false)
        let evaluation = lm.generate(prompts: prompts, variants: [delta], layer: 4, stop: stop)[0]
        let s = try Steering(artefacts: [("d", try artefact(lm, delta: delta))], model: lm)
        let steered = lm.generate(prompts: prompts, steering: s, sampling: .greedy, stop: stop)
        XCTAssertEqual(steered.tokens, evaluation.tokens)
        let plain = lm.generate(prompts: prompts, stop: stop)
        XCTAssertNotEqual(steered.tokens, plain.tokens, "Δ must change something, else this checks nothing")

        // two halves on one layer add up to the whole; scale 0.5 of twice Δ is Δ
        let half = delta.map { $0 / 2 }
        let two = try Steering(artefacts: [("a", try artefact(lm, delta: half)), ("b", try artefact(lm, delta: half))], model: lm)
        XCTAssertEqual(lm.generate(prompts: prompts, steering: two, sampling: .greedy, stop: stop).tokens, evaluation.tokens)
        let scaled = try Steering(artefacts: [("x", try artefact(lm, delta: delta.map { $0 * 2 }))], model: lm, scale: 0.5)
        XCTAssertEqual(scaled.byLayer[4], delta)

        // other positions change the continuation (Δ is also added where generated tokens are read)
        let all = try Steering(artefacts: [("d", try artefact(lm, delta: delta))], model: lm, positions: .all)
        XCTAssertNotEqual(lm.generate(prompts: prompts, steering: all, sampling: .greedy, stop: stop).tokens, steered.tokens)
    }

    func testLoadChecksNameTheArtefactAndTheModel() throws {
        let lm = try SharedModel.get()
        let d = [Float](repeating: 0.1, count: lm.config.attnDim)
        func message(_ a: DeltaArtefact) -> String {
            do {
                _ = try Steering(artefacts: [("my.safetensors", a)], model: lm)
                return ""
            } catch { return "\(error)" }
        }
        let sha = String(repeating: "ab", count: 32)
        let m1 = message(try artefact(lm, delta: d, sha: sha))
        XCTAssertTrue(m1.hasPrefix("my.safetensors: ") && m1.contains("abababababab") && m1.contains(lm.name), m1)
        let m2 = message(try artefact(lm, delta: d, layer: lm.config.nLayers))
        XCTAssertTrue(m2.contains("layer \(lm.config.nLayers) is outside"), m2)
        let m3 = message(try artefact(lm, delta: d, heads: lm.config.nHeads + 1))
        XCTAssertTrue(m3.contains("\(lm.config.nHeads + 1) heads") && m3.contains("\(lm.config.nHeads) heads"), m3)
        let m4 = message(try artefact(lm, delta: Array(d.dropLast())))
        XCTAssertTrue(m4.contains("values"), m4)
        let m5 = message(try artefact(lm, delta: d, positions: "all"))
        XCTAssertTrue(m5.contains("\"all\""), m5)
        XCTAssertEqual(message(try artefact(lm, delta: d, sha: "")), "", "an artefact without a fingerprint (schema 0) loads")
    }

    func testSamplingIsSeededAndTopPTinyIsGreedy() throws {
        let lm = try SharedModel.get()
        let ids = [lm.tokenizer.encode("The weather today is"), lm.tokenizer.encode("My favourite animal is")]
        let stop = StopRules(maxNewTokens: 8, atNewline: false)
        let greedy = lm.generate(prompts: ids, stop: stop)
        let hot = Sampling(temperature: 1.5, topP: 1, seed: 7)
        let a = lm.generate(prompts: ids, steering: nil, sampling: hot, stop: stop)
        let b = lm.generate(prompts: ids, steering: nil, sampling: hot, stop: stop)
        XCTAssertEqual(a.tokens, b.tokens, "the same seed repeats")
        let c = lm.generate(prompts: ids, steering: nil, sampling: Sampling(temperature: 1.5, topP: 1, seed: 8), stop: stop)
        XCTAssertNotEqual(a.tokens, c.tokens, "another seed differs (16 tokens at temperature 1.5)")
        XCTAssertNotEqual(a.tokens, greedy.tokens)
        // each sequence has its own generator (seed + index), not shared with the other prompts:
        // prompt 1 alone with seed 9 gives what it gave as index 1 of the batch with seed 8
        let alone = lm.generate(prompts: [ids[1]], steering: nil, sampling: Sampling(temperature: 1.5, topP: 1, seed: 9), stop: stop)
        XCTAssertEqual(alone.tokens[0], c.tokens[1])
        let nucleus = lm.generate(prompts: ids, steering: nil, sampling: Sampling(temperature: 1, topP: 1e-6, seed: 1), stop: stop)
        XCTAssertEqual(nucleus.tokens, greedy.tokens, "top-p → 0 keeps only the most likely token")
    }
}
