import ArgumentParser
import Engine
import Foundation

/// A failure while running (not a usage mistake): printed as "Error: …" without the usage text.
public struct CLIError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}

/// Shared by every subcommand that loads a model.
public struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Model registry name or path to a .gguf file.", valueName: "name-or-path"))
    public var model: String = ModelRegistry.defaultModel

    /// One per core: a user's first `worker run` should not leave cores idle. (A cluster worker,
    /// `worker serve`, keeps one thread per process: several processes share the cores.)
    @Option(name: .long, help: "Compute threads for this process (the default is this machine's core count).")
    public var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    public init() {}

    public func validate() throws {
        guard threads >= 1 && threads <= 256 else { throw ValidationError("--threads must be between 1 and 256") }
    }

    public func load() throws -> LanguageModel {
        do { return try LanguageModel(model, backend: CPUBackend(threads: threads), threads: max(threads, 2)) }
        catch { throw CLIError("\(error)") }
    }
}

/// `worker inspect`: run one prompt and show what the model predicts — the parity check from
/// outside the test suite.
public struct InspectCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Tokenise a prompt, show the top next tokens and a greedy continuation.",
        discussion: """
        Examples:
          worker inspect --prompt "The capital of France is"
          worker inspect --prompt "hot:" --top 5 --generate 8 --json
          worker inspect --prompt $'Q: hot\\nA:' --delta runs/3f…e1.safetensors     (logits with Δ at the last token)
        The prompt is used exactly as given: no BOS token unless the model file asks for one, no \
        chat template. Logits are the model's raw next-token scores at the last prompt position.
        """)

    @OptionGroup public var modelOptions: ModelOptions
    @OptionGroup var deltas: DeltaOptions

    @Option(name: .long, help: "The prompt text (use $'…' in bash for newlines).")
    public var prompt: String

    @Option(name: .long, help: "How many of the best next tokens to list.")
    public var top: Int = 5

    @Option(name: .long, help: "How many tokens to decode greedily (no stop at newline).")
    public var generate: Int = 8

    @Flag(name: .long, help: "Print one JSON object instead of a table.")
    public var json = false

    public init() {}

    public func validate() throws {
        guard top >= 0 else { throw ValidationError("--top must be ≥ 0") }
        guard generate >= 0 else { throw ValidationError("--generate must be ≥ 0") }
        guard !prompt.isEmpty else { throw ValidationError("--prompt must not be empty") }
    }

    public func run() throws {
        let arts = try deltas.artefacts()
        let lm = try modelOptions.load()
        let ids = lm.tokenizer.encode(prompt)
        guard !ids.isEmpty else { throw ValidationError("the prompt encodes to no tokens") }
        let steering = try deltas.steering(lm, arts)
        let cache = lm.model.makeCache(capacity: ids.count + generate + 1)
        let logits = lm.model.forward(tokens: [ids], caches: [cache], hooks: steering?.promptHooks)
        let order = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(min(top, logits.count))
        let gen = lm.generate(prompts: [ids], steering: steering, sampling: .greedy,
                              stop: StopRules(maxNewTokens: generate, atNewline: false, atEOS: true))
        let text = lm.tokenizer.decode(gen.tokens[0])
        if json {
            let obj: [String: Any] = [
                "model": lm.name,
                "token_ids": ids,
                "top": order.map { ["id": $0, "token": lm.tokenizer.decode([$0], skipSpecial: false), "logit": Double(logits[$0])] as [String: Any] },
                "greedy": text,
                "greedy_ids": gen.tokens[0],
            ]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("model   \(lm.name)  (\(lm.config.nLayers) layers, D=\(lm.config.dModel), loaded in \(String(format: "%.2f", lm.loadSeconds)) s)")
            print("tokens  \(ids.count): \(ids.map { "\($0) \(lm.tokenizer.decode([$0], skipSpecial: false).debugDescription)" }.joined(separator: ", "))")
            print("top \(order.count):")
            for id in order {
                print(String(format: "  %6d  %-20@ %9.4f", id, lm.tokenizer.decode([id], skipSpecial: false).debugDescription as NSString, logits[id]))
            }
            print("greedy  \(text.debugDescription)")
        }
    }
}
