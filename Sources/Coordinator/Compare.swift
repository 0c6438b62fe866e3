import Foundation
import JobCore

/// Configurations ("arms") compared task by task on one metric, paired by seed: what
/// `coordinator compare` prints. An arm is every parameter of a job but its model, task, seed and
/// test size; two jobs of different arms are a pair when those four agree. Pure: built from job
/// views, rendered as text, Markdown or JSON.
///
/// Statistics, per task t and arm a: the mean and sample std over the seeds done; the paired
/// difference from the baseline arm over the seeds both have, d_t ± se_t (se_t = sd/√n). Over
/// the suite (the tasks every arm has): the mean of the per-task means, and of the d_t with
/// SE = √(Σ se_t²)/T, the tasks being fixed and their seeds independent.
public struct Comparison: Sendable {
    public struct Arm: Sendable {
        public var label: String
        /// A job of this arm (task, seed and model as that job has them).
        public var example: JobSpec
    }

    public struct Stat: Sendable, Equatable {
        public var mean: Double
        public var std: Double
        public var n: Int
    }

    public struct Paired: Sendable, Equatable {
        public var mean: Double
        public var se: Double
        public var n: Int
    }

    public var metric: String
    public var arms: [Arm]
    public var baseline: Int
    /// Task names in first-seen order.
    public var tasks: [String]
    /// cells[t][a]: the metric over seeds.
    public var cells: [[Stat?]]
    /// paired[t][a]: arm a minus the baseline, paired by seed (nil for the baseline itself).
    public var paired: [[Paired?]]
    /// The tasks every arm has a value for (the suite).
    public var suite: [Int]
    /// Per arm: mean over the suite's tasks of the per-task means.
    public var suiteMean: [Double?]
    /// Per arm: the suite's mean paired difference from the baseline and its SE.
    public var suitePaired: [Paired?]
    /// Per arm and extra metric (e.g. final_objective): its mean over the suite's jobs.
    public var extras: [String: [Double?]]
    /// Jobs of these experiments not done (their seeds are left out).
    public var notDone: Int

    public static let defaultExtras = ["final_objective", "final_loss", "delta_l2", "nonzero"]

    /// The comparison of the done jobs among `jobs` on `metric`. `baseline` picks the arm whose
    /// label equals it, else the only one containing it; nil: the first arm.
    public static func make(
        _ jobs: [JobView], metric: String, baseline: String? = nil, extras: [String] = defaultExtras
    ) throws -> Comparison {
        var seen = Set<String>()
        // jobs that score the model (not those that only make another's input: a head ranking)
        let unique = jobs.filter { $0.spec.method.evaluates && seen.insert($0.id).inserted }
        let done = unique.filter { $0.state == .done }
        guard done.contains(where: { $0.metrics[metric] != nil }) else {
            let known = Set(done.flatMap { $0.metrics.keys }).sorted()
            throw CompareError(
                done.isEmpty
                    ? "no job of these experiments is done yet"
                    : "no done job has the metric \"\(metric)\"; they have: \(known.joined(separator: ", "))")
        }

        // arms: everything but model, task, seed and test size, in first-seen order
        var armOrder: [JobSpec] = []
        var armExample: [JobSpec: JobSpec] = [:]
        // rows: model, task and test size (a pair agrees on all three and the seed)
        var taskOrder: [String] = []
        var rowSpec: [String: JobSpec] = [:]
        var values: [String: [JobSpec: [Int: JobView]]] = [:]  // row → arm → seed → job
        for j in done {
            let k = armKey(j.spec)
            if armExample[k] == nil {
                armOrder.append(k)
                armExample[k] = j.spec
            }
            let row = taskKey(j.spec)
            if values[row] == nil {
                taskOrder.append(row)
                rowSpec[row] = j.spec
            }
            values[row, default: [:]][k, default: [:]][j.spec.seed] = j
        }
        let labels = armLabels(armOrder)
        var base = 0
        if let b = baseline {
            if let i = labels.firstIndex(of: b) {
                base = i
            } else {
                let hits = labels.indices.filter { labels[$0].contains(b) }
                guard hits.count == 1 else {
                    throw CompareError(
                        "--baseline \"\(b)\" matches \(hits.isEmpty ? "no" : "\(hits.count)") arms; arms: "
                            + labels.map { "\"\($0)\"" }.joined(separator: ", "))
                }
                base = hits[0]
            }
        }

        var cells: [[Stat?]] = []
        var paired: [[Paired?]] = []
        for t in taskOrder {
            let byArm = values[t]!
            let row: [Stat?] = armOrder.map { a in
                stat(byArm[a]?.values.compactMap { $0.metrics[metric] }.filter(\.isFinite) ?? [])
            }
            let baseSeeds = byArm[armOrder[base]] ?? [:]
            let prow: [Paired?] = armOrder.enumerated().map { i, a in
                guard i != base, let mine = byArm[a] else { return nil }
                let d: [Double] = mine.compactMap { seed, job in
                    guard let x = job.metrics[metric], let y = baseSeeds[seed]?.metrics[metric], x.isFinite, y.isFinite
                    else { return nil }
                    return x - y
                }
                guard let s = stat(d) else { return nil }
                return Paired(mean: s.mean, se: s.n > 1 ? s.std / Double(s.n).squareRoot() : .nan, n: s.n)
            }
            cells.append(row)
            paired.append(prow)
        }
        let suite = taskOrder.indices.filter { t in cells[t].allSatisfy { $0 != nil } }
        let suiteMean: [Double?] = armOrder.indices.map { a in
            suite.isEmpty ? nil : suite.map { cells[$0][a]!.mean }.reduce(0, +) / Double(suite.count)
        }
        let suitePaired: [Paired?] = armOrder.indices.map { a in
            guard a != base, !suite.isEmpty else { return nil }
            let ps = suite.compactMap { paired[$0][a] }
            guard ps.count == suite.count else { return nil }
            let T = Double(ps.count)
            let se = ps.allSatisfy { $0.se.isFinite } ? ps.map { $0.se * $0.se }.reduce(0, +).squareRoot() / T : .nan
            return Paired(mean: ps.map(\.mean).reduce(0, +) / T, se: se, n: ps.map(\.n).reduce(0, +))
        }
        let suiteTasks = Set(suite.map { taskOrder[$0] })
        let names = taskNames(taskOrder.map { rowSpec[$0]! })
        var extraMeans: [String: [Double?]] = [:]
        for e in extras {
            let col: [Double?] = armOrder.map { a in
                let xs = suiteTasks.flatMap { t in values[t]?[a]?.values.compactMap { $0.metrics[e] } ?? [] }
                    .filter(\.isFinite)
                return xs.isEmpty ? nil : xs.reduce(0, +) / Double(xs.count)
            }
            if col.contains(where: { $0 != nil }) { extraMeans[e] = col }
        }
        return Comparison(
            metric: metric, arms: zip(labels, armOrder).map { Arm(label: $0, example: armExample[$1]!) },
            baseline: base, tasks: names, cells: cells, paired: paired, suite: suite, suiteMean: suiteMean,
            suitePaired: suitePaired, extras: extraMeans, notDone: unique.count - done.count)
    }

    /// An arm: a job's parameters but its model, task, seed and test size (normalised).
    public static func armKey(_ s: JobSpec) -> JobSpec {
        var k = s.normalised
        k.task = ""
        k.seed = 0
        k.model = ""
        k.testSize = 0
        k.inputs = []   // an add job's Δs differ per task and seed, as its task and seed do
        return k
    }

    /// What a task row (or column) is: model, task and test size; a pair of jobs agrees on it and the seed.
    public static func taskKey(_ s: JobSpec) -> String { "\(s.model)\u{0}\(s.task)\u{0}\(s.testSize)" }

    /// Display names of task rows (one job of each, in order): the task's base name, with what
    /// tells rows apart where it is shared (the full task, the model, the test size).
    public static func taskNames(_ rows: [JobSpec]) -> [String] {
        let models = Set(rows.map(\.model)), tests = Set(rows.map(\.testSize))
        var byName: [String: Int] = [:]
        for s in rows { byName[taskName(s), default: 0] += 1 }
        return rows.map { s in
            var n = byName[taskName(s)]! > 1 && models.count == 1 && tests.count == 1 ? s.task : taskName(s)
            if models.count > 1 { n += " · " + s.model }
            if tests.count > 1 { n += " · test \(s.testSize)" }
            return n
        }
    }

    /// A task's name as tables show it: a data file's base name, else the registry name; an
    /// opinion task's group.
    public static func taskName(_ s: JobSpec) -> String {
        if let o = JobSpec.opinionAddress(s.task) { return o.group }
        let last = s.task.split(separator: "/").last.map(String.init) ?? s.task
        return last.hasSuffix(".json") ? String(last.dropLast(5)) : last
    }

    /// Each arm named by its method and the parameters that differ between arms ("intervention
    /// solver=adam delta_scale=2"); parameters an arm's method lacks are left out.
    static func armLabels(_ arms: [JobSpec]) -> [String] {
        let varying = Render.parameterColumns.filter { _, f in
            Set(arms.map(f).filter { $0 != "-" }).count > 1
        }
        return arms.map { a in
            ([a.method.rawValue]
                + varying.compactMap { name, f in
                    let v = f(a)
                    return v == "-" ? nil : "\(name)=\(v)"
                }).joined(separator: " ")
        }
    }

    static func stat(_ xs: [Double]) -> Stat? {
        guard !xs.isEmpty else { return nil }
        let m = xs.reduce(0, +) / Double(xs.count)
        let sd = xs.count > 1 ? (xs.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(xs.count - 1)).squareRoot() : 0
        return Stat(mean: m, std: sd, n: xs.count)
    }
}

public struct CompareError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

extension Render {
    /// The comparison as an aligned text table (`markdown: false`) or a Markdown table: one row per
    /// task, one column per arm (mean ± std, and the paired difference from the baseline), the
    /// suite's mean, the worst task's difference, and the extras' means.
    public static func comparison(_ c: Comparison, markdown: Bool) -> String {
        func f(_ x: Double) -> String { String(format: "%.3f", x) }
        func signed(_ x: Double) -> String { (x >= 0 ? "+" : "−") + f(abs(x)) }
        func diff(_ p: Comparison.Paired?) -> String {
            guard let p else { return "" }
            return " (" + signed(p.mean) + (p.se.isFinite ? " ± " + f(p.se) : "") + ")"
        }
        let header = ["task"] + c.arms.enumerated().map { i, a in a.label + (i == c.baseline ? " [baseline]" : "") }
        var rows: [[String]] = []
        for (t, name) in c.tasks.enumerated() {
            let best = c.cells[t].compactMap { $0?.mean }.max()
            rows.append(
                [name]
                    + c.arms.indices.map { a in
                        guard let s = c.cells[t][a] else { return "–" }
                        var cell = s.n > 1 ? f(s.mean) + " ± " + f(s.std) : f(s.mean)
                        if markdown && s.mean == best && c.arms.count > 1 { cell = "**" + cell + "**" }
                        return cell + diff(c.paired[t][a])
                    })
        }
        let T = c.suite.count
        rows.append(
            ["mean (\(T) task\(T == 1 ? "" : "s"))"]
                + c.arms.indices.map { a in
                    (c.suiteMean[a].map(f) ?? "–") + diff(c.suitePaired[a])
                })
        rows.append(
            ["worst task Δ"]
                + c.arms.indices.map { a in
                    let ds = c.suite.compactMap { t in c.paired[t][a].map { (c.tasks[t], $0.mean) } }
                    guard let w = ds.min(by: { $0.1 < $1.1 }) else { return "" }
                    return signed(w.1) + " " + w.0
                })
        let known = Comparison.defaultExtras.filter { c.extras[$0] != nil }
        for e in known + c.extras.keys.filter({ !known.contains($0) }).sorted() {
            rows.append(["mean " + e] + c.extras[e]!.map { $0.map(f) ?? "–" })
        }
        let title =
            "\(c.metric): mean ± std over seeds; (paired difference from the baseline ± SE, by seed). "
            + "Suite mean over the \(T) task\(T == 1 ? "" : "s") every arm has; its SE = √(Σ SE_t²)/T."
            + (c.notDone > 0 ? " \(c.notDone) job\(c.notDone == 1 ? "" : "s") not done are left out." : "")
        if markdown {
            let esc = { (s: String) in s.replacingOccurrences(of: "|", with: "\\|") }
            var out = [
                title, "", "| " + header.map(esc).joined(separator: " | ") + " |",
                "|" + header.indices.map { $0 == 0 ? "---|" : "---:|" }.joined(),
            ]
            out += rows.map { "| " + $0.map(esc).joined(separator: " | ") + " |" }
            return out.joined(separator: "\n") + "\n"
        }
        return title + "\n\n" + grid(header, rows, rightAlign: Set(1..<header.count))
    }

    /// The comparison as JSON: arms, and per task and on the suite each arm's mean, std, n and
    /// paired difference.
    public static func comparisonJSON(_ c: Comparison) -> String {
        func n(_ x: Double?) -> JSONValue {
            guard let x, x.isFinite else { return .null }
            return .number(x, literal: num(x))
        }
        func int(_ i: Int) -> JSONValue { .number(Double(i), literal: String(i)) }
        func armValues(_ t: Int) -> JSONValue {
            .object(
                c.arms.indices.map { a in
                    let s = c.cells[t][a]
                    let p = c.paired[t][a]
                    return (
                        c.arms[a].label,
                        .object([
                            ("mean", n(s?.mean)), ("std", n(s?.std)), ("n", int(s?.n ?? 0)),
                            ("diff", n(p?.mean)), ("diff_se", n(p?.se)), ("pairs", int(p?.n ?? 0)),
                        ])
                    )
                })
        }
        let v: JSONValue = .object([
            ("metric", .string(c.metric)),
            ("baseline", .string(c.arms[c.baseline].label)),
            ("arms", .array(c.arms.map { .string($0.label) })),
            ("tasks", .object(c.tasks.indices.map { (c.tasks[$0], armValues($0)) })),
            (
                "suite",
                .object([
                    ("tasks", .array(c.suite.map { .string(c.tasks[$0]) })),
                    ("mean", .object(c.arms.indices.map { (c.arms[$0].label, n(c.suiteMean[$0])) })),
                    ("diff", .object(c.arms.indices.map { (c.arms[$0].label, n(c.suitePaired[$0]?.mean)) })),
                    ("diff_se", .object(c.arms.indices.map { (c.arms[$0].label, n(c.suitePaired[$0]?.se)) })),
                ])
            ),
            (
                "extras",
                .object(
                    c.extras.keys.sorted().map { e in
                        (e, .object(c.arms.indices.map { (c.arms[$0].label, n(c.extras[e]![$0])) }))
                    })
            ),
            ("not_done", int(c.notDone)),
        ])
        return pretty(v) + "\n"
    }
}
