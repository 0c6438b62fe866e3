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
                var align = (0.0, 0.0), kls = (0.0, 0.0)
                var byGroup: [String: (with: Double, without: Double, n: Int)] = [:]
                // the test questions in chunks that stay on the few-row kernels
                var start = 0
                while start < te.count {
                    let end = min(te.count, start + 64)
                    let p = InterventionPath(model: lm, layer: layer, prompts: Array(b.prompts[start..<end]))
                    let al = Array(b.alphabets[start..<end])
                    let with = p.restrictedDistributions(delta: delta, alphabets: al)
                    let without = p.restrictedBaseDistributions(alphabets: al)
                    for (j, q) in te[start..<end].enumerated() {
                        let pi = q.dist[group]!
                        align.0 += OpinionTask.alignment(with[j], pi, ordinal: q.ordinal)
                        align.1 += OpinionTask.alignment(without[j], pi, ordinal: q.ordinal)
                        kls.0 += OpinionTask.kl(with[j], pi); kls.1 += OpinionTask.kl(without[j], pi)
                        for (g, d) in q.dist {
                            var e = byGroup[g] ?? (0, 0, 0)
                            e.with += OpinionTask.alignment(with[j], d, ordinal: q.ordinal)
                            e.without += OpinionTask.alignment(without[j], d, ordinal: q.ordinal)
                            e.n += 1
                            byGroup[g] = e
                        }
                    }
                    start = end
                    progress?(start, te.count)
                }
                let n = Double(max(te.count, 1))
                var m: [String: Double] = ["n_test": Double(te.count), "alignment": align.0 / n, "zero_shot_alignment": align.1 / n,
                                           "kl": kls.0 / n, "zero_shot_kl": kls.1 / n]
                for (g, e) in byGroup {
                    m[OpinionTask.alignmentKey(group: g)] = e.with / Double(e.n)
                    m["zero_shot_" + OpinionTask.alignmentKey(group: g)] = e.without / Double(e.n)
                }
                return m
            },
            artefactEntries: { m in ["data": data, "alignment": "\(m["alignment"] ?? .nan)"] })
    }
}
