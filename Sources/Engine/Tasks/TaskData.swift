import Foundation

/// One example of a word-pair task: the prompt word (`input`) and its answer (`output`).
public struct TaskPair: Codable, Sendable, Hashable {
    public var input: String
    public var output: String
    public init(input: String, output: String) {
        self.input = input
        self.output = output
    }
}

/// Why a task file could not be loaded. Every case names the file.
public enum TaskDataError: Error, LocalizedError, Equatable, Sendable {
    /// The file could not be read (missing, unreadable).
    case unreadable(path: String, reason: String)
    /// The file is not valid JSON.
    case invalidJSON(path: String, reason: String)
    /// Valid JSON, but not `[{"input": String, "output": String}, ...]`.
    case wrongShape(path: String, reason: String)
    /// The file holds an empty array.
    case empty(path: String)

    public var errorDescription: String? {
        switch self {
        case let .unreadable(path, reason):
            return "cannot read task file \(path): \(reason)"
        case let .invalidJSON(path, reason):
            return "task file \(path) is not valid JSON: \(reason)"
        case let .wrongShape(path, reason):
            return "task file \(path) is not a function-vector task "
                + "([{\"input\": \"...\", \"output\": \"...\"}, ...]): \(reason)"
        case let .empty(path):
            return "task file \(path) has no pairs"
        }
    }
}

/// Loading task files in the function-vector JSON format: a JSON array of objects with string
/// fields `input` and `output`. Other keys (e.g. `"intermediate"`) are ignored; strings are
/// kept exactly as written (no trimming), like the PyTorch reference's `load_task`.
public enum TaskData {
    /// Loads the pairs of the task file at `url`, in file order.
    /// - Throws: `TaskDataError` naming the file on a read error, bad JSON, a wrong shape, or an
    ///   empty array.
    public static func load(from url: URL) throws -> [TaskPair] {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            let reason = FileManager.default.fileExists(atPath: url.path) ? error.localizedDescription : "no such file"
            throw TaskDataError.unreadable(path: url.path, reason: reason)
        }
        return try decode(data, source: url.path)
    }

    /// Loads the pairs of the task file at `path`.
    public static func load(path: String) throws -> [TaskPair] {
        try load(from: URL(fileURLWithPath: path))
    }

    /// Decodes function-vector JSON bytes; `source` names the origin in errors.
    public static func decode(_ data: Data, source: String) throws -> [TaskPair] {
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw TaskDataError.invalidJSON(path: source, reason: describe(error))
        }
        guard let array = json as? [Any] else {
            throw TaskDataError.wrongShape(path: source, reason: "the top level is \(kind(of: json)), not an array")
        }
        if array.isEmpty { throw TaskDataError.empty(path: source) }
        var pairs: [TaskPair] = []
        pairs.reserveCapacity(array.count)
        for (i, element) in array.enumerated() {
            guard let object = element as? [String: Any] else {
                throw TaskDataError.wrongShape(path: source, reason: "element \(i) is \(kind(of: element)), not an object")
            }
            guard let input = object["input"] as? String else {
                throw TaskDataError.wrongShape(path: source, reason: "element \(i) has no string \"input\"")
            }
            guard let output = object["output"] as? String else {
                throw TaskDataError.wrongShape(path: source, reason: "element \(i) has no string \"output\"")
            }
            pairs.append(TaskPair(input: input, output: output))
        }
        return pairs
    }

    /// Encodes pairs in the function-vector format (one pair per line, like the built-in files).
    public static func encode(_ pairs: [TaskPair]) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let lines = pairs.map { String(decoding: (try? encoder.encode($0)) ?? Data(), as: UTF8.self) }
        return Data(("[\n" + lines.joined(separator: ",\n") + "\n]\n").utf8)
    }

    private static func kind(of value: Any) -> String {
        switch value {
        case is [Any]: return "an array"
        case is [String: Any]: return "an object"
        case is String: return "a string"
        case is NSNull: return "null"
        case is NSNumber: return "a number"
        default: return "\(type(of: value))"
        }
    }

    private static func describe(_ error: Error) -> String {
        let ns = error as NSError
        if let detail = ns.userInfo[NSDebugDescriptionErrorKey] as? String { return detail }
        return error.localizedDescription
    }
}
