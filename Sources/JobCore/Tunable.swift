/// A numeric job parameter declared once, here, and then everywhere at once: a grid key
/// (`section.name` in grid.json), a `--set section.name=value` option of `worker run` and
/// `worker bench`, an entry of the wire's `JobParams.tunables`, and part of the job id when it
/// differs from its default. Adding one is a line in `Tunable.all` plus the code that reads it
/// (`spec[.name]`).
public struct Tunable: Sendable, Hashable {
    /// The grid path, "section.name" (e.g. "eval.delta_scale").
    public let key: String
    public let help: String
    public let defaultValue: Double
    /// Accepted values (inclusive).
    public let range: ClosedRange<Double>
    /// Whether only whole numbers are accepted.
    public let integer: Bool
    /// The axis it belongs to: for methods without that axis it is dropped (and not part of the id).
    public let axis: JobAxes
    /// A set-valued tunable: the names it chooses from, the value being the bit mask of the chosen
    /// names (bit i = `choices[i]`). Grids give a list of names, `--set` a comma-separated one.
    public let choices: [String]?

    public init(
        _ key: String, default defaultValue: Double, range: ClosedRange<Double>, integer: Bool = false,
        axis: JobAxes, help: String
    ) {
        self.key = key
        self.defaultValue = defaultValue
        self.range = range
        self.integer = integer
        self.axis = axis
        self.help = help
        self.choices = nil
    }

    /// A set-valued tunable over `choices`, by default the set `defaultNames`.
    public init(_ key: String, choices: [String], default defaultNames: [String], axis: JobAxes, help: String) {
        self.key = key
        self.choices = choices
        self.defaultValue = Double(defaultNames.reduce(0) { $0 | (1 << choices.firstIndex(of: $1)!) })
        self.range = 1...Double((1 << choices.count) - 1)
        self.integer = true
        self.axis = axis
        self.help = help
    }

    /// The value of a set of names, or an error naming the unknown one and the choices.
    public func value(names: [String]) throws -> Double {
        guard let choices else { throw JobSpecError(field: key, message: "expected a number, got a list of names") }
        guard !names.isEmpty else { throw JobSpecError(field: key, message: "expected at least one of \(choices)") }
        var mask = 0
        for n in names {
            guard let i = choices.firstIndex(of: n) else {
                throw JobSpecError(
                    field: key, message: "unknown name \"\(n)\"; expected some of \(choices.joined(separator: ", "))")
            }
            mask |= 1 << i
        }
        return Double(mask)
    }

    /// The names a set-valued tunable's value chooses (nil for a numeric one).
    public func names(of value: Double) -> [String]? {
        choices.map { c in c.indices.filter { Int(value) & (1 << $0) != 0 }.map { c[$0] } }
    }

    /// A value as grids and artefacts write it: its names, comma-separated, or the number.
    public func display(_ value: Double) -> String { names(of: value)?.joined(separator: ",") ?? "\(value)" }

    public static func == (a: Tunable, b: Tunable) -> Bool { a.key == b.key }
    public func hash(into h: inout Hasher) { h.combine(key) }

    /// The grid section ("eval") and the name within it ("delta_scale").
    public var section: Substring { key.prefix(while: { $0 != "." }) }
    public var name: Substring { key.drop(while: { $0 != "." }).dropFirst() }

    /// Why `value` is not acceptable, or nil.
    public func problem(with value: Double) -> String? {
        guard value.isFinite, range.contains(value) else {
            return
                "expected \(integer ? "an integer" : "a number") in \(fmt(range.lowerBound))…\(fmt(range.upperBound)), got \(fmt(value))"
        }
        if integer && value != value.rounded() { return "expected an integer, got \(fmt(value))" }
        return nil
    }

    private func fmt(_ d: Double) -> String { d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : "\(d)" }

    public static func named(_ key: String) throws -> Tunable {
        guard let t = all.first(where: { $0.key == key }) else {
            throw JobSpecError(
                field: key, message: "unknown parameter; known: \(all.map(\.key).joined(separator: ", "))")
        }
        return t
    }
}

extension Tunable {
    /// Evaluate with s·Δ instead of Δ (the artefact keeps the learned Δ). A learned Δ's size is not
    /// what the objective alone decides at N = 10 (see issue 12's measurements): this is the
    /// knob for asking whether a larger or smaller one generalises better.
    public static let deltaScale = Tunable(
        "eval.delta_scale", default: 1, range: 0...1000, axis: .solver,
        help: "Evaluate with s·Δ instead of the learned Δ (the artefact keeps Δ).")

    /// Early stopping: the solver stops once the objective's relative change over the last 10
    /// steps is at most this (0 = run every step). Fused jobs stop when all have converged.
    public static let tolerance = Tunable(
        "solver.tolerance", default: 0, range: 0...1, axis: .solver,
        help: "Stop once the objective changes by at most this fraction over 10 steps (0 = run every step).")

    /// The evaluation's products in int8, as the solver's (`Precision.int8`; attention and the
    /// decoding's choices stay fp32). Off by default: the metric change it causes is measured in
    /// README ("Evaluation in int8").
    public static let evalInt8 = Tunable(
        "eval.int8", default: 0, range: 0...1, integer: true, axis: .evalInt8,
        help: "1: run the evaluation's products in int8, as the solver's (faster; see README, Evaluation in int8).")

    public static let loraRank = Tunable(
        "lora.rank", default: 4, range: 1...256, integer: true, axis: .lora,
        help: "LoRA's rank r (the lora method).")
    public static let loraAlpha = Tunable(
        "lora.alpha", default: 8, range: 0.001...10000, axis: .lora,
        help: "LoRA's α: the update is scaled by α/r (the lora method).")
    /// The projections LoRA adapts in every layer (the names of `LoRA.Target`).
    public static let loraTargets = Tunable(
        "lora.targets", choices: ["q", "k", "v", "o", "gate", "up", "down"], default: ["q", "k", "v", "o"], axis: .lora,
        help: "Projections LoRA adapts, some of q, k, v, o, gate, up, down (the lora method).")
    public static let loraLR = Tunable(
        "lora.lr", default: 0.001, range: 1e-7...10, axis: .lora,
        help: "Adam's learning rate for LoRA (the lora method; Δ's solver.lr is 100× larger).")

    public static let ia3LR = Tunable(
        "ia3.lr", default: 0.003, range: 1e-7...10, axis: .ia3,
        help: "Adam's learning rate for IA³ (the ia3 method; the IA³ paper's 3e-3, not tuned here).")

    public static let softPromptTokens = Tunable(
        "soft_prompt.tokens", default: 8, range: 1...256, integer: true, axis: .softPrompt,
        help: "Virtual tokens of the soft prompt (the soft-prompt method).")
    public static let softPromptLR = Tunable(
        "soft_prompt.lr", default: 0.01, range: 1e-7...10, axis: .softPrompt,
        help: "Adam's learning rate for the soft prompt (the soft-prompt method; not tuned here).")

    /// How many heads a function vector sums (Todd et al. use 10 on GPT-J's 448).
    public static let fvHeads = Tunable(
        "fv.heads", default: 10, range: 1...100_000, integer: true, axis: .functionVector,
        help: "Attention heads summed into the function vector, by indirect effect (the function-vector method).")
    /// Where the function vector is added; −1 = ⌊L/3⌋, the paper's choice, recorded in `fv_layer`.
    public static let fvLayer = Tunable(
        "fv.layer", default: -1, range: -1...100_000, integer: true, axis: .functionVector,
        help: "Block whose input gets the function vector (-1 = a third of the way up; the function-vector method).")
    /// The ICV's strength α (the authors' default 0.1).
    public static let icvAlpha = Tunable(
        "icv.alpha", default: 0.1, range: 0...100, axis: .icv,
        help: "Strength α of the in-context vector's shift at every layer (the icv method).")

    /// Every tunable, in the order help texts list them.
    public static let all: [Tunable] = [
        deltaScale, tolerance, evalInt8, loraRank, loraAlpha, loraTargets, loraLR, ia3LR,
        softPromptTokens, softPromptLR,
        fvHeads, fvLayer, icvAlpha,
    ]
}

extension JobSpec {
    /// A tunable's value for this job (its default when the job does not set it).
    public subscript(_ t: Tunable) -> Double { tunables[t.key] ?? t.defaultValue }

    /// The tunables the job sets, as artefacts record them (names for a set-valued one).
    public var tunableTexts: [String: String] {
        Dictionary(uniqueKeysWithValues: tunables.map { k, v in (k, (try? Tunable.named(k))?.display(v) ?? "\(v)") })
    }

    /// Sets a tunable, checking its range; the default value is stored as absent.
    public mutating func set(_ t: Tunable, _ value: Double) throws {
        if let p = t.problem(with: value) { throw JobSpecError(field: t.key, message: p) }
        tunables[t.key] = value == t.defaultValue ? nil : value
    }
}
