import Engine
import Foundation
import JobCore
import XCTest

/// Using a learned Δ: steered generation (`worker generate`) against the evaluation's own path,
/// composition, the load checks and sampling.
final class SteeringTests: XCTestCase {
    func artefact(
        _ lm: LanguageModel, delta: [Float], layer: Int = 4, sha: String? = nil, heads: Int? = nil,
        positions: String = "last"
    ) throws -> DeltaArtefact {
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
        let two = try Steering(
            artefacts: [("a", try artefact(lm, delta: half)), ("b", try artefact(lm, delta: half))], model: lm)
        XCTAssertEqual(
            lm.generate(prompts: prompts, steering: two, sampling: .greedy, stop: stop).tokens, evaluation.tokens)
        let scaled = try Steering(
            artefacts: [("x", try artefact(lm, delta: delta.map { $0 * 2 }))], model: lm, scale: 0.5)
        XCTAssertEqual(scaled.byLayer[4], delta)

        // other positions change the continuation (Δ is also added where generated tokens are read)
        let all = try Steering(artefacts: [("d", try artefact(lm, delta: delta))], model: lm, positions: .all)
        XCTAssertNotEqual(
            lm.generate(prompts: prompts, steering: all, sampling: .greedy, stop: stop).tokens, steered.tokens)
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
        XCTAssertEqual(
            message(try artefact(lm, delta: d, sha: "")), "", "an artefact without a fingerprint (schema 0) loads")

        // corrupt files: not safetensors at all, cut short, or without the metadata Δ needs
        let good = try artefact(lm, delta: d).data
        XCTAssertNoThrow(try DeltaArtefact(data: good))
        XCTAssertThrowsError(try DeltaArtefact(data: Data("not a safetensors file".utf8)))
        XCTAssertThrowsError(try DeltaArtefact(data: good.prefix(good.count - 100)), "truncated data")
        XCTAssertThrowsError(try DeltaArtefact(data: good.prefix(40)), "truncated header")
        let noMeta = Safetensors.write(tensors: [("delta", [d.count], d)], metadata: [:])
        XCTAssertThrowsError(try DeltaArtefact(data: noMeta)) {
            XCTAssertTrue("\($0)".contains("layer") || "\($0)".contains("model"), "\($0)")
        }
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
        let c = lm.generate(
            prompts: ids, steering: nil, sampling: Sampling(temperature: 1.5, topP: 1, seed: 8), stop: stop)
        XCTAssertNotEqual(a.tokens, c.tokens, "another seed differs (16 tokens at temperature 1.5)")
        XCTAssertNotEqual(a.tokens, greedy.tokens)
        // each sequence has its own generator (seed + index), not shared with the other prompts:
        // prompt 1 alone with seed 9 gives what it gave as index 1 of the batch with seed 8
        let alone = lm.generate(
            prompts: [ids[1]], steering: nil, sampling: Sampling(temperature: 1.5, topP: 1, seed: 9), stop: stop)
        XCTAssertEqual(alone.tokens[0], c.tokens[1])
        let nucleus = lm.generate(
            prompts: ids, steering: nil, sampling: Sampling(temperature: 1, topP: 1e-6, seed: 1), stop: stop)
        XCTAssertEqual(nucleus.tokens, greedy.tokens, "top-p → 0 keeps only the most likely token")
    }
}

/// The llama.cpp forms of a Δ (`DeltaExport`) and their emulation here.
final class DeltaExportTests: XCTestCase {
    func testControlVectorAndBiasFilesHoldWoDelta() throws {
        let lm = try SharedModel.get()
        var rng = SplitMix64(seed: 4)
        let delta = (0..<lm.config.attnDim).map { _ in Float(rng.uniform() - 0.5) }
        let md = DeltaMetadata(
            model: lm.name, modelSHA256: try lm.sha256(), task: "t", method: "intervention", layer: 4,
            heads: lm.config.nHeads, headDim: lm.config.headDim, seed: 0, lambda: 0, gamma: 0, steps: 1, lr: 0.1,
            solver: "adam", precision: "fp32", trainSize: 10, finalLoss: 0)
        let s = try Steering(artefacts: [("d", DeltaArtefact(delta: delta, metadata: md))], model: lm, scale: 2)
        // W_O·(2Δ) by hand, in Double
        let w = lm.model.blocks[4].wo
        let expected = (0..<w.rows).map { i in
            Float((0..<w.cols).reduce(0.0) { $0 + Double(w.data[i * w.cols + $1]) * Double(2 * delta[$1]) })
        }
        let dir = NSTemporaryDirectory() + "export-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        try DeltaExport.controlVector(s, model: lm).write(to: URL(fileURLWithPath: dir + "/cv.gguf"))
        let cv = try GGUFFile(path: dir + "/cv.gguf")
        XCTAssertEqual(cv.metadata["general.architecture"]?.string, "controlvector")
        XCTAssertEqual(cv.tensorOrder, ["direction.4"])
        let got = try Dequant.tensor(cv, try cv.tensor("direction.4"))
        XCTAssertEqual(got.count, lm.config.dModel)
        for (a, b) in zip(got, expected) { XCTAssertEqual(a, b, accuracy: 1e-4 * max(1, abs(b))) }

        try DeltaExport.modelWithBias(s, model: lm).write(to: dir + "/m.gguf")
        let orig = try GGUFFile(path: lm.path)
        let copy = try GGUFFile(path: dir + "/m.gguf")
        XCTAssertEqual(copy.metadataKeys, orig.metadataKeys)
        for k in orig.metadataKeys { XCTAssertEqual("\(copy.metadata[k]!)", "\(orig.metadata[k]!)", k) }
        XCTAssertEqual(copy.tensorOrder, orig.tensorOrder + ["blk.4.attn_output.bias"])
        for name in orig.tensorOrder {
            XCTAssertTrue(
                copy.rawBytes(try copy.tensor(name)).elementsEqual(orig.rawBytes(try orig.tensor(name))), name)
        }
        XCTAssertEqual(try Dequant.tensor(copy, try copy.tensor("blk.4.attn_output.bias")), got)
        // the copy still loads as the model it was
        XCTAssertNoThrow(try LanguageModel(dir + "/m.gguf", backend: CPUBackend(threads: 1)))

        var at0 = s
        at0.byLayer = [0: delta]
        XCTAssertThrowsError(try DeltaExport.controlVector(at0, model: lm)) {
            XCTAssertTrue("\($0)".contains("layer 0"), "\($0)")
        }
    }

    /// `worker evaluate`'s path: the native form scores what the job's evaluation scored; the
    /// other forms differ; a zero control vector is no Δ.
    func testEvaluationFormsAgreeWithTheJobsEvaluation() throws {
        let lm = try SharedModel.get()
        let pairs = try TaskRegistry().load("antonym")
        let split = TaskSplit(pairs: pairs, seed: 0, trainSize: 10, testSize: 30)
        let prompts = split.test.map { PromptFormat.qa.prompt($0.input) }
        let judge = Judge.exactMatch(task: "antonym")
        let delta = (0..<lm.config.attnDim).map { Float(($0 % 9) - 4) * 0.5 }
        let md = DeltaMetadata(
            model: lm.name, modelSHA256: try lm.sha256(), task: "antonym", method: "intervention", layer: 4,
            heads: lm.config.nHeads, headDim: lm.config.headDim, seed: 0, lambda: 0, gamma: 0, steps: 1, lr: 0.1,
            solver: "adam", precision: "fp32", trainSize: 10, finalLoss: 0)
        let s = try Steering(artefacts: [("d", DeltaArtefact(delta: delta, metadata: md))], model: lm)
        let job = lm.evaluate(
            prompts: prompts, pairs: split.test, format: .qa, deltas: [delta, nil], layer: 4, judge: judge)
        let native = lm.evaluate(prompts: prompts, pairs: split.test, format: .qa, steering: s, judge: judge)
        XCTAssertEqual(native.items.map(\.prediction), job[0].items.map(\.prediction))
        let none = lm.evaluate(prompts: prompts, pairs: split.test, format: .qa, steering: nil, judge: judge)
        XCTAssertEqual(none.items.map(\.prediction), job[1].items.map(\.prediction))
        var zero = s
        zero.byLayer = [4: [Float](repeating: 0, count: delta.count)]
        let zcv = lm.evaluate(
            prompts: prompts, pairs: split.test, format: .qa, steering: zero.asControlVector(lm), judge: judge)
        XCTAssertEqual(zcv.items.map(\.prediction), none.items.map(\.prediction))
        let cv = lm.evaluate(
            prompts: prompts, pairs: split.test, format: .qa, steering: s.asControlVector(lm), judge: judge)
        XCTAssertNotEqual(cv.items.map(\.prediction), native.items.map(\.prediction))
    }
}

/// PyTorch interop: `clients/python/intervene_delta.py` applies a Δ artefact to a transformers
/// model loaded from the same GGUF file; the steered logits it gave (committed fixture
/// `interop-steered-logits.json`, written by `clients/python/steered_logits.py`) must be this
/// engine's.
final class PyTorchInteropTests: XCTestCase {
    func testSteeredLogitsMatchTransformersWithTheHook() throws {
        let lm = try SharedModel.get()
        let root = TestPaths.packageRoot.appendingPathComponent("Tests/EngineTests/Fixtures")
        let fixture = try loadJSON(root.appendingPathComponent("interop-steered-logits.json")) as! [String: Any]
        XCTAssertEqual(
            fixture["model_sha256"] as? String, try lm.sha256(), "the fixture was made on another model file")
        let data = try Data(contentsOf: root.appendingPathComponent("interop-delta.safetensors"))
        let s = try Steering(
            artefacts: [("interop-delta", try DeltaArtefact(data: data))], model: lm,
            scale: Float(fixture["scale"] as! Double))
        var worst: Float = 0
        for row in fixture["prompts"] as! [[String: Any]] {
            let ids = lm.tokenizer.encode(row["prompt"] as! String)
            XCTAssertEqual(ids, row["token_ids"] as! [Int])
            for (hooks, idKey, logitKey) in [
                (s.promptHooks as ForwardHooks?, "top_ids", "top_logits"),
                (nil, "plain_top_ids", "plain_top_logits"),
            ] {
                let z = lm.model.forward(tokens: [ids], caches: [lm.model.makeCache(capacity: ids.count)], hooks: hooks)
                let refIDs = row[idKey] as! [Int]
                let refLogits = (row[logitKey] as! [Double]).map(Float.init)
                XCTAssertEqual(z.indices.sorted { z[$0] > z[$1] }.first, refIDs.first, "\(row["prompt"]!) \(idKey)")
                for (id, ref) in zip(refIDs, refLogits) {
                    worst = max(worst, abs(z[id] - ref))
                    // both dequantise the same Q4_1 weights to fp32 and sum in another order:
                    // 6.9e-5 measured; a Δ at the wrong site or position is off by whole units
                    XCTAssertEqual(z[id], ref, accuracy: 1e-3, "\(row["prompt"]!) token \(id) (\(idKey))")
                }
            }
        }
        print("largest |logit − transformers'| over the fixture: \(worst)")
    }
}
