import Foundation
import JobCore
import Protocol

/// One problem in a grid.json, located by its field path (`layers[2]`, `solver.steps`).
public struct GridError: Error, Equatable, CustomStringConvertible, Sendable {
    public var path: String
    public var message: String
    public init(_ path: String, _ message: String) { self.path = path; self.message = message }
    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// Every problem found in a grid (validation reports them all at once).
public struct GridErrors: Error, CustomStringConvertible, Sendable {
    public var errors: [GridError]
    /// The grid is valid but expands to more jobs than one submission may have.
    public var tooLarge = false
    public var description: String {
        "grid has \(errors.count) error\(errors.count == 1 ? "" : "s"):\n"
            + errors.map { "  " + $0.description }.joined(separator: "\n")
    }
}

/// A validated experiment grid (grid.json). `expand()` turns it into jobs.
///
/// ```json
/// { "experiment": "table1", "model": "smollm2-135m-instruct",
///   "tasks": ["antonym", "synonym"], "methods": ["zero-shot", "intervention"],
///   "layers": [3, 5], "lambda": [0.01], "gamma": [0.01], "seeds": [0, 1, 2],
///   "train_size": 10, "test_size": 50, "solver": {"steps": 60, "lr": 0.1, "precision": "fp32"},
///   "eval": {"max_new_tokens": 4}, "device": "any" }
/// ```
///
/// Jobs that read other jobs' artefacts get them from the grid: `function-vector` jobs read an
/// `fv-heads` job of their task and seed (added to the grid, one per task × seed, however many FV
/// settings share it), and `add` jobs read the Δs of `components`: for each task, the tasks whose
/// intervention Δs (at the add job's own layer, λ, γ, seed and solver settings; added to the grid
/// too, or reused from the store when they ran before) are summed, or job ids taken as they are:
///
/// ```json
/// { "tasks": ["composed/antonym_english-french.json"], "methods": ["add", "intervention"],
///   "components": {"composed/antonym_english-french.json": ["antonym.json", "english-french.json"]} }
/// ```
///
/// A task named "a_b" (file or registry name, one underscore) without an entry has components
/// "a" and "b" (registry names).
public struct Grid: Equatable, Sendable {
    public var experiment: String
    public var model: String
    public var tasks: [String]
    public var methods: [JobMethod]
    public var layers: [Int]
    public var lambdas: [Double]
    public var gammas: [Double]
    public var seeds: [Int]
    public var trainSize: Int
    public var testSize: Int
    public var steps: Int
    public var lr: Double
    public var maxNewTokens: Int
    public var shots: Int
    /// Solver for jobs that learn Δ (nil = the default, named in each job).
    public var solver: SolverMethod? = nil
    /// The solver's arithmetic for jobs that learn Δ (nil = the default, int8, named in each job).
    public var precision: Precision? = nil
    /// Prompt and target templates ("" = the Q/A default).
    public var promptTemplate: String = ""
    public var targetTemplate: String = ""
    public var device: DeviceRequirement
    /// `Tunable` parameters set in the grid (at their section's key), by key.
    public var tunables: [String: Double] = [:]
    /// What `add` jobs sum, per task: component tasks or job ids (see above); only tasks whose
    /// components are not inferred from their name.
    public var components: [String: [String]] = [:]

    /// Top-level keys, in the order the help text lists them.
    public static let keys = ["experiment", "model", "tasks", "methods", "layers", "lambda", "gamma", "seeds",
                              "train_size", "test_size", "shots", "solver", "eval", "prompt", "device", "components"]
        + tunableSections
    /// Sections that hold only `Tunable`s (a method's own parameters, e.g. "lora": {"rank": 8}).
    public static let tunableSections: [String] = {
        var seen: [String] = []
        for t in Tunable.all {
            let s = String(t.section)
            if !["solver", "eval"].contains(s) && !seen.contains(s) { seen.append(s) }
        }
        return seen
    }()
    public static let promptKeys = ["query", "target"]
    public static let solverKeys = ["steps", "lr", "method", "precision"] + tunableKeys("solver")
    public static let evalKeys = ["max_new_tokens"] + tunableKeys("eval")
    static func tunableKeys(_ section: String) -> [String] {
        Tunable.all.filter { $0.section == section }.map { String($0.name) }
    }
    /// A grid that expands to more jobs than this is refused, unless the coordinator says otherwise
    /// (serve --max-grid-jobs, `CoordinatorLimits.maxGridJobs`).
    public static let defaultMaxJobs = 100_000

    // MARK: parsing and validation

    /// Parses and validates grid.json text. Throws `GridErrors` with every problem found, or the
    /// one that it expands to more than `maxJobs` jobs (counted without expanding).
    public static func parse(_ text: String, maxJobs: Int = defaultMaxJobs) throws -> Grid {
        let root: JSONValue
        do {
            root = try JSONValue.parse(text)
        } catch let e as JSONValue.ParseError {
            throw GridErrors(errors: [GridError("", "not valid JSON at \(e)")])
        }
        var v = Validator()
        let grid = v.grid(root)
        if !v.errors.isEmpty { throw GridErrors(errors: v.errors) }
        let n = grid!.jobCount
        if n > maxJobs {
            throw GridErrors(errors: [GridError("", "the grid expands to \(n) jobs, more than the \(maxJobs) one "
                + "submission may have (coordinator serve --max-grid-jobs): split it into several experiments")],
                             tooLarge: true)
        }
        return grid!
    }

    public static func parse(contentsOf url: URL) throws -> Grid {
        let data = try Data(contentsOf: url)
        guard let text = String(data: data, encoding: .utf8) else {
            throw GridErrors(errors: [GridError("", "\(url.path) is not UTF-8 text")])
        }
        return try parse(text)
    }

    private struct Validator {
        var errors: [GridError] = []

        mutating func err(_ path: String, _ message: String) { errors.append(GridError(path, message)) }

        static func typeName(_ v: JSONValue) -> String { v.shortDescription }

        mutating func grid(_ root: JSONValue) -> Grid? {
            guard case .object(let members) = root else {
                err("", "expected a JSON object with the grid's fields, got \(root.shortDescription)")
                return nil
            }
            checkKeys(members, allowed: Grid.keys, prefix: "")
            let defaults = JobSpec(task: "")

            let experiment = string(root["experiment"], "experiment", required: true, pattern: true) ?? ""
            let model = string(root["model"], "model", required: false) ?? defaults.model
            let tasks = list(root["tasks"], "tasks", required: true, what: "a task name (non-empty string)") {
                Validator.nonEmptyString($0)
            } ?? []
            let methods = list(root["methods"], "methods", required: false, what: "a method name") { v -> JobMethod? in
                guard case .string(let s) = v else { return nil }
                return JobMethod(rawValue: s)
            } ?? [.intervention]
            let layers = list(root["layers"], "layers", required: false, what: "a non-negative integer") {
                Validator.int($0, min: 0, max: 4095)
            } ?? [defaults.layer]
            let lambdas = list(root["lambda"], "lambda", required: false, what: "a non-negative number") {
                Validator.double($0, min: 0)
            } ?? [defaults.lambda]
            let gammas = list(root["gamma"], "gamma", required: false, what: "a non-negative number") {
                Validator.double($0, min: 0)
            } ?? [defaults.gamma]
            let seeds = list(root["seeds"], "seeds", required: false, what: "a non-negative integer") {
                Validator.int($0, min: 0, max: Int(Int32.max))
            } ?? [defaults.seed]
            let trainSize = scalarInt(root["train_size"], "train_size", min: 1) ?? defaults.trainSize
            let testSize = scalarInt(root["test_size"], "test_size", min: 1) ?? defaults.testSize
            let shots = scalarInt(root["shots"], "shots", min: 0) ?? defaults.shots

            var steps = defaults.steps, lr = defaults.lr, maxNew = defaults.maxNewTokens, solverMethod = defaults.solver
            var precision = defaults.precision
            var tunables: [String: Double] = [:]
            if let solver = root["solver"] {
                if case .object(let m) = solver {
                    checkKeys(m, allowed: Grid.solverKeys, prefix: "solver.")
                    parseTunables(solver, section: "solver", into: &tunables)
                    steps = scalarInt(solver["steps"], "solver.steps", min: 0) ?? steps
                    if let v = solver["method"] {
                        if case .string(let s) = v, let m = SolverMethod(rawValue: s) { solverMethod = m } else {
                            err("solver.method", "expected one of \(SolverMethod.quotedNames), got \(v.shortDescription)")
                        }
                    }
                    if let v = solver["precision"] {
                        if case .string(let s) = v, let p = Precision(rawValue: s) { precision = p } else {
                            err("solver.precision", "expected one of \(Precision.quotedNames), got \(v.shortDescription)")
                        }
                    }
                    if let v = solver["lr"] {
                        if let d = Validator.double(v, min: 0), d > 0 { lr = d } else {
                            err("solver.lr", "expected a positive number, got \(v.shortDescription)")
                        }
                    }
                } else {
                    err("solver", "expected an object like {\"steps\": 200, \"lr\": 0.1}, got \(solver.shortDescription)")
                }
            }
            if let ev = root["eval"] {
                if case .object(let m) = ev {
                    checkKeys(m, allowed: Grid.evalKeys, prefix: "eval.")
                    parseTunables(ev, section: "eval", into: &tunables)
                    maxNew = scalarInt(ev["max_new_tokens"], "eval.max_new_tokens", min: 0) ?? maxNew
                } else {
                    err("eval", "expected an object like {\"max_new_tokens\": 4}, got \(ev.shortDescription)")
                }
            }
            for section in Grid.tunableSections {
                guard let v = root[section] else { continue }
                if case .object(let m) = v {
                    checkKeys(m, allowed: Grid.tunableKeys(section), prefix: section + ".")
                    parseTunables(v, section: section, into: &tunables)
                } else {
                    let example = Tunable.all.first { $0.section == section }
                        .map { "{\"\($0.name)\": \($0.defaultValue)}" }
                    err(section, "expected an object like \(example ?? "{}"), got \(v.shortDescription)")
                }
            }
            var promptTemplate = "", targetTemplate = ""
            if let pr = root["prompt"] {
                if case .object(let m) = pr {
                    checkKeys(m, allowed: Grid.promptKeys, prefix: "prompt.")
                    if let v = pr["query"] {
                        if case .string(let s) = v, s.contains("{input}") { promptTemplate = s } else {
                            err("prompt.query", "expected a string containing {input}, got \(v.shortDescription)")
                        }
                    }
                    if let v = pr["target"] {
                        if case .string(let s) = v, s.contains("{output}") { targetTemplate = s } else {
                            err("prompt.target", "expected a string containing {output}, got \(v.shortDescription)")
                        }
                    }
                } else {
                    err("prompt", "expected an object like {\"query\": \"Q: {input}\\nA:\", \"target\": \" {output}\"}, got \(pr.shortDescription)")
                }
            }
            var device = DeviceRequirement.any
            if let d = root["device"] {
                if case .string(let s) = d, let r = DeviceRequirement(rawValue: s) { device = r } else {
                    err("device", "expected \"cpu\", \"gpu\" or \"any\", got \(d.shortDescription)")
                }
            }
            if methods.contains(where: { $0.axes.contains(.shots) }), root["shots"] != nil || root["train_size"] != nil,
               shots > trainSize {
                err("shots", "few-shot (and function-vector) draws its \(shots) demonstrations from the training set, "
                        + "so shots must be at most train_size (\(trainSize))")
            }
            let components = self.components(root["components"], tasks: tasks, methods: methods)
            let opinionMethods = JobMethod.onOpinionTasks
            if tasks.contains(where: { JobSpec.opinionAddress($0) != nil }),
               let m = methods.first(where: { $0.family == .engine && !opinionMethods.contains($0) }) {
                err("methods", "\"\(m.rawValue)\" does not run on opinion tasks (\"file.json#group\"); on them only "
                        + opinionMethods.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
                        + " do: put the others in a grid of their own")
            }
            return Grid(experiment: experiment, model: model, tasks: tasks, methods: methods, layers: layers,
                        lambdas: lambdas, gammas: gammas, seeds: seeds, trainSize: trainSize, testSize: testSize,
                        steps: steps, lr: lr, maxNewTokens: maxNew, shots: shots, solver: solverMethod,
                        precision: precision, promptTemplate: promptTemplate, targetTemplate: targetTemplate,
                        device: device, tunables: tunables, components: components)
        }

        /// The `components` object, checked against the tasks; and every task of an `add` grid has
        /// components (given, or inferred from its name).
        mutating func components(_ v: JSONValue?, tasks: [String], methods: [JobMethod]) -> [String: [String]] {
            var out: [String: [String]] = [:]
            let adds = methods.contains(.add)
            if let v {
                guard case .object(let members) = v else {
                    err("components", "expected an object like {\"a_b.json\": [\"a.json\", \"b.json\"]}, got "
                            + v.shortDescription)
                    return out
                }
                if !adds { err("components", "only the add method reads components; put \"add\" in methods") }
                for (task, list) in members {
                    let path = "components.\(task)"
                    guard tasks.contains(task) else { err(path, "not one of the grid's tasks"); continue }
                    guard case .array(let items) = list,
                          case let names = items.compactMap(Validator.nonEmptyString), names.count == items.count
                    else {
                        err(path, "expected a list of task names or job ids, got \(list.shortDescription)")
                        continue
                    }
                    guard names.count >= 2 else {
                        err(path, "expected two or more task names or job ids to add, got \(names.count)")
                        continue
                    }
                    out[task] = names
                }
            }
            if adds {
                for t in tasks where out[t] == nil && Grid.inferredComponents(t) == nil {
                    err("components", "add needs the components of task \"\(t)\" (its name is not \"a_b\"): give "
                            + "\"components\": {\"\(t)\": [\"a\", \"b\"]} with task names or job ids")
                }
            }
            return out
        }

        /// The section's `Tunable`s that the grid sets, checked against their ranges.
        mutating func parseTunables(_ section: JSONValue, section name: String, into out: inout [String: Double]) {
            for t in Tunable.all where t.section == name {
                guard let v = section[String(t.name)] else { continue }
                if let choices = t.choices {  // a list of names
                    let text = { (i: JSONValue) -> String? in if case .string(let s) = i { s } else { nil } }
                    guard case .array(let items) = v, case let names = items.compactMap(text), names.count == items.count
                    else {
                        err(t.key, "expected a list of names like [\"\(choices[0])\"], got \(v.shortDescription)")
                        continue
                    }
                    do { out[t.key] = try t.value(names: names) } catch let e as JobSpecError { err(t.key, e.message) }
                    catch { err(t.key, "\(error)") }
                    continue
                }
                guard case .number(let d, _) = v else {
                    err(t.key, "expected a number, got \(v.shortDescription)")
                    continue
                }
                if let p = t.problem(with: d) { err(t.key, p) } else { out[t.key] = d }
            }
        }

        mutating func checkKeys(_ members: [(String, JSONValue)], allowed: [String], prefix: String) {
            var seen = Set<String>()
            for (k, _) in members {
                if !seen.insert(k).inserted {
                    err(prefix + k, "duplicate key")
                    continue
                }
                if !allowed.contains(k) {
                    var msg = "unknown key"
                    if let near = allowed.min(by: { editDistance($0, k) < editDistance($1, k) }),
                       editDistance(near, k) <= 2 {
                        msg += " (did you mean \"\(near)\"?)"
                    }
                    msg += "; expected one of " + allowed.joined(separator: ", ")
                    err(prefix + k, msg)
                }
            }
        }

        mutating func string(_ v: JSONValue?, _ path: String, required: Bool, pattern: Bool = false) -> String? {
            guard let v else {
                if required { err(path, "required; expected a non-empty string") }
                return nil
            }
            guard case .string(let s) = v, !s.isEmpty else {
                err(path, "expected a non-empty string, got \(v.shortDescription)")
                return nil
            }
            if pattern && !Grid.isValidName(s) {
                err(path, "expected a name of letters, digits, '.', '_' or '-' (at most 64, starting with a letter or digit), got \(v.shortDescription)")
                return nil
            }
            return s
        }

        static func nonEmptyString(_ v: JSONValue) -> String? {
            if case .string(let s) = v, !s.trimmingCharacters(in: .whitespaces).isEmpty { return s }
            return nil
        }

        static func int(_ v: JSONValue, min: Int, max: Int) -> Int? {
            guard case .number(let d, _) = v, d == d.rounded(), d >= Double(min), d <= Double(max) else { return nil }
            return Int(d)
        }

        static func double(_ v: JSONValue, min: Double) -> Double? {
            guard case .number(let d, _) = v, d >= min else { return nil }
            return d
        }

        mutating func scalarInt(_ v: JSONValue?, _ path: String, min: Int) -> Int? {
            guard let v else { return nil }
            guard let i = Validator.int(v, min: min, max: Int(Int32.max)) else {
                err(path, "expected \(min == 0 ? "a non-negative" : "a positive") integer, got \(v.shortDescription)")
                return nil
            }
            return i
        }

        /// A list-valued field: a non-empty list of items, or one scalar item. Reports every bad
        /// item with its index, and duplicates.
        mutating func list<T: Equatable>(_ v: JSONValue?, _ path: String, required: Bool, what: String,
                                         _ item: (JSONValue) -> T?) -> [T]? {
            guard let v else {
                if required { err(path, "required; expected \(what) or a list of them") }
                return nil
            }
            let expected: String
            if path == "methods" {
                expected = "expected one of " + JobMethod.quotedNames
            } else {
                expected = "expected \(what)"
            }
            guard case .array(let items) = v else {
                if case .object = v { err(path, "expected \(what) or a list of them, got an object"); return nil }
                guard let x = item(v) else { err(path, "\(expected), got \(v.shortDescription)"); return nil }
                return [x]
            }
            if items.isEmpty {
                err(path, "expected a non-empty list, got an empty list")
                return nil
            }
            var out: [T] = []
            var firstIndex: [Int] = []
            var ok = true
            for (i, x) in items.enumerated() {
                guard let t = item(x) else {
                    err("\(path)[\(i)]", "\(expected), got \(x.shortDescription)")
                    ok = false
                    continue
                }
                if let j = out.firstIndex(of: t) {
                    err("\(path)[\(i)]", "duplicate of \(path)[\(firstIndex[j])] (\(x.shortDescription))")
                    ok = false
                    continue
                }
                out.append(t)
                firstIndex.append(i)
            }
            return ok ? out : nil
        }
    }

    /// Experiment names: 1-64 ASCII letters, digits, '.', '_', '-', starting with a letter or digit.
    public static func isValidName(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard (1...64).contains(u.count) else { return false }
        func alnum(_ c: UInt8) -> Bool {
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122)
        }
        return alnum(u[0]) && u.allSatisfy { alnum($0) || $0 == 46 || $0 == 95 || $0 == 45 }
    }

    // MARK: expansion

    /// A task named "a_b" (one underscore, ".json" dropped from a file's name): ["a", "b"].
    static func inferredComponents(_ task: String) -> [String]? {
        var name = URL(fileURLWithPath: task).lastPathComponent
        if name.hasSuffix(".json") { name.removeLast(5) }
        let parts = name.split(separator: "_", omittingEmptySubsequences: false).map(String.init)
        return parts.count == 2 && parts.allSatisfy { !$0.isEmpty } ? parts : nil
    }

    /// What an `add` job on `task` sums: its components.
    public func components(of task: String) -> [String] {
        components[task] ?? Grid.inferredComponents(task) ?? []
    }

    /// A job id as `components` may name one: 16 lowercase hex digits.
    static func isJobID(_ s: String) -> Bool {
        s.utf8.count == 16 && s.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    /// The jobs of this grid: the Cartesian product tasks × methods × layers × λ × γ × seeds, with the
    /// axes a method ignores collapsed (so a zero-shot baseline gives one job per task × seed), in a
    /// stable order, without duplicates.
    public func expand() -> [SubmittedJob] {
        var out: [SubmittedJob] = []
        var seen = Set<String>()
        for task in tasks {
            for method in methods {
                let axes = method.axes
                let ls = axes.contains(.layer) ? layers : [0]
                let lams = axes.contains(.lambda) ? lambdas : [0]
                let gams = axes.contains(.gamma) ? gammas : [0]
                for layer in ls {
                    for lam in lams {
                        for gam in gams {
                            for seed in seeds {
                                var raw = JobSpec(
                                    model: model, task: task, method: method, layer: layer, lambda: lam,
                                    gamma: gam, seed: seed, trainSize: trainSize, testSize: testSize,
                                    steps: steps, lr: lr, maxNewTokens: maxNewTokens, shots: shots, solver: solver,
                                    precision: precision, promptTemplate: promptTemplate,
                                    targetTemplate: targetTemplate)
                                raw.tunables = tunables   // validated by parse
                                // the jobs whose artefacts it reads come first
                                func emit(_ s: JobSpec) -> String {
                                    let spec = s.normalised
                                    let id = spec.id
                                    if seen.insert(id).inserted {
                                        out.append(SubmittedJob(id: id, spec: spec, device: device))
                                    }
                                    return id
                                }
                                switch method {
                                case .functionVector:
                                    var ranking = raw
                                    ranking.method = .fvHeads
                                    raw.inputs = [emit(ranking)]
                                case .add:
                                    raw.inputs = components(of: task).map { c in
                                        if Grid.isJobID(c) { return c }
                                        var delta = raw
                                        delta.method = .intervention
                                        delta.task = c
                                        return emit(delta)
                                    }
                                default: break
                                }
                                _ = emit(raw)
                            }
                        }
                    }
                }
            }
        }
        return out
    }

    /// How many jobs `expand()` gives, computed without expanding (at most Int.max: a grid's
    /// lists may multiply past it). With `add`, at most that many: an add job's component jobs
    /// are counted with it, also where another cell of the grid has the same.
    public var jobCount: Int {
        func times(_ a: Int, _ b: Int) -> Int {
            let (p, over) = a.multipliedReportingOverflow(by: b)
            return over ? .max : p
        }
        return methods.reduce(0) { sum, m in
            let a = m.axes
            var n = [tasks.count, seeds.count, a.contains(.layer) ? layers.count : 1,
                     a.contains(.lambda) ? lambdas.count : 1, a.contains(.gamma) ? gammas.count : 1].reduce(1, times)
            switch m {
            case .functionVector: n = n == .max ? n : n + times(tasks.count, seeds.count)  // the rankings
            case .add: n = times(n, 1 + tasks.map { components(of: $0).count }.max()!)
            default: break
            }
            let (s, over) = sum.addingReportingOverflow(n)
            return over ? .max : s
        }
    }
}

/// Levenshtein distance, for "did you mean" hints.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var prev = Array(0...b.count)
    var cur = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        cur[0] = i
        for j in 1...b.count {
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&prev, &cur)
    }
    return prev[b.count]
}
