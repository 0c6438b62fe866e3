import ArgumentParser
import Engine
import Foundation
import JobCore

/// Loads and checks `--delta` artefacts against a model: shared by generate, evaluate and export.
struct DeltaOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("A Δ artefact (repeatable).", valueName: "path"))
    var delta: [String] = []

    @Option(name: .long, help: "Multiply every Δ by this factor.")
    var scale: Float = 1

    func validate() throws {
        guard scale.isFinite else { throw ValidationError("--scale must be a finite number") }
    }

    func artefacts() throws -> [(name: String, artefact: DeltaArtefact)] {
        try delta.map { path in
            guard let data = FileManager.default.contents(atPath: path) else {
                throw CLIError("cannot read --delta \(path)")
            }
            do { return (path, try DeltaArtefact(data: data)) } catch {
                throw CLIError("\(path) is not a Δ artefact: \(error)")
            }
        }
    }

    /// The artefacts (read before the model loads, so a bad file fails fast) as one steering.
    func steering(
        _ lm: LanguageModel, _ a: [(name: String, artefact: DeltaArtefact)], positions: DeltaPositions = .last
    ) throws -> Steering? {
        if a.isEmpty { return nil }
        do { return try Steering(artefacts: a, model: lm, scale: scale, positions: positions) } catch {
            throw CLIError("\(error)")
        }
    }
}

/// `worker export`: a Δ in the forms llama.cpp loads.
public struct ExportCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export learned Δs for llama.cpp: a control vector, or a model copy with an o_proj bias.",
        discussion: """
            llama.cpp has no o_proj-input site and no last-token policy, so each form changes what Δ \
            does (`worker evaluate --forms` measures by how much):
              control-vector  a GGUF with direction.ℓ = W_O·Δ, added by llama.cpp to the residual stream \
            leaving block ℓ at every position (`llama-cli --control-vector FILE`; layer 0 has no such form).
              bias            a copy of the model GGUF with blk.ℓ.attn_output.bias = W_O·Δ: Δ's own site, at \
            every position (`--positions all` here).
            Both need a family whose residual stream takes o_proj's output as it is \
            (llama, mistral); Gemma 3 normalises it first, so its Δs are refused here.

            Examples:
              worker export --delta runs/3f…e1.safetensors --format control-vector --out antonym-cv.gguf
              worker export --delta runs/3f…e1.safetensors --format bias --out smollm2-antonym.gguf
            """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var deltas: DeltaOptions

    @Option(name: .long, help: "control-vector or bias.")
    var format: String = "control-vector"

    @Option(name: .long, help: ArgumentHelp("The GGUF file to write.", valueName: "path"))
    var out: String

    public init() {}

    public func validate() throws {
        guard ["control-vector", "bias"].contains(format) else {
            throw ValidationError("--format must be control-vector or bias, not \"\(format)\"")
        }
        guard !deltas.delta.isEmpty else { throw ValidationError("give at least one --delta") }
    }

    public func run() throws {
        let arts = try deltas.artefacts()
        let lm = try modelOptions.load()
        guard let s = try deltas.steering(lm, arts) else { return }
        do {
            if format == "control-vector" {
                try DeltaExport.controlVector(s, model: lm).write(to: URL(fileURLWithPath: out), options: .atomic)
            } else {
                try DeltaExport.modelWithBias(s, model: lm).write(to: out)
            }
        } catch let e as DeltaExport.ExportError { throw CLIError(e.description) }
        let layers = s.byLayer.keys.sorted().map(String.init).joined(separator: ", ")
        print("wrote \(out) (\(format), layer \(layers), scale \(deltas.scale))")
    }
}

/// `worker evaluate`: a stored Δ on its own task's test split, in each form it can be used in.
public struct EvaluateCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "evaluate",
        abstract: "Score stored Δs on their task's test split, as learned and in the forms other tools run.",
        discussion: """
            Rebuilds each artefact's split (its task, seed and train size; --task and --test override) \
            and decodes the test set greedily, scored as jobs are (exact match, first-token accuracy, \
            judge accuracy), once per form:
              native          Δ at the prompt's last token, as learned
              all             Δ at every position (= llama.cpp with the o_proj bias of `worker export --format bias`)
              control-vector  W_O·Δ on the residual leaving block ℓ, every position (= llama.cpp's control vector)
              last+generated  Δ at the prompt's last token and at every generated token
              none            no Δ

            With --sum, the Δs are added (composition: Δ_a + Δ_b, each at its own layer) and the sum is \
            scored once, on --task (e.g. a composed task), split by the Δs' common seed.

            Examples:
              worker evaluate --delta runs/3f…e1.safetensors
              worker evaluate --delta a.safetensors --delta b.safetensors --forms native,control-vector --json
              worker evaluate --sum --delta antonym.safetensors --delta english-french.safetensors \\
                --task ../shared/data/function_vectors/composed/antonym_english-french.json --forms native,none
            """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var deltas: DeltaOptions

    @Option(name: .long, help: "Comma-separated forms: native, all, control-vector, last+generated, none.")
    var forms: String = "native,all,control-vector,none"

    @Option(name: .long, help: "Test pairs (0 = all that remain after the training pairs).")
    var test: Int = 200

    @Option(name: .long, help: "Score on this task instead of the artefact's (a name or a JSON file of pairs).")
    var task: String?

    @Flag(name: .long, help: "Score the sum of the Δs (composition) once, on --task, instead of each Δ.")
    var sum = false

    @Flag(name: .long, help: "Print one JSON object per artefact instead of a table.")
    var json = false

    public init() {}

    static let formNames = ["native", "all", "control-vector", "last+generated", "none"]

    public func validate() throws {
        let fs = forms.split(separator: ",").map(String.init)
        guard !fs.isEmpty, fs.allSatisfy(Self.formNames.contains) else {
            throw ValidationError("--forms takes \(Self.formNames.joined(separator: ", ")), not \"\(forms)\"")
        }
        guard !deltas.delta.isEmpty else { throw ValidationError("give at least one --delta") }
        guard test >= 0 else { throw ValidationError("--test must be ≥ 0") }
        if sum {
            guard deltas.delta.count >= 2 else { throw ValidationError("--sum adds two or more --delta artefacts") }
            guard task != nil else { throw ValidationError("--sum needs --task: the task the sum is scored on") }
        }
    }

    public func run() throws {
        let arts = try deltas.artefacts()
        let lm = try modelOptions.load()
        let registry = TaskRegistry()
        let fs = forms.split(separator: ",").map(String.init)
        // each Δ alone, or (--sum) their sum once, split as the first one's (all must agree)
        let units: [(name: String, parts: [(name: String, artefact: DeltaArtefact)])]
        if sum {
            let m0 = arts[0].artefact.metadata
            if let odd = arts.first(where: { $0.artefact.metadata.seed != m0.seed
                                        || $0.artefact.metadata.trainSize != m0.trainSize }) {
                let mo = odd.artefact.metadata
                throw CLIError("--sum: \(odd.name) was learned on split seed \(mo.seed), train size \(mo.trainSize); "
                    + "\(arts[0].name) on \(m0.seed), \(m0.trainSize): add Δs of one split")
            }
            units = [("sum of " + arts.map(\.name).joined(separator: " + "), arts)]
        } else {
            units = arts.map { ($0.name, [$0]) }
        }
        for (name, parts) in units {
            let md = parts[0].artefact.metadata
            let native = try deltas.steering(lm, parts)!
            let taskRef = task ?? md.task
            let pairs: [TaskPair]
            let judge: Judge
            do {
                pairs = try registry.load(taskRef)
                judge = try registry.judge(for: taskRef)
            } catch {
                throw CLIError("\(name): cannot load its task \(taskRef): \(error) (give --task)")
            }
            let split = TaskSplit(pairs: pairs, seed: md.seed, trainSize: md.trainSize, testSize: test)
            let format = PromptFormat(
                query: md.extra["prompt_format"] ?? PromptFormat.qa.query,
                target: md.extra["target_format"] ?? PromptFormat.qa.target, demo: PromptFormat.qa.demo)
            let prompts = split.test.map { format.prompt($0.input) }
            var rows: [(String, Evaluation)] = []
            for f in fs {
                var s: Steering? = native
                switch f {
                case "all": s!.positions = .all
                case "last+generated": s!.positions = .lastAndGenerated
                case "control-vector": s = native.asControlVector(lm)
                case "none": s = nil
                default: break
                }
                rows.append(
                    (f, lm.evaluate(prompts: prompts, pairs: split.test, format: format, steering: s, judge: judge)))
            }
            if json {
                var obj: [String: Any] = [
                    "delta": name, "task": taskRef, "seed": md.seed, "layer": md.layer,
                    "n_test": split.test.count, "scale": Double(deltas.scale),
                ]
                for (f, e) in rows {
                    obj[f] = [
                        "exact_match": e.exactMatch, "first_token_accuracy": e.firstTokenAccuracy,
                        "judge_accuracy": e.judgeAccuracy,
                    ]
                }
                print(
                    String(
                        decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self
                    ))
                continue
            }
            print("\(name): task \(taskRef), seed \(md.seed), layer \(md.layer), \(split.test.count) test pairs")
            let base = rows.first { $0.0 == "native" }?.1.exactMatch
            for (f, e) in rows {
                let d = base.map { String(format: "  (%+.3f vs native)", e.exactMatch - $0) } ?? ""
                print(
                    "  " + f.padding(toLength: 15, withPad: " ", startingAt: 0)
                        + String(
                            format: "exact %.3f  first-token %.3f  judge %.3f", e.exactMatch, e.firstTokenAccuracy,
                            e.judgeAccuracy) + (f == "native" ? "" : d))
            }
        }
    }
}
