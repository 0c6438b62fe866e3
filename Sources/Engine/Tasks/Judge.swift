import Foundation

/// The offline judge: decides whether a model's answer to a task input is acceptable. It stands
/// in for the paper's GPT-4 "GPT-Eval" and is reported beside exact match as `judge_accuracy`.
///
/// A judge holds the task's lexicon (`data/lexicon/NAME.json`, built by cluster/build_tasks.py
/// from WordNet or FreeDict: every acceptable answer per lower-cased input). A prediction is
/// accepted when, after `Judge.normalize`, it equals the pair's expected output, or it is one of
/// the lexicon's answers for the input:
/// - `antonym`: a WordNet antonym of the input — direct, or indirect through adjective clusters
///   (the antonyms of the input's cluster head and their satellites), or also-see/verb-group
///   neighbours of an antonym;
/// - `synonym`: a WordNet synonym — a co-member of one of the input's synsets, or a member of a
///   synset related by similar-to (adjective clusters), also-see or verb group;
/// - `english-french` / `english-german`: any FreeDict translation of the input (every sense).
///
/// Without a lexicon (a user's own task file whose name matches no built-in lexicon), and for
/// inputs the lexicon does not know, the judge falls back to exact match against the expected
/// output (normalised) — so `judge_accuracy` ≥ normalised exact match always holds.
///
/// The judge compares whole answers: pass the model's answer text (e.g. the generated text up
/// to its first newline), not the raw continuation with the next prompt in it.
public struct Judge: Sendable {
    /// The task the judge belongs to (a registry name or a file path).
    public let task: String
    /// Normalised input → normalised acceptable answers; nil when the task has no lexicon.
    public let lexicon: [String: Set<String>]?

    /// A judge with the given lexicon (keys and answers are normalised here).
    public init(task: String, lexicon: [String: [String]]?) {
        self.task = task
        guard let lexicon else { self.lexicon = nil; return }
        var table: [String: Set<String>] = [:]
        table.reserveCapacity(lexicon.count)
        for (key, answers) in lexicon {
            table[Self.normalize(key), default: []].formUnion(answers.map(Self.normalize))
        }
        self.lexicon = table
    }

    /// A judge that only accepts the expected output (normalised exact match).
    public static func exactMatch(task: String) -> Judge {
        Judge(task: task, lexicon: nil)
    }

    /// Loads a lexicon file (`{"input": ["answer", ...], ...}`).
    /// - Throws: `TaskDataError` naming the file when it is unreadable or has another shape.
    public static func load(task: String, lexiconAt url: URL) throws -> Judge {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw TaskDataError.unreadable(path: url.path, reason: error.localizedDescription)
        }
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: data) } catch {
            throw TaskDataError.invalidJSON(path: url.path, reason: error.localizedDescription)
        }
        guard let object = json as? [String: Any] else {
            throw TaskDataError.wrongShape(path: url.path, reason: "a lexicon is an object {\"input\": [answers]}")
        }
        var table: [String: Set<String>] = [:]
        table.reserveCapacity(object.count)
        for (key, value) in object {
            guard let answers = value as? [String] else {
                throw TaskDataError.wrongShape(path: url.path, reason: "the answers of \"\(key)\" are not an array of strings")
            }
            table[normalize(key), default: []].formUnion(answers.map(normalize))
        }
        return Judge(task: task, table: table)
    }

    /// A judge over an already-normalised table (shared by the registry's lexicon cache).
    init(task: String, table: [String: Set<String>]?) {
        self.task = task
        self.lexicon = table
    }

    /// Whether the task has a lexicon (otherwise the judge is exact match).
    public var hasLexicon: Bool { lexicon != nil }

    /// Whether the lexicon has answers for `input`.
    public func knows(_ input: String) -> Bool {
        lexicon?[Self.normalize(input)] != nil
    }

    /// The normalised acceptable answers for `input` from the lexicon (nil when unknown).
    public func answers(for input: String) -> Set<String>? {
        lexicon?[Self.normalize(input)]
    }

    /// True when `prediction` is an acceptable answer to `input`: it equals `expected` or is in
    /// the lexicon's answers for `input`, both compared after `Judge.normalize`. An empty
    /// prediction is never accepted.
    public func accept(input: String, prediction: String, expected: String? = nil) -> Bool {
        let p = Self.normalize(prediction)
        if p.isEmpty { return false }
        if let expected, Self.normalize(expected) == p { return true }
        return lexicon?[Self.normalize(input)]?.contains(p) ?? false
    }

    /// The fraction of `(input, prediction, expected)` items accepted (0 for no items).
    public func accuracy(_ items: [(input: String, prediction: String, expected: String)]) -> Double {
        guard !items.isEmpty else { return 0 }
        let ok = items.reduce(0) { $0 + (accept(input: $1.input, prediction: $1.prediction, expected: $1.expected) ? 1 : 0) }
        return Double(ok) / Double(items.count)
    }

    /// The normalisation applied to inputs, predictions, expected outputs and lexicon entries
    /// (cluster/build_tasks.py's `norm` is the same): Unicode NFC; lower-case; underscores
    /// (WordNet's multi-word lemmas) become spaces; whitespace (newlines included) trimmed and
    /// runs collapsed to one space; double quotes (" “ ” „ « ») around the text and trailing
    /// `. , ; : ! ?` removed. Apostrophes and hyphens are kept ("l'", "anti-inflammatory").
    public static func normalize(_ text: String) -> String {
        if isNormalASCII(text) { return text }
        var s = text.precomposedStringWithCanonicalMapping.lowercased()
        s = s.replacingOccurrences(of: "_", with: " ")
        s = collapse(s)
        if let first = s.first, let last = s.last,
           quotes.contains(first) || quotes.contains(last) || trailing.contains(last) {
            while let c = s.first, quotes.contains(c) { s.removeFirst() }
            while let c = s.last, quotes.contains(c) { s.removeLast() }
            while let c = s.last, trailing.contains(c) { s.removeLast() }
            while let c = s.last, quotes.contains(c) { s.removeLast() }
            s = collapse(s)
        }
        return s
    }

    private static let quotes: Set<Character> = ["\"", "\u{201C}", "\u{201D}", "\u{201E}", "\u{00AB}", "\u{00BB}"]
    private static let trailing: Set<Character> = [".", ",", ";", ":", "!", "?"]

    private static func collapse(_ s: String) -> String {
        s.split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
    }

    /// Fast path: printable ASCII without upper case, underscores, quotes, doubled or edge spaces
    /// and trailing punctuation is already normal.
    private static func isNormalASCII(_ s: String) -> Bool {
        var prevSpace = true
        var last: UInt8 = 0
        for b in s.utf8 {
            if b < 0x20 || b >= 0x7f || (b >= 0x41 && b <= 0x5a) || b == 0x5f || b == 0x22 { return false }
            if b == 0x20 { if prevSpace { return false }; prevSpace = true } else { prevSpace = false }
            last = b
        }
        if last == 0 || prevSpace { return false }
        switch last {
        case 0x2e, 0x2c, 0x3b, 0x3a, 0x21, 0x3f: return false
        default: return true
        }
    }
}
