@testable import Engine
import Foundation
import JobCore
import XCTest

/// The unsteered evaluation is decoded once per model and test split, and reused exactly.
final class EvaluationMemoTests: XCTestCase {
    func testTheUnsteeredVariantIsExactlyAZeroShotEvaluationAndIsReused() throws {
        let lm = try SharedModel.get()
        let registry = TaskRegistry()
        let split = TaskSplit(pairs: try registry.load("antonym"), seed: 3, trainSize: 2, testSize: 23)
        let judge = try registry.judge(for: "antonym")
        let prompts = split.test.map { PromptFormat.qa.prompt($0.input) }
        var rng = SplitMix64(seed: 5)
        let delta = (0..<lm.config.attnDim).map { _ in Float(rng.uniform() - 0.5) * 2 }
        // batches of 10: three batches, the last one short
        let evaluate = { (deltas: [[Float]?]) in
            lm.evaluate(prompts: prompts, pairs: split.test, format: .qa, deltas: deltas, layer: 4, judge: judge,
                        batchSize: 10)
        }
        func same(_ a: Evaluation, _ b: Evaluation, _ why: String) {
            XCTAssertEqual(a.items.map(\.prediction), b.items.map(\.prediction), why)
            XCTAssertEqual(a.items.map(\.exact), b.items.map(\.exact), why)
            XCTAssertEqual(a.items.map(\.firstToken), b.items.map(\.firstToken), why)
            XCTAssertEqual(a.items.map(\.judged), b.items.map(\.judged), why)
        }
        lm.evaluationMemo.removeAll()
        let zeroShot = evaluate([nil])[0]
        lm.evaluationMemo.removeAll()
        let hits0 = lm.evaluationMemo.hits
        let both = evaluate([delta, nil])                 // decoded afresh, then remembered
        XCTAssertEqual(lm.evaluationMemo.hits, hits0)
        same(both[1], zeroShot, "the unsteered variant beside Δ decodes exactly what a zero-shot evaluation does")
        XCTAssertNotEqual(both[0].items.map(\.prediction), zeroShot.items.map(\.prediction),
                          "Δ must change some answers, else this test cannot tell the variants apart")
        let again = evaluate([delta, nil])                // the unsteered variant from the memo
        XCTAssertEqual(lm.evaluationMemo.hits, hits0 + 1)
        same(again[1], zeroShot, "remembered")
        same(again[0], both[0], "Δ's answers do not depend on whether the unsteered ones were decoded beside them")
        let alone = evaluate([delta])
        same(alone[0], both[0], "nor on whether they were asked for at all")
    }

    func testRememberedPromptPositionsGiveTheSameAnswers() throws {
        let lm = try SharedModel.get()
        let registry = TaskRegistry()
        let split = TaskSplit(pairs: try registry.load("synonym"), seed: 4, trainSize: 2, testSize: 17)
        var rng = SplitMix64(seed: 8)
        let delta = (0..<lm.config.attnDim).map { _ in Float(rng.uniform() - 0.5) * 2 }
        let evaluate = {
            lm.evaluate(prompts: split.test.map { PromptFormat.qa.prompt($0.input) }, pairs: split.test, format: .qa,
                        deltas: [delta], layer: 3, judge: try registry.judge(for: "synonym"), batchSize: 8)[0]
        }
        lm.prefixMemo.removeAll()
        let hits0 = lm.prefixMemo.hits
        let fresh = try evaluate()                    // three batches computed and kept
        XCTAssertEqual(lm.prefixMemo.hits, hits0)
        let again = try evaluate()                    // all three from the memo
        XCTAssertEqual(lm.prefixMemo.hits, hits0 + 3)
        XCTAssertEqual(fresh.items.map(\.prediction), again.items.map(\.prediction))
        XCTAssertEqual(fresh.items.map(\.firstToken), again.items.map(\.firstToken))
        let third = try evaluate()                    // the memo's caches were copied, not decoded into
        XCTAssertEqual(fresh.items.map(\.prediction), third.items.map(\.prediction))
    }

    func testTwoThreadsDecodeWhatOneDoes() throws {
        // the decoding rows' attention runs on the threads at 2 (each sequence on its own), and
        // below 65 rows every product is a few-row kernel whose sums do not depend on the threads
        let one = try SharedModel.get()
        let two = try LanguageModel(ModelRegistry.defaultModel, backend: CPUBackend(threads: 2), threads: 2)
        let registry = TaskRegistry()
        let split = TaskSplit(pairs: try registry.load("antonym"), seed: 6, trainSize: 3, testSize: 12)
        var rng = SplitMix64(seed: 2)
        let delta = (0..<one.config.attnDim).map { _ in Float(rng.uniform() - 0.5) * 2 }
        for shots in [false, true] {
            let prompts = split.test.map {
                shots ? PromptFormat.qa.fewShot(split.train, $0.input) : PromptFormat.qa.prompt($0.input)
            }
            let run = { (lm: LanguageModel) -> [Evaluation] in
                lm.evaluationMemo.removeAll(); lm.prefixMemo.removeAll()
                return lm.evaluate(prompts: prompts, pairs: split.test, format: .qa, deltas: [delta, nil], layer: 4,
                                   judge: try registry.judge(for: "antonym"))
            }
            for (a, b) in zip(try run(one), try run(two)) {
                XCTAssertEqual(a.items.map(\.prediction), b.items.map(\.prediction), "shots: \(shots)")
                XCTAssertEqual(a.items.map(\.firstToken), b.items.map(\.firstToken), "shots: \(shots)")
            }
        }
    }

    /// k-shot prompts' caches continue one shared base instead of each holding a copy of it: the
    /// several-row pass (gathered), the one-row pass (read in two segments), growth and `copy`
    /// give bit for bit what the same positions held contiguously give.
    func testACacheContinuingASharedBaseComputesWhatAContiguousCopyDoes() throws {
        let lm = try SharedModel.get()
        let registry = TaskRegistry()
        let split = TaskSplit(pairs: try registry.load("antonym"), seed: 4, trainSize: 3, testSize: 6)
        let prompts = split.test.map { lm.tokenizer.encode(PromptFormat.qa.fewShot(split.train, $0.input)) }
        let base = try XCTUnwrap(lm.sharedPrefix(prompts))
        XCTAssertGreaterThan(base.length, 20, "three demonstrations are shared")
        func contiguous(_ c: KVCache, extra: Int) -> KVCache {
            let f = lm.model.makeCache(capacity: c.length + extra)
            for l in 0..<c.layers {
                for p in 0..<c.length {
                    f.keyRow(l, p).update(from: c.keyRow(l, p), count: c.kvDim)
                    f.valueRow(l, p).update(from: c.valueRow(l, p), count: c.kvDim)
                }
            }
            f.length = c.length
            return f
        }
        // the rest of each prompt but its last token: several rows per sequence
        let based = prompts.map { KVCache(continuing: base, capacity: $0.count - base.length - 1) }
        let flat = prompts.map { _ in contiguous(base, extra: 0) }
        let rest = prompts.map { Array($0[base.length..<($0.count - 1)]) }
        XCTAssertEqual(lm.model.forward(tokens: rest, caches: based), lm.model.forward(tokens: rest, caches: flat))
        // the last token (one row, with Δ), then decoding: both caches grow past their capacity
        var rng = SplitMix64(seed: 9)
        let delta = (0..<lm.config.attnDim).map { _ in Float(rng.uniform() - 0.5) * 2 }
        let last = prompts.map { [$0.last!] }
        let hook = DeltaHook(layer: 4, delta: delta)
        let a = lm.model.forward(tokens: last, caches: based, hooks: hook)
        XCTAssertEqual(a, lm.model.forward(tokens: last, caches: flat, hooks: hook))
        let stop = StopRules(maxNewTokens: 5, atNewline: false)
        let copies = based.map { $0.copy(extra: 0) }
        XCTAssertTrue(copies.allSatisfy { $0.base === base }, "a copy shares the base")
        let decoded = lm.decode(caches: based, logits: a, stop: stop)
        XCTAssertEqual(decoded.tokens, lm.decode(caches: flat, logits: a, stop: stop).tokens)
        XCTAssertEqual(decoded.tokens, lm.decode(caches: copies, logits: a, stop: stop).tokens)
        XCTAssertTrue(decoded.tokens.allSatisfy { $0.count == 5 })
        for (b, f) in zip(based, flat) {
            let g = contiguous(b, extra: 0)
            XCTAssertEqual(b.length, f.length)
            for l in 0..<lm.config.nLayers {
                let n = b.length * b.kvDim
                XCTAssertEqual(Array(UnsafeBufferPointer(start: g.keys(layer: l), count: n)),
                               Array(UnsafeBufferPointer(start: f.keys(layer: l), count: n)), "K, layer \(l)")
                XCTAssertEqual(Array(UnsafeBufferPointer(start: g.values(layer: l), count: n)),
                               Array(UnsafeBufferPointer(start: f.values(layer: l), count: n)), "V, layer \(l)")
            }
        }
        // two threads read the shared base at once (the one-row attention splits the sequences)
        let two = try LanguageModel(ModelRegistry.defaultModel, backend: CPUBackend(threads: 2), threads: 2)
        let shared2 = try XCTUnwrap(two.sharedPrefix(prompts))
        let based2 = prompts.map { KVCache(continuing: shared2, capacity: $0.count - shared2.length - 1) }
        _ = two.model.forward(tokens: rest, caches: based2)
        let a2 = two.model.forward(tokens: last, caches: based2, hooks: hook)
        XCTAssertEqual(two.decode(caches: based2, logits: a2, stop: stop).tokens, decoded.tokens, "2 threads")
    }

    /// The evaluation clock counts the rows each part ran: the shared positions once and each
    /// prompt's own but its last, the last positions once per variant, the decoding steps; a
    /// remembered prefix runs no prompt rows.
    func testTheEvaluationClockCountsTheRowsEachPartRan() throws {
        let lm = try SharedModel.get()
        let registry = TaskRegistry()
        let split = TaskSplit(pairs: try registry.load("antonym"), seed: 8, trainSize: 2, testSize: 7)
        let prompts = split.test.map { lm.tokenizer.encode(PromptFormat.qa.fewShot(split.train, $0.input)) }
        let common = try XCTUnwrap(lm.sharedPrefix(prompts)).length
        let delta = (0..<lm.config.attnDim).map { Float($0 % 7) * 0.2 - 0.6 }
        lm.prefixMemo.removeAll()
        lm.evaluationClock.reset()
        let stop = StopRules(maxNewTokens: 4, atNewline: false)
        let gens = lm.generate(prompts: prompts, variants: [delta, nil], layer: 4, stop: stop)
        let clock = lm.evaluationClock
        XCTAssertEqual(clock[.prompt].rows, prompts.reduce(0) { $0 + $1.count - 1 } - (prompts.count - 1) * common)
        XCTAssertEqual(clock[.last].rows, 2 * prompts.count)
        let tokens = gens.flatMap(\.tokens)
        let decodeRows = clock[.decode].rows
        XCTAssertGreaterThanOrEqual(decodeRows, tokens.reduce(0) { $0 + max($1.count - 1, 0) })
        XCTAssertLessThanOrEqual(decodeRows, tokens.reduce(0) { $0 + $1.count })
        XCTAssertTrue(EvaluationClock.Part.allCases.allSatisfy { clock[$0].ms > 0 })
        let before = clock[.prompt]
        _ = lm.generate(prompts: prompts, variants: [delta], layer: 4, stop: stop)   // the prefix remembered
        XCTAssertEqual(clock[.prompt], before)
        XCTAssertEqual(clock[.last].rows, 3 * prompts.count)
    }

    func testARecentMemoKeepsTheMostRecentlyUsedWithinItsBudget() {
        let memo = RecentMemo<[Int]>(budget: 10) { $0.count }
        memo["a"] = [1, 2, 3]
        memo["b"] = [1, 2, 3, 4]
        XCTAssertEqual(memo["a"], [1, 2, 3])              // a is now the most recent
        memo["c"] = [1, 2, 3]                             // 10 > budget? 3 + 4 + 3 = 10: all kept
        XCTAssertNotNil(memo["b"])
        memo["d"] = [1]                                   // 11: the least recent (a) goes
        XCTAssertNil(memo["a"])
        XCTAssertEqual(memo["c"], [1, 2, 3])
        memo["e"] = Array(repeating: 0, count: 6)         // more than half the budget: not kept
        XCTAssertNil(memo["e"])
        XCTAssertEqual(memo.stores, 4)
        memo.removeAll()
        XCTAssertNil(memo["b"])
    }

    func testTheKeyNamesEverythingThatDecidesAnswersAndScores() throws {
        let registry = TaskRegistry()
        let pairs = Array(try registry.load("antonym").prefix(5))
        let prompts = pairs.map { PromptFormat.qa.prompt($0.input) }
        let judge = try registry.judge(for: "antonym"), bare = Judge(task: "antonym", lexicon: nil)
        func key(prompts: [String] = prompts, pairs: [TaskPair] = pairs, format: PromptFormat = .qa,
                 judge: Judge = judge, maxNewTokens: Int = 0, batchSize: Int = 100, precision: Precision = .fp32,
                 stopDecided: Bool = true) -> String {
            EvaluationMemo.key(prompts: prompts, pairs: pairs, format: format, judge: judge, maxNewTokens: maxNewTokens,
                               batchSize: batchSize, precision: precision, stopDecided: stopDecided)
        }
        var other = pairs
        other[2].output += "x"
        let keys = [key(), key(prompts: prompts.map { $0 + " " }), key(pairs: other),
                    key(format: PromptFormat(query: "Q: {input}\nA:", target: "{output}", demo: "")), key(judge: bare),
                    key(maxNewTokens: 3), key(batchSize: 50), key(stopDecided: false),
                    key(prompts: Array(prompts.prefix(4)), pairs: Array(pairs.prefix(4)))]
            // int8 where it runs (without an int8 level it runs, and is keyed, as fp32)
            + (Precision.int8Available ? [key(precision: .int8)] : [])
        XCTAssertEqual(Set(keys).count, keys.count, "each setting must change the key")
        XCTAssertEqual(key(), key(), "and the same settings give the same key")
        // the kernels that ran, not the precision asked for: the fp32 levels round differently
        // (a CPU without AVX2 has one level and nothing to compare here)
        let level = Fp32Kernels.current
        defer { Fp32Kernels.current = level }
        for other in Fp32Kernels.supported where other != level {
            Fp32Kernels.current = other
            XCTAssertNotEqual(key(), keys[0], "fp32 at \(other.rawValue)")
            if Precision.int8Available {   // a matrix without an int8 layout runs the fp32 kernels
                XCTAssertNotEqual(key(precision: .int8), keys.last!, "int8 beside fp32 at \(other.rawValue)")
            }
            XCTAssertNotEqual(PrefixMemo.key([[1, 2]], precision: .fp32), {
                Fp32Kernels.current = level; defer { Fp32Kernels.current = other }
                return PrefixMemo.key([[1, 2]], precision: .fp32)
            }(), "prefix at \(other.rawValue)")
        }
    }
}
