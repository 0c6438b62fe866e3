import Foundation

/// The most recently used values by key, within a budget: each value costs `cost(value)` (1 for a
/// count of entries, bytes for a byte budget); the least recently used go first once the total
/// passes `budget`, and a value costing more than `budget / 2` is not kept. Thread-safe. The
/// engine's evaluation memos (`LanguageModel.evaluationMemo`, `prefixMemo`) are two of these.
public final class RecentMemo<Value>: @unchecked Sendable {
    public let budget: Int
    let cost: (Value) -> Int
    private var entries: [(key: String, value: Value, cost: Int)] = []
    private let lock = NSLock()
    /// Values served, and values stored, since the memo was made.
    public private(set) var hits = 0, stores = 0

    public init(budget: Int, cost: @escaping (Value) -> Int = { _ in 1 }) { self.budget = budget; self.cost = cost }

    public subscript(key: String) -> Value? {
        get {
            lock.lock(); defer { lock.unlock() }
            guard let i = entries.firstIndex(where: { $0.key == key }) else { return nil }
            let e = entries.remove(at: i)
            entries.append(e)
            hits += 1
            return e.value
        }
        set {
            lock.lock(); defer { lock.unlock() }
            entries.removeAll { $0.key == key }
            guard let newValue else { return }
            let c = cost(newValue)
            guard c <= max(budget / 2, 1) else { return }
            entries.append((key, newValue, c))
            stores += 1
            while entries.reduce(0, { $0 + $1.cost }) > budget { entries.removeFirst() }
        }
    }

    /// Forgets every value (the counts stay).
    public func removeAll() { lock.lock(); entries.removeAll(); lock.unlock() }
}
