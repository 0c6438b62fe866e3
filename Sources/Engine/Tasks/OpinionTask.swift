import Foundation

/// One multiple-choice survey question with each population's answer distribution
/// (the OpinionQA format of `opinionqa_4groups.json`: `{"questions": [{qkey, question, options,
/// option_ordinal, dist: {group: [p per option]}}]}`).
public struct OpinionQuestion: Sendable, Equatable {
    public var key: String
    public var question: String
    public var options: [String]
    /// Numeric position of each option on its ordinal scale (for the Wasserstein distance).
    public var ordinal: [Double]
    public var dist: [String: [Float]]
    public init(key: String, question: String, options: [String], ordinal: [Double], dist: [String: [Float]]) {
        self.key = key; self.question = question; self.options = options; self.ordinal = ordinal; self.dist = dist
    }
}

public enum OpinionTaskError: Error, LocalizedError, Equatable {
    case unreadable(String, String)
    case unknownGroup(String, known: [String])
    case tooFew(group: String, have: Int, need: Int)
    public var errorDescription: String? {
        switch self {
        case let .unreadable(path, why): return "cannot read opinion questions from \(path): \(why)"
        case let .unknownGroup(g, known): return "no group \"\(g)\" (known: \(known.joined(separator: ", ")))"
        case let .tooFew(g, have, need): return "group \"\(g)\" has \(have) usable questions, \(need) needed (train + test)"
        }
    }
}

public struct OpinionTask: Sendable {
    public var questions: [OpinionQuestion]
    public var groups: [String] { Array(Set(questions.flatMap(\.dist.keys))).sorted() }

    public init(questions: [OpinionQuestion]) { self.questions = questions }

    public static func load(path: String) throws -> OpinionTask {
        let root: Any
        do { root = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) }
        catch { throw OpinionTaskError.unreadable(path, error.localizedDescription) }
        guard let obj = root as? [String: Any], let qs = obj["questions"] as? [[String: Any]] else {
            throw OpinionTaskError.unreadable(path, "expected an object with a \"questions\" array")
        }
        var out: [OpinionQuestion] = []
        for (n, q) in qs.enumerated() {
            guard let text = q["question"] as? String, let options = q["options"] as? [String], options.count >= 2,
                  options.count <= 26, let dist = q["dist"] as? [String: [Double]] else {
                throw OpinionTaskError.unreadable(path, "question \(n) lacks question, options (2–26) or dist")
            }
            let ordinal = (q["option_ordinal"] as? [Double]) ?? options.indices.map(Double.init)
            var d: [String: [Float]] = [:]
            for (g, p) in dist where p.count == options.count {
                let s = p.reduce(0, +)
                if s > 0 { d[g] = p.map { Float($0 / s) } }
            }
            out.append(OpinionQuestion(key: q["qkey"] as? String ?? "q\(n)", question: text, options: options,
                                       ordinal: ordinal.count == options.count ? ordinal : options.indices.map(Double.init),
                                       dist: d))
        }
        return OpinionTask(questions: out)
    }

    /// "Question: …\nA. …\nB. …\nAnswer:" — the model answers with a letter.
    public static func prompt(_ q: OpinionQuestion) -> String {
        var s = "Question: \(q.question)\n"
        for (i, o) in q.options.enumerated() { s += "\(Character(UnicodeScalar(65 + i)!)). \(o)\n" }
        return s + "Answer:"
    }

    /// The token of " A", " B", … (the answer letters as the model writes them after "Answer:").
    public static func letterTokens(_ tok: BPETokenizer, count: Int) -> [Int] {
        (0..<count).map { tok.encode(" " + String(Character(UnicodeScalar(65 + $0)!)), bos: false)[0] }
    }

    /// A seeded split of the group's questions into disjoint train and test sets.
    public func split(group: String, seed: Int, train: Int, test: Int) throws -> (train: [OpinionQuestion], test: [OpinionQuestion]) {
        guard groups.contains(group) else { throw OpinionTaskError.unknownGroup(group, known: groups) }
        var usable = questions.filter { $0.dist[group] != nil }
        guard usable.count >= train + max(test, 1) else { throw OpinionTaskError.tooFew(group: group, have: usable.count, need: train + max(test, 1)) }
        var rng = PythonRandom(seed: seed)
        rng.shuffle(&usable)
        let tr = Array(usable.prefix(train))
        let rest = usable.dropFirst(train)
        return (tr, Array(test > 0 ? rest.prefix(test) : rest))
    }

    /// 1 − W₁(p, π) / (max ordinal − min ordinal): OpinionQA's alignment of two distributions on
    /// the question's ordinal scale (1 = identical).
    public static func alignment(_ p: [Float], _ pi: [Float], ordinal: [Double]) -> Double {
        let order = ordinal.indices.sorted { ordinal[$0] < ordinal[$1] }
        var cdf = 0.0, w = 0.0
        for (k, i) in order.enumerated().dropLast() {
            cdf += Double(p[i]) - Double(pi[i])
            w += abs(cdf) * (ordinal[order[k + 1]] - ordinal[i])
        }
        let span = (ordinal.max() ?? 1) - (ordinal.min() ?? 0)
        return span > 0 ? 1 - w / span : 1
    }

    /// KL(p ‖ π) with π floored at 1e-12.
    public static func kl(_ p: [Float], _ pi: [Float]) -> Double {
        zip(p, pi).reduce(0) { $0 + ($1.0 > 0 ? Double($1.0) * log(Double($1.0) / max(Double($1.1), 1e-12)) : 0) }
    }
}

extension OpinionTask {
    /// Metric key for the alignment with `group`'s answers (with Δ; `zero_shot_` + this without).
    public static func alignmentKey(group: String) -> String { "alignment_group:" + group }

    /// The per-group alignments found in a metrics map, by group.
    public static func alignmentByGroup(_ metrics: [String: Double], prefix: String = "") -> [String: Double] {
        let key = prefix + alignmentKey(group: "")
        return Dictionary(uniqueKeysWithValues: metrics.compactMap { k, v in
            k.hasPrefix(key) ? (String(k.dropFirst(key.count)), v) : nil
        })
    }

    /// The metrics of the model's answer distributions `dists` (restricted to each question's
    /// letters) on `questions` for `group`: alignment and KL, and the alignment with every group's
    /// answers on the same questions; each key after `prefix`.
    public static func score(_ dists: [[Float]], _ questions: [OpinionQuestion], group: String, prefix: String = "")
        -> [String: Double]
    {
        var align = 0.0, kl = 0.0
        var byGroup: [String: (sum: Double, n: Int)] = [:]
        for (p, q) in zip(dists, questions) {
            let pi = q.dist[group]!
            align += alignment(p, pi, ordinal: q.ordinal)
            kl += OpinionTask.kl(p, pi)
            for (g, d) in q.dist {
                var e = byGroup[g] ?? (0, 0)
                e.sum += alignment(p, d, ordinal: q.ordinal)
                e.n += 1
                byGroup[g] = e
            }
        }
        let n = Double(max(questions.count, 1))
        var m = ["n_test": Double(questions.count), prefix + "alignment": align / n, prefix + "kl": kl / n]
        for (g, e) in byGroup { m[prefix + alignmentKey(group: g)] = e.sum / Double(e.n) }
        return m
    }

    /// "<file>.json#<group>": a task address that names one group of an OpinionQA-layout file (how
    /// opinion jobs name their task in grids, so that groups are a grid axis); nil for any other task.
    public static func address(_ task: String) -> (path: String, group: String)? { JobSpec.opinionAddress(task) }

    /// `shots` training questions as demonstrations, each answered with the letter the group chose
    /// most often, before the question itself.
    public static func fewShotPrompt(_ demos: [OpinionQuestion], group: String, _ q: OpinionQuestion) -> String {
        demos.map { d in
            let best = d.dist[group]!.indices.max { d.dist[group]![$0] < d.dist[group]![$1] }!
            return prompt(d) + " " + String(Character(UnicodeScalar(65 + best)!)) + "\n\n"
        }.joined() + prompt(q)
    }

    /// The model's answer distributions (restricted to each question's letters, renormalised) for
    /// `prompts`, without Δ, in chunks; the tokens all prompts start with (few-shot demonstrations)
    /// computed once.
    public static func distributions(_ lm: LanguageModel, prompts: [String], letters: [Int]) -> [[Float]] {
        let V = lm.config.vocabSize
        let all = prompts.map { lm.tokenizer.encode($0) }
        let shared = lm.sharedPrefix(all)
        let common = shared?.length ?? 0
        let alphabet = letterTokens(lm.tokenizer, count: letters.max() ?? 0)
        var out: [[Float]] = []
        var start = 0
        while start < prompts.count {  // in chunks of 16
            let chunk = start..<min(prompts.count, start + 16)
            let caches = chunk.map { q in
                shared.map { KVCache(continuing: $0, capacity: all[q].count - common) }
                    ?? lm.model.makeCache(capacity: all[q].count)
            }
            let logits = lm.model.forward(tokens: chunk.map { Array(all[$0][common...]) }, caches: caches)
            for (i, q) in chunk.enumerated() {
                out.append(InterventionPath.softmax(alphabet.prefix(letters[q]).map { logits[i * V + $0] }))
            }
            start = chunk.upperBound
        }
        return out
    }

    /// A group's questions as a Δ problem: the restricted KL to the group's answer distributions on
    /// the training questions; scored on the test questions by alignment and KL, with Δ and
    /// without, and by the alignment with every group's answers on the same questions (is the
    /// gain specific to the target group?).
    public func problem(lm: LanguageModel, group: String, layer: Int, seed: Int, train: Int, test: Int, data: String) throws -> DeltaProblem {
        let (tr, te) = try split(group: group, seed: seed, train: train, test: test)
        func encode(_ qs: [OpinionQuestion]) -> (prompts: [[Int]], alphabets: [[Int]], targets: [[Float]]) {
            (qs.map { lm.tokenizer.encode(OpinionTask.prompt($0)) },
             qs.map { OpinionTask.letterTokens(lm.tokenizer, count: $0.options.count) },
             qs.map { $0.dist[group]! })
        }
        let a = encode(tr)
        return DeltaProblem(
            prompts: a.prompts, loss: .restrictedKL(alphabets: a.alphabets, target: a.targets),
            task: "opinion:\(group)", seed: seed,
            evaluate: { delta, progress in
                let b = encode(te)
                var with: [[Float]] = [], without: [[Float]] = []
                // the test questions in chunks that stay on the few-row kernels
                var start = 0
                while start < te.count {
                    let end = min(te.count, start + 64)
                    let p = InterventionPath(model: lm, layer: layer, prompts: Array(b.prompts[start..<end]))
                    let al = Array(b.alphabets[start..<end])
                    with += p.restrictedDistributions(delta: delta, alphabets: al)
                    without += p.restrictedBaseDistributions(alphabets: al)
                    start = end
                    progress?(start, te.count)
                }
                return OpinionTask.score(with, te, group: group)
                    .merging(OpinionTask.score(without, te, group: group, prefix: "zero_shot_")) { $1 }
            },
            artefactEntries: { m in ["data": data, "alignment": "\(m["alignment"] ?? .nan)"] })
    }
}
