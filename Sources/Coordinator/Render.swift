import JobCore
import Foundation

/// Text renderings of an experiment's jobs: per-job tables (table / csv / json) and the
/// per-configuration summary (mean ± std over seeds) that `tail` shows.
public enum Render {
    /// The metrics tables show when present, in this order.
    public static let mainMetrics = ["exact_match", "first_token_accuracy", "judge_accuracy", "final_loss"]

    /// The metric columns for a set of jobs: the main metrics present, or (if none is) up to four
    /// others.
    public static func metricColumns(_ jobs: [JobView]) -> [String] {
        let present = Set(jobs.flatMap { $0.metrics.keys })
        let main = mainMetrics.filter { present.contains($0) }
        return main.isEmpty ? Array(present.sorted().prefix(4)) : main
    }

    // MARK: per-job formats

    public static func results(_ jobs: [JobView], format: String) -> String {
        switch format {
        case "csv": return csv(jobs)
        case "json": return json(jobs)
        default: return table(jobs) + "\n" + summary(jobs)
        }
    }

    static let specColumns = ["model", "task", "method", "layer", "lambda", "gamma", "seed", "train_size",
                              "test_size", "steps", "lr", "max_new_tokens", "shots", "solver", "precision"]
        + Tunable.all.map(\.key)

    static func specValues(_ s: JobSpec) -> [String] {
        [s.model, s.task, s.method.rawValue, String(s.layer), num(s.lambda), num(s.gamma), String(s.seed),
         String(s.trainSize), String(s.testSize), String(s.steps), num(s.lr), String(s.maxNewTokens), String(s.shots),
         s.solver?.rawValue ?? "", s.precision?.rawValue ?? ""] + Tunable.all.map { t in
             s.method.axes.contains(t.axis) ? (t.names(of: s[t])?.joined(separator: " ") ?? num(s[t])) : ""
         }
    }

    static func num(_ d: Double) -> String { JSONValue.canonicalNumber(d) }

    public static func csv(_ jobs: [JobView]) -> String {
        let metrics = Array(Set(jobs.flatMap { $0.metrics.keys })).sorted()
        var lines = [(["job_id"] + specColumns + ["state", "attempts", "worker", "error", "artefact_path"] + metrics)
            .map(csvField).joined(separator: ",")]
        for j in jobs {
            let row = [j.id] + specValues(j.spec) + [j.state.rawValue, String(j.attempt), j.worker, j.error, j.artefactPath]
                + metrics.map { j.metrics[$0].map(num) ?? "" }
            lines.append(row.map(csvField).joined(separator: ","))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func csvField(_ s: String) -> String {
        if s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) {
            return "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        }
        return s
    }

    /// One object per job: its parameters (the JobSpec, field for field), state, attempts, metrics
    /// and artefact.
    public static func json(_ jobs: [JobView]) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let items: [JSONValue] = jobs.map { j in
            let params = (try? enc.encode(j.spec)).flatMap { try? JSONValue.parse($0) } ?? .null
            var members: [(String, JSONValue)] = [
                ("job_id", .string(j.id)),
                ("params", params),
                ("state", .string(j.state.rawValue)),
                ("attempts", .number(Double(j.attempt), literal: String(j.attempt))),
                ("metrics", .object(j.metrics.sorted { $0.key < $1.key }.map {
                    ($0.key, $0.value.isFinite ? .number($0.value, literal: num($0.value)) : .null)
                })),
                ("artefact_path", j.artefactPath.isEmpty ? .null : .string(j.artefactPath)),
                ("artefact_sha256", j.artefactSHA256.isEmpty ? .null : .string(j.artefactSHA256)),
                ("worker", j.worker.isEmpty ? .null : .string(j.worker)),
                ("error", j.error.isEmpty ? .null : .string(j.error)),
            ]
            if j.state == .queued, !j.pendingReason.isEmpty { members.append(("pending_reason", .string(j.pendingReason))) }
            return .object(members)
        }
        return pretty(.array(items)) + "\n"
    }

    /// Indented JSON keeping key order.
    public static func pretty(_ v: JSONValue, indent: String = "") -> String {
        let inner = indent + "  "
        switch v {
        case .array(let items):
            if items.isEmpty { return "[]" }
            return "[\n" + items.map { inner + pretty($0, indent: inner) }.joined(separator: ",\n") + "\n" + indent + "]"
        case .object(let members):
            if members.isEmpty { return "{}" }
            // Flat objects of scalars stay on one line.
            if members.allSatisfy({ if case .object = $0.1 { return false }; if case .array = $0.1 { return false }; return true }),
               members.count <= 16, indent.count >= 4 {
                return "{" + members.map { JSONValue.quote($0.0) + ": " + $0.1.canonical }.joined(separator: ", ") + "}"
            }
            return "{\n" + members.map { inner + JSONValue.quote($0.0) + ": " + pretty($0.1, indent: inner) }
                .joined(separator: ",\n") + "\n" + indent + "}"
        default:
            return v.canonical
        }
    }

    /// Aligned text table.
    public static func grid(_ header: [String], _ rows: [[String]], rightAlign: Set<Int> = []) -> String {
        var widths = header.map { $0.count }
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in
                let pad = String(repeating: " ", count: max(0, widths[i] - c.count))
                return rightAlign.contains(i) ? pad + c : c + pad
            }.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }
        var out = [line(header), widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")]
        out += rows.map(line)
        return out.joined(separator: "\n") + "\n"
    }

    static func axis(_ j: JobSpec, _ a: JobAxes, _ value: String) -> String {
        j.method.axes.contains(a) ? value : "-"
    }

    public static func table(_ jobs: [JobView]) -> String {
        let metrics = metricColumns(jobs)
        let header = ["job", "task", "method", "layer", "λ", "γ", "seed", "state", "att"] + metrics + ["note"]
        let rows: [[String]] = jobs.map { j in
            let s = j.spec
            var note = j.error
            if j.state == .queued { note = j.pendingReason }
            if j.state == .running { note = j.worker + (j.total > 0 ? " step \(j.step)/\(j.total)" : "") }
            if j.state == .done { note = j.artefactSHA256.isEmpty ? "" : "Δ " + String(j.artefactSHA256.prefix(12)) }
            return [j.id, s.task, s.method.rawValue, axis(s, .layer, String(s.layer)), axis(s, .lambda, num(s.lambda)),
                    axis(s, .gamma, num(s.gamma)), String(s.seed), j.state.rawValue, String(j.attempt)]
                + metrics.map { j.metrics[$0].map { String(format: "%.3f", $0) } ?? "" } + [note]
        }
        let right = Set([3, 4, 5, 6, 8] + (0..<metrics.count).map { 9 + $0 })
        return grid(header, rows, rightAlign: right)
    }

    // MARK: summary over seeds

    public struct ConfigRow: Equatable {
        public var key: JobSpec          // seed set to 0
        public var total: Int
        public var done: Int
        public var failed: Int
        public var running: Int
        public var stats: [String: (mean: Double, std: Double, n: Int)]
        public static func == (a: ConfigRow, b: ConfigRow) -> Bool {
            a.key == b.key && a.total == b.total && a.done == b.done && a.failed == b.failed
                && a.running == b.running && a.stats.keys == b.stats.keys
                && a.stats.allSatisfy { k, v in b.stats[k].map { $0.mean == v.mean && $0.std == v.std && $0.n == v.n } ?? false }
        }
    }

    /// Groups jobs by configuration (every parameter but the seed) in first-seen order, with mean
    /// and sample standard deviation over the seeds that are done.
    public static func configurations(_ jobs: [JobView]) -> [ConfigRow] {
        var order: [JobSpec] = []
        var groups: [JobSpec: [JobView]] = [:]
        for j in jobs {
            var k = j.spec
            k.seed = 0
            if groups[k] == nil { order.append(k) }
            groups[k, default: []].append(j)
        }
        let metrics = Set(jobs.flatMap { $0.metrics.keys })
        return order.map { k in
            let g = groups[k]!
            var stats: [String: (Double, Double, Int)] = [:]
            for m in metrics {
                let xs = g.filter { $0.state == .done }.compactMap { $0.metrics[m] }.filter { $0.isFinite }
                guard !xs.isEmpty else { continue }
                let mean = xs.reduce(0, +) / Double(xs.count)
                let std = xs.count > 1
                    ? (xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(xs.count - 1)).squareRoot() : 0
                stats[m] = (mean, std, xs.count)
            }
            return ConfigRow(key: k, total: g.count, done: g.filter { $0.state == .done }.count,
                             failed: g.filter { $0.state == .failed }.count,
                             running: g.filter { $0.state == .running }.count, stats: stats)
        }
    }

    public static func meanStd(_ s: (mean: Double, std: Double, n: Int)?) -> String {
        guard let s else { return "" }
        return s.n > 1 ? String(format: "%.3f ± %.3f", s.mean, s.std) : String(format: "%.3f", s.mean)
    }

    /// A configuration's parameters besides task, method and seed, as tables name them: "" where
    /// the job's method has no such axis. The summary shows those that vary; `Comparison` labels
    /// its arms with them.
    public static let parameterColumns: [(String, (JobSpec) -> String)] = {
        typealias Column = (String, (JobSpec) -> String)
        var c: [Column] = []
        c.append(("model", { $0.model }))
        c.append(("layer", { axis($0, .layer, String($0.layer)) }))
        c.append(("λ", { axis($0, .lambda, num($0.lambda)) }))
        c.append(("γ", { axis($0, .gamma, num($0.gamma)) }))
        c.append(("steps", { axis($0, .solver, String($0.steps)) }))
        c.append(("lr", { axis($0, .solver, num($0.lr)) }))
        c.append(("solver", { axis($0, .solver, $0.solver?.rawValue ?? "") }))
        c.append(("precision", { axis($0, .solver, $0.precision?.rawValue ?? "") }))
        c.append(("train", { String($0.trainSize) }))
        c.append(("test", { String($0.testSize) }))
        c.append(("shots", { axis($0, .shots, String($0.shots)) }))
        c.append(("max_new_tokens", { String($0.maxNewTokens) }))
        c.append(("prompt", { $0.promptTemplate }))
        c.append(("target", { $0.targetTemplate }))
        // a tunable by its key, as grids and `--set` name it ("eval.delta_scale", "lora.lr")
        for t in Tunable.all {
            c.append((t.key, { axis($0, t.axis, t.names(of: $0[t])?.joined(separator: "+") ?? num($0[t])) }))
        }
        return c
    }()

    /// The per-configuration table: one row per configuration, mean ± std over seeds.
    public static func summary(_ jobs: [JobView]) -> String {
        let rows = configurations(jobs)
        let metrics = metricColumns(jobs)
        // Show the parameters that vary between configurations, plus task and method.
        var cols: [(String, (JobSpec) -> String)] = [("task", { $0.task }), ("method", { $0.method.rawValue })]
        for (name, f) in parameterColumns {
            let values = Set(rows.map { f($0.key) })
            if values.count > 1 || ["layer", "λ", "γ"].contains(name) { cols.append((name, f)) }
        }
        let header = cols.map { $0.0 } + ["seeds"] + metrics
        let body: [[String]] = rows.map { r in
            var seeds = "\(r.done)/\(r.total)"
            if r.failed > 0 { seeds += " (\(r.failed) failed)" }
            return cols.map { $0.1(r.key) } + [seeds] + metrics.map { meanStd(r.stats[$0]) }
        }
        let right = Set((cols.count...(cols.count + metrics.count)).map { $0 })
        return grid(header, body, rightAlign: right)
    }

    // MARK: progress

    public struct Counts: Equatable, Sendable {
        public var total = 0, queued = 0, running = 0, done = 0, failed = 0, cancelled = 0
        public var ended: Int { done + failed + cancelled }
        public var finished: Bool { total > 0 && ended == total }
    }

    public static func counts(_ jobs: [JobView]) -> Counts {
        var c = Counts()
        c.total = jobs.count
        for j in jobs {
            switch j.state {
            case .queued, .lost: c.queued += 1
            case .running: c.running += 1
            case .done: c.done += 1
            case .failed: c.failed += 1
            case .cancelled: c.cancelled += 1
            }
        }
        return c
    }

    public static func duration(_ s: Double) -> String {
        guard s.isFinite, s >= 0 else { return "?" }
        let t = Int(s.rounded())
        if t < 60 { return "\(t)s" }
        if t < 3600 { return "\(t / 60)m\(String(format: "%02d", t % 60))s" }
        return "\(t / 3600)h\(String(format: "%02d", (t % 3600) / 60))m"
    }

    /// `[#####-----] 12/40 ended (10 done, 2 failed) · 3 running · 25 queued · ETA 2m10s`
    public static func progressLine(_ c: Counts, eta: Double?, width: Int = 24) -> String {
        let filled = c.total > 0 ? Int((Double(c.ended) / Double(c.total) * Double(width)).rounded(.down)) : 0
        let bar = "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "]"
        var s = "\(bar) \(c.ended)/\(c.total) ended (\(c.done) done"
        if c.failed > 0 { s += ", \(c.failed) failed" }
        if c.cancelled > 0 { s += ", \(c.cancelled) cancelled" }
        s += ") · \(c.running) running · \(c.queued) queued"
        if c.finished { s += " · finished" } else if let eta { s += " · ETA " + duration(eta) }
        return s
    }

    /// Remaining time from the completion rate since `since` (Unix seconds), or nil if unknown.
    public static func eta(_ jobs: [JobView], since: Double, now: Double) -> Double? {
        let ended = jobs.compactMap { $0.ended }.filter { $0 >= since }.count
        let c = counts(jobs)
        let remaining = c.total - c.ended
        guard ended > 0, now > since, remaining > 0 else { return remaining == 0 ? 0 : nil }
        return Double(remaining) / (Double(ended) / (now - since))
    }
}
