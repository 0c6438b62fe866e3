import ArgumentParser
import Engine
import Foundation

/// `worker opinion`: steer the model's answers to multiple-choice survey questions towards one
/// population's answer distribution (OpinionQA), on this machine.
public struct OpinionCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "opinion",
        abstract: "Learn Δ that makes the model answer survey questions like one population, and measure it.",
        discussion: """
        Splits the group's questions by --seed into --train training and --test test questions, \
        learns a sparse Δ minimising the mean KL(p_Δ restricted to the answer letters ‖ the group's \
        answer distribution) + γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂, then reports, on the test questions, the \
        alignment 1 − W₁/(span of the ordinal scale) (OpinionQA's measure, 1 = identical) and the KL, \
        with Δ and without, and the alignment with every other group's answers on the same questions \
        (is the change specific to the target group?).

        The data file has the OpinionQA layout: {"questions": [{"qkey", "question", "options", \
        "option_ordinal", "dist": {"<group>": [share per option]}}]} (e.g. \
        ../shared/data/opinionqa/opinionqa_4groups.json).

        Examples:
          worker opinion --data opinionqa_4groups.json --group Northeast --layer 4 --seed 0
          worker opinion --data opinionqa_4groups.json --group "Less than $30,000" --train 20 --json
        """)

    @OptionGroup public var modelOptions: ModelOptions
    @Option(name: .long, help: ArgumentHelp("Questions with group distributions (OpinionQA layout).", valueName: "path"))
    public var data: String
    @Option(name: .long, help: "The population whose answers Δ should match (a key of each question's \"dist\").")
    public var group: String
    @Option(name: .long, help: "Layer whose head outputs Δ is added to (0-based).")
    public var layer: Int = 4
    @Option(name: .long, help: "Split seed.")
    public var seed: Int = 0
    @Option(name: .long, help: "Training questions.")
    public var train: Int = 10
    @Option(name: .long, help: "Test questions (0 = all that remain).")
    public var test: Int = 200
    @OptionGroup public var solve: SolveOptions
    @Option(name: .long, help: "Folder for the Δ artefact (<sha256>.safetensors).")
    public var out: String = "runs"
    @Flag(name: .long, help: "Print a JSON object as the last line of stdout.")
    public var json = false

    public init() {}

    public func validate() throws {
        guard train >= 1 else { throw ValidationError("--train must be at least 1") }
        guard test >= 0 else { throw ValidationError("--test must be 0 (all) or more") }
    }

    public func run() throws {
        let bar = ProgressLine()
        let task: OpinionTask
        do { task = try OpinionTask.load(path: data) } catch { throw CLIError((error as? LocalizedError)?.errorDescription ?? "\(error)") }
        bar.show("loading \(modelOptions.model)…", force: true)
        let lm = try modelOptions.load()
        let t0 = Date()
        let steps = solve.steps
        let outcome: DeltaOutcome
        do {
            let problem = try task.problem(lm: lm, group: group, layer: layer, seed: seed, train: train, test: test, data: data)
            outcome = try DeltaPipeline(lm: lm).run([problem], settings: solve.settings(layer: layer), hooks: .init(onStep: { _, s in
                bar.show("solve \(s.step)/\(steps)  KL \(String(format: "%.4f", s.loss))  nonzero \(s.nonzeros)  heads \(s.activeHeads)")
            }))[0]
        } catch let e as OpinionTaskError { throw CLIError(e.errorDescription ?? "\(e)") }
        catch let e as EngineJobError { throw CLIError(e.message) }
        bar.done()
        let path = try saveArtefact(outcome.artefact.data, in: out)
        let m = outcome.metrics, last = outcome.result.final
        let alignment = m["alignment"] ?? .nan, zeroShotAlignment = m["zero_shot_alignment"] ?? .nan
        let byGroup = OpinionTask.alignmentByGroup(m), zeroShotByGroup = OpinionTask.alignmentByGroup(m, prefix: "zero_shot_")
        let obj: [String: Any] = [
            "group": group, "layer": layer, "seed": seed, "n_train": Int(m["n_train"] ?? 0), "n_test": Int(m["n_test"] ?? 0),
            "solver": solve.solver.rawValue, "precision": outcome.artefact.metadata.precision,
            "alignment": alignment, "zero_shot_alignment": zeroShotAlignment, "kl": m["kl"] ?? .nan, "zero_shot_kl": m["zero_shot_kl"] ?? .nan,
            "final_loss": Double(last.loss), "initial_loss": m["initial_loss"] ?? .nan,
            "nonzero": last.nonzeros, "active_heads": last.activeHeads, "delta_path": path,
            "total_ms": Date().timeIntervalSince(t0) * 1000,
            "alignment_by_group": byGroup, "zero_shot_alignment_by_group": zeroShotByGroup,
        ]
        print("group \(group)  layer \(layer)  seed \(seed)  (\(Int(m["n_train"] ?? 0)) training, \(Int(m["n_test"] ?? 0)) test questions)")
        print("                 alignment   KL")
        print(String(format: "with Δ           %.4f      %.4f", alignment, m["kl"] ?? .nan))
        print(String(format: "without Δ        %.4f      %.4f", zeroShotAlignment, m["zero_shot_kl"] ?? .nan))
        print("Δ: \(last.nonzeros) non-zero, \(last.activeHeads) heads → \(path)")
        if byGroup.count > 1 {
            print("alignment with each group's answers (same test questions):")
            for g in byGroup.keys.sorted() {
                print(String(format: "  %@ %.4f → %.4f%@", g.padding(toLength: 24, withPad: " ", startingAt: 0),
                             zeroShotByGroup[g] ?? .nan, byGroup[g]!, g == group ? "   (target)" : ""))
            }
        }
        if json { print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self)) }
    }
}
