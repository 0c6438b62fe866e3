import Foundation

/// Why a task name could not be resolved.
public enum TaskRegistryError: Error, LocalizedError, Equatable, Sendable {
    /// The name is neither a built-in task nor a path; `known` lists the task names available.
    case unknownTask(name: String, known: [String], dataDirectory: String?)
    /// A path (contains "/" or ends with .json) that does not exist.
    case missingFile(path: String)

    public var errorDescription: String? {
        switch self {
        case let .unknownTask(name, known, dir):
            var text = "unknown task '\(name)'"
            if let dir {
                text += known.isEmpty
                    ? "; no tasks in \(dir)/tasks"
                    : "; known tasks: \(known.joined(separator: ", ")) (in \(dir)/tasks)"
                if known.isEmpty || (TaskRegistry.builtInNames.contains(name) && !known.contains(name)) {
                    text += "; build the built-in tasks with: python3 cluster/build_tasks.py --out \(dir)"
                }
            } else {
                text += "; no data directory found (set INTERVENE_DATA, or run cluster/setup.sh, which builds "
                    + "data/tasks with python3 cluster/build_tasks.py --out data)"
            }
            return text + "; a task can also be a path to a function-vector JSON file"
        case let .missingFile(path):
            return "task file \(path) does not exist"
        }
    }
}

/// A task reference resolved to files.
public struct ResolvedTask: Sendable, Equatable {
    /// The registry name (`antonym`) or, for a path, the path as given.
    public let name: String
    /// The function-vector JSON file.
    public let file: URL
    /// The judge's lexicon, when there is one (see `TaskRegistry.resolve`).
    public let lexicon: URL?
}

/// Finds tasks by name or path.
///
/// - A reference that contains "/" or ends with ".json" is a path to a function-vector JSON file
///   (relative paths are taken from the current directory).
/// - Any other reference is a name: `DATA/tasks/NAME.json`, with the judge's lexicon in
///   `DATA/lexicon/NAME.json`. The built-in names are `builtInNames`; other JSON files placed in
///   `DATA/tasks` are tasks too.
///
/// The data directory `DATA` is, in this order: `$INTERVENE_DATA`; the first `data` folder
/// holding a `tasks` folder found walking up from the current directory (e.g. `data/` next to
/// the package's Package.swift when run from the checkout or a subfolder); the same walking up
/// from the executable's path (an executable built in `.build/` finds its checkout's `data/`).
public struct TaskRegistry: Sendable {
    /// The tasks cluster/build_tasks.py builds.
    public static let builtInNames = ["antonym", "synonym", "english-french", "english-german"]

    /// The data directory (holding `tasks/` and `lexicon/`), nil when none was found.
    public let dataDirectory: URL?

    /// A registry over `dataDirectory`.
    public init(dataDirectory: URL?) {
        self.dataDirectory = dataDirectory?.standardizedFileURL
    }

    /// A registry over the data directory found by `locateDataDirectory()`.
    public init() {
        self.init(dataDirectory: Self.locateDataDirectory())
    }

    /// The data directory search described on the type. `environment`, `currentDirectory` and
    /// `executablePath` default to this process's.
    public static func locateDataDirectory(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        currentDirectory: String = FileManager.default.currentDirectoryPath,
        executablePath: String? = currentExecutablePath()
    ) -> URL? {
        if let env = environment["INTERVENE_DATA"], !env.isEmpty {
            return URL(fileURLWithPath: env, relativeTo: URL(fileURLWithPath: currentDirectory, isDirectory: true))
                .standardizedFileURL
        }
        var starts = [URL(fileURLWithPath: currentDirectory, isDirectory: true)]
        if let executablePath {
            starts.append(URL(fileURLWithPath: executablePath).resolvingSymlinksInPath().deletingLastPathComponent())
        }
        for start in starts {
            var dir = start.standardizedFileURL
            while true {
                let data = dir.appendingPathComponent("data", isDirectory: true)
                if isDirectory(data.appendingPathComponent("tasks")) { return data }
                let parent = dir.deletingLastPathComponent()
                if parent.path == dir.path { break }
                dir = parent
            }
        }
        return nil
    }

    /// This process's executable path (`/proc/self/exe` on Linux), if known.
    public static func currentExecutablePath() -> String? {
        if let url = Bundle.main.executableURL { return url.path }
        return CommandLine.arguments.first
    }

    /// True when `reference` is a path rather than a registry name.
    public static func isPath(_ reference: String) -> Bool {
        reference.contains("/") || reference.lowercased().hasSuffix(".json")
    }

    /// The task names available in the data directory (`tasks/*.json` except MANIFEST.json),
    /// sorted; empty when there is no data directory.
    public func knownTasks() -> [String] {
        guard let dir = dataDirectory?.appendingPathComponent("tasks"),
              let files = try? FileManager.default.contentsOfDirectory(atPath: dir.path) else { return [] }
        return files.filter { $0.hasSuffix(".json") && $0 != "MANIFEST.json" }
            .map { String($0.dropLast(5)) }
            .sorted()
    }

    /// Resolves a task reference to its file and lexicon.
    ///
    /// A name gets `DATA/lexicon/NAME.json` when present. A path gets the lexicon named like the
    /// file (`.../antonym.json` → `DATA/lexicon/antonym.json`) when there is one, so a
    /// function-vector file of a built-in task is judged with that task's lexicon; otherwise none
    /// (the judge is then exact match).
    /// - Throws: `TaskRegistryError.unknownTask` (listing the known names) or `.missingFile`.
    public func resolve(_ reference: String) throws -> ResolvedTask {
        if Self.isPath(reference) {
            let url = URL(fileURLWithPath: reference).standardizedFileURL
            guard FileManager.default.fileExists(atPath: url.path) else {
                throw TaskRegistryError.missingFile(path: reference)
            }
            return ResolvedTask(name: reference, file: url, lexicon: lexiconFile(url.deletingPathExtension().lastPathComponent))
        }
        guard let dir = dataDirectory, isPlainName(reference) else {
            throw TaskRegistryError.unknownTask(name: reference, known: knownTasks(), dataDirectory: dataDirectory?.path)
        }
        let file = dir.appendingPathComponent("tasks").appendingPathComponent(reference + ".json")
        guard FileManager.default.fileExists(atPath: file.path) else {
            throw TaskRegistryError.unknownTask(name: reference, known: knownTasks(), dataDirectory: dir.path)
        }
        return ResolvedTask(name: reference, file: file, lexicon: lexiconFile(reference))
    }

    /// Loads a task's pairs by name or path.
    public func load(_ reference: String) throws -> [TaskPair] {
        try TaskData.load(from: resolve(reference).file)
    }

    /// The judge of a task (by name or path): its lexicon when it has one, else exact match.
    /// Lexicons are cached for the life of the process (they are large and immutable).
    public func judge(for reference: String) throws -> Judge {
        let task = try resolve(reference)
        guard let lexicon = task.lexicon else { return .exactMatch(task: task.name) }
        return try LexiconCache.shared.judge(task: task.name, lexicon: lexicon)
    }

    /// `judge(for: task).accept(input:prediction:expected:)`.
    public func accept(task: String, input: String, prediction: String, expected: String? = nil) throws -> Bool {
        try judge(for: task).accept(input: input, prediction: prediction, expected: expected)
    }

    private func lexiconFile(_ name: String) -> URL? {
        guard let dir = dataDirectory, isPlainName(name) else { return nil }
        let url = dir.appendingPathComponent("lexicon").appendingPathComponent(name + ".json")
        return FileManager.default.fileExists(atPath: url.path) ? url : nil
    }

    private func isPlainName(_ name: String) -> Bool {
        !name.isEmpty && !name.hasPrefix(".") && name.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }
    }

    private static func isDirectory(_ url: URL) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) && isDir.boolValue
    }
}

/// Process-wide cache of loaded lexicons, keyed by file path.
final class LexiconCache: @unchecked Sendable {
    static let shared = LexiconCache()
    private let lock = NSLock()
    private var tables: [String: Judge] = [:]

    func judge(task: String, lexicon: URL) throws -> Judge {
        lock.lock()
        defer { lock.unlock() }
        if let cached = tables[lexicon.path] {
            return Judge(task: task, table: cached.lexicon)
        }
        let judge = try Judge.load(task: task, lexiconAt: lexicon)
        tables[lexicon.path] = judge
        return judge
    }
}
