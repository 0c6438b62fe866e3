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
        guard layer >= 0 && layer < lm.config.nLayers else { throw CLIError("layer \(layer) is outside 0…\(lm.config.nLayers - 1)") }
        let t0 = Date()
        let pen = solve.penalty(lm.config), steps = solve.steps
        let r: OpinionRun
        do {
            r = try lm.runOpinion(task: task, group: group, layer: layer, seed: seed, train: train, test: test, penalty: pen,
                                  options: solve.options) { s in
                bar.show("solve \(s.step)/\(steps)  KL \(String(format: "%.4f", s.loss))  nonzero \(s.nonzeros)  heads \(s.activeHeads)")
            }
        } catch let e as OpinionTaskError { throw CLIError(e.errorDescription ?? "\(e)") }
        bar.done()
        let md = ["model": lm.name, "model_sha256": (try? lm.sha256()) ?? "", "task": "opinion:\(group)", "data": data,
                  "layer": "\(layer)", "seed": "\(seed)", "lambda": "\(solve.lambda)", "gamma": "\(solve.gamma)",
                  "steps": "\(steps)", "solver": solve.solver.rawValue, "precision": solve.precision.effective.rawValue, "final_loss": "\(r.history.last?.loss ?? .nan)",
                  "heads": "\(lm.config.nHeads)", "head_dim": "\(lm.config.headDim)"]
        let art = Safetensors.write(tensors: [("delta", [lm.config.attnDim], r.delta)], metadata: md)
        let path = try saveArtefact(art, in: out)
        let last = r.history.last!
        let obj: [String: Any] = [
            "group": group, "layer": layer, "seed": seed, "n_train": r.nTrain, "n_test": r.nTest, "solver": solve.solver.rawValue,
            "precision": solve.precision.effective.rawValue,
            "alignment": r.alignment, "zero_shot_alignment": r.zeroShotAlignment, "kl": r.kl, "zero_shot_kl": r.zeroShotKL,
            "final_loss": Double(last.loss), "initial_loss": Double(r.history.first?.loss ?? .nan),
            "nonzero": last.nonzeros, "active_heads": last.activeHeads, "delta_path": path,
            "total_ms": Date().timeIntervalSince(t0) * 1000,
            "alignment_by_group": r.alignmentByGroup, "zero_shot_alignment_by_group": r.zeroShotAlignmentByGroup,
        ]
        print("group \(group)  layer \(layer)  seed \(seed)  (\(r.nTrain) training, \(r.nTest) test questions)")
        print("                 alignment   KL")
        print(String(format: "with Δ           %.4f      %.4f", r.alignment, r.kl))
        print(String(format: "without Δ        %.4f      %.4f", r.zeroShotAlignment, r.zeroShotKL))
        print("Δ: \(last.nonzeros) non-zero, \(last.activeHeads) heads → \(path)")
        if r.alignmentByGroup.count > 1 {
            print("alignment with each group's answers (same test questions):")
            for g in r.alignmentByGroup.keys.sorted() {
                print(String(format: "  %@ %.4f → %.4f%@", g.padding(toLength: 24, withPad: " ", startingAt: 0),
                             r.zeroShotAlignmentByGroup[g] ?? .nan, r.alignmentByGroup[g]!, g == group ? "   (target)" : ""))
            }
        }
        if json { print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self)) }
    }
}
