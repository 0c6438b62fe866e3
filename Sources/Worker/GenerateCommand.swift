import ArgumentParser
import Engine
import Foundation
import JobCore

/// `worker generate`: steer generation with learned Δs.
public struct GenerateCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate text with one or more learned Δs added (steered generation).",
        discussion: """
            Each --delta is a Δ artefact (.safetensors from `worker run`, the store's artefacts/ or \
            `coordinator results`). It is checked against the model on load: the model's sha256, the \
            layer, the head count and head size must be its own, else an error names both. Δs for the \
            same layer add (composition at use time); Δs for different layers apply at their own \
            layers. --scale multiplies them all.

            Positions: a Δ is learned at the prompt's last token, and `last` (the default) adds it \
            there only, as it was trained; `all` adds it at every prompt and generated position; \
            `generated` only where generated tokens are read back in; `last+generated` both.

            Examples:
              worker generate --delta runs/3f…e1.safetensors --prompt $'Q: hot\\nA:'
              worker generate --delta antonym.safetensors --delta french.safetensors --prompts-file words.txt
              worker generate --delta d.safetensors --prompt "Tell me about cats" --chat --temperature 0.7 --seed 1
              worker generate --delta d.safetensors --prompt $'Q: big\\nA:' --compare --json
            """)

    @OptionGroup public var modelOptions: ModelOptions
    @OptionGroup var deltas: DeltaOptions

    @Option(
        name: .long,
        help: "Where Δ is added: last (the prompt's last token, as trained), all, generated, or last+generated.")
    public var positions: String = DeltaPositions.last.rawValue

    @Option(name: .long, help: ArgumentHelp("A prompt (repeatable; use $'…' in bash for newlines).", valueName: "text"))
    public var prompt: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A file of prompts: a JSON array of strings, else one prompt per line (\\n in a line is a newline).",
            valueName: "path"))
    public var promptsFile: String?

    @Flag(
        name: .long, help: "Wrap each prompt in the model's ChatML template (<|im_start|>user … <|im_start|>assistant)."
    )
    public var chat = false

    @Option(name: .long, help: "Tokens to generate at most per prompt.")
    public var maxNewTokens: Int = 32

    @Flag(name: .long, help: "Stop a sequence at its first newline.")
    public var stopAtNewline = false

    @Option(name: .long, help: "Sampling temperature (0 = greedy).")
    public var temperature: Float = 0

    @Option(name: .long, help: "Nucleus sampling: sample among the most likely tokens that reach this probability.")
    public var topP: Float = 1

    @Option(name: .long, help: "Sampling seed (each prompt draws from seed + its index).")
    public var seed: UInt64 = 0

    @Flag(name: .long, help: "Also generate without Δ, side by side.")
    public var compare = false

    @Flag(name: .long, help: "Print one JSON object instead of text.")
    public var json = false

    public init() {}

    public func validate() throws {
        guard DeltaPositions(rawValue: positions) != nil else {
            throw ValidationError("--positions must be one of \(DeltaPositions.quotedNames), not \"\(positions)\"")
        }
        guard maxNewTokens >= 1 && maxNewTokens <= 4096 else {
            throw ValidationError("--max-new-tokens must be 1…4096")
        }
        guard temperature >= 0 && temperature.isFinite else { throw ValidationError("--temperature must be ≥ 0") }
        guard topP > 0 && topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
        guard !prompt.isEmpty || promptsFile != nil else {
            throw ValidationError("give at least one --prompt or a --prompts-file")
        }
        guard !deltas.delta.isEmpty || compare == false else {
            throw ValidationError("--compare needs at least one --delta to compare with")
        }
    }

    func loadPrompts() throws -> [String] {
        var out = prompt
        if let f = promptsFile {
            guard let data = FileManager.default.contents(atPath: f) else {
                throw CLIError("cannot read --prompts-file \(f)")
            }
            if let arr = try? JSONSerialization.jsonObject(with: data) as? [String] {
                out += arr
            } else {
                out += String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true)
                    .map { $0.replacingOccurrences(of: "\\n", with: "\n") }
            }
        }
        guard !out.isEmpty else { throw CLIError("no prompts (the --prompts-file is empty)") }
        return out
    }

    public func run() throws {
        let texts = try loadPrompts()
        let arts = try deltas.artefacts()
        let lm = try modelOptions.load()
        let steering = try deltas.steering(lm, arts, positions: DeltaPositions(rawValue: positions)!)

        let prompts: [String]
        if chat {
            guard lm.tokenizer.id(of: "<|im_start|>") != nil else {
                throw CLIError(
                    "\(lm.name) has no ChatML tokens (<|im_start|>): leave out --chat and write the prompt "
                        + "as the model expects"
                )
            }
            prompts = texts.map { "<|im_start|>user\n\($0)<|im_end|>\n<|im_start|>assistant\n" }
        } else {
            prompts = texts
        }
        let ids = prompts.map { lm.tokenizer.encode($0) }
        if let i = ids.firstIndex(where: \.isEmpty) { throw CLIError("prompt \(i + 1) encodes to no tokens") }
        let stop = StopRules(maxNewTokens: maxNewTokens, atNewline: stopAtNewline, atEOS: true)
        let sampling = Sampling(temperature: temperature, topP: topP, seed: seed)
        let steered = lm.generate(prompts: ids, steering: steering, sampling: sampling, stop: stop)
        let plain = compare ? lm.generate(prompts: ids, steering: nil, sampling: sampling, stop: stop) : nil

        if json {
            let rows: [[String: Any]] = texts.indices.map { i in
                var r: [String: Any] = [
                    "prompt": texts[i], "text": lm.tokenizer.decode(steered.tokens[i]),
                    "token_ids": steered.tokens[i],
                ]
                if let plain { r["without_delta"] = lm.tokenizer.decode(plain.tokens[i]) }
                return r
            }
            let obj: [String: Any] = [
                "model": lm.name, "deltas": deltas.delta, "scale": Double(deltas.scale), "positions": positions,
                "layers": (steering?.byLayer.keys.sorted() ?? []), "temperature": Double(temperature),
                "top_p": Double(topP), "seed": seed, "results": rows,
            ]
            print(
                String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self)
            )
            return
        }
        let layers = steering.map { s in s.byLayer.keys.sorted().map(String.init).joined(separator: ", ") } ?? "none"
        print(
            "model \(lm.name) · Δ at layer \(layers), positions \(positions), scale \(deltas.scale)"
                + (temperature > 0 ? " · temperature \(temperature), top-p \(topP), seed \(seed)" : " · greedy"))
        for i in texts.indices {
            print("\n> \(texts[i].replacingOccurrences(of: "\n", with: "\n> "))")
            print((compare ? "with Δ:    " : "") + lm.tokenizer.decode(steered.tokens[i]).debugDescription)
            if let plain { print("without Δ: " + lm.tokenizer.decode(plain.tokens[i]).debugDescription) }
        }
    }
}
