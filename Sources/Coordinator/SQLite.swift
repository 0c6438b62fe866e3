import CSQLite
import Foundation

/// A thin wrapper over the system sqlite3 C API: one connection, prepared statements with
/// positional bindings, transactions. Not thread-safe by itself: the coordinator uses each
/// connection from one thread (the socket loop), tests from one thread.
public final class SQLiteDatabase {
    public struct Error: Swift.Error, CustomStringConvertible {
        public var code: Int32
        public var message: String
        public var description: String { "sqlite error \(code): \(message)" }
    }

    /// A bindable / readable column value.
    public enum Value: Equatable {
        case null
        case int(Int64)
        case double(Double)
        case text(String)
        case blob(Data)
    }

    private(set) var handle: OpaquePointer?
    private var cache: [String: OpaquePointer] = [:]
    public let path: String

    public init(path: String) throws {
        self.path = path
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let msg = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close(db)
            throw Error(code: rc, message: "\(msg) (\(path))")
        }
        handle = db
        sqlite3_busy_timeout(db, 5000)
    }

    deinit { close() }

    public func close() {
        for (_, st) in cache { sqlite3_finalize(st) }
        cache.removeAll()
        if let h = handle { sqlite3_close_v2(h) }
        handle = nil
    }

    private func check(_ rc: Int32, _ what: String) throws {
        guard rc == SQLITE_OK || rc == SQLITE_DONE || rc == SQLITE_ROW else {
            throw Error(code: rc, message: "\(what): \(String(cString: sqlite3_errmsg(handle)))")
        }
    }

    /// Runs one or more statements without results (schema, pragmas).
    public func execute(_ sql: String) throws {
        var err: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &err)
        if rc != SQLITE_OK {
            let msg = err.map { String(cString: $0) } ?? "unknown"
            sqlite3_free(err)
            throw Error(code: rc, message: "\(msg) in: \(sql.prefix(120))")
        }
    }

    private func statement(_ sql: String) throws -> OpaquePointer {
        if let st = cache[sql] {
            sqlite3_reset(st)
            sqlite3_clear_bindings(st)
            return st
        }
        var st: OpaquePointer?
        try check(sqlite3_prepare_v2(handle, sql, -1, &st, nil), "prepare \(sql.prefix(80))")
        guard let st else { throw Error(code: SQLITE_ERROR, message: "empty statement: \(sql)") }
        cache[sql] = st
        return st
    }

    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    private func bind(_ st: OpaquePointer, _ args: [Value]) throws {
        for (i, a) in args.enumerated() {
            let idx = Int32(i + 1)
            let rc: Int32
            switch a {
            case .null: rc = sqlite3_bind_null(st, idx)
            case .int(let v): rc = sqlite3_bind_int64(st, idx, v)
            case .double(let v): rc = sqlite3_bind_double(st, idx, v)
            case .text(let s): rc = sqlite3_bind_text(st, idx, s, -1, SQLiteDatabase.transient)
            case .blob(let d):
                rc = d.withUnsafeBytes { p in
                    sqlite3_bind_blob(st, idx, p.baseAddress, Int32(d.count), SQLiteDatabase.transient)
                }
            }
            try check(rc, "bind")
        }
    }

    /// Runs a statement that returns no rows; returns the number of changed rows.
    @discardableResult
    public func run(_ sql: String, _ args: Value...) throws -> Int {
        try run(sql, args)
    }

    @discardableResult
    public func run(_ sql: String, _ args: [Value]) throws -> Int {
        let st = try statement(sql)
        defer { sqlite3_reset(st) }
        try bind(st, args)
        var rc = sqlite3_step(st)
        while rc == SQLITE_ROW { rc = sqlite3_step(st) }
        try check(rc, "step \(sql.prefix(80))")
        return Int(sqlite3_changes(handle))
    }

    /// Runs a query and returns every row as an array of values.
    public func query(_ sql: String, _ args: Value...) throws -> [Row] {
        try query(sql, args)
    }

    public func query(_ sql: String, _ args: [Value]) throws -> [Row] {
        let st = try statement(sql)
        defer { sqlite3_reset(st) }
        try bind(st, args)
        var rows: [Row] = []
        while true {
            let rc = sqlite3_step(st)
            if rc == SQLITE_DONE { break }
            try check(rc, "step \(sql.prefix(80))")
            let n = sqlite3_column_count(st)
            var values: [Value] = []
            values.reserveCapacity(Int(n))
            for c in 0..<n {
                switch sqlite3_column_type(st, c) {
                case SQLITE_INTEGER: values.append(.int(sqlite3_column_int64(st, c)))
                case SQLITE_FLOAT: values.append(.double(sqlite3_column_double(st, c)))
                case SQLITE_TEXT:
                    values.append(.text(String(cString: sqlite3_column_text(st, c))))
                case SQLITE_BLOB:
                    let len = Int(sqlite3_column_bytes(st, c))
                    if let p = sqlite3_column_blob(st, c), len > 0 {
                        values.append(.blob(Data(bytes: p, count: len)))
                    } else {
                        values.append(.blob(Data()))
                    }
                default: values.append(.null)
                }
            }
            rows.append(Row(values: values))
        }
        return rows
    }

    /// Runs `body` in one transaction (BEGIN IMMEDIATE ... COMMIT); rolls back if it throws.
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let r = try body()
            try execute("COMMIT")
            return r
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    public var userVersion: Int {
        get { (try? query("PRAGMA user_version").first?.int(0)).flatMap { $0 } ?? 0 }
    }

    public func setUserVersion(_ v: Int) throws { try execute("PRAGMA user_version = \(v)") }

    public struct Row {
        public var values: [Value]
        public func int(_ i: Int) -> Int? {
            switch values[i] {
            case .int(let v): return Int(v)
            case .double(let d): return Int(d)
            default: return nil
            }
        }
        public func double(_ i: Int) -> Double? {
            switch values[i] {
            case .int(let v): return Double(v)
            case .double(let d): return d
            default: return nil
            }
        }
        public func string(_ i: Int) -> String? {
            if case .text(let s) = values[i] { return s }
            return nil
        }
    }
}

extension SQLiteDatabase.Value {
    public init(_ s: String?) { self = s.map { .text($0) } ?? .null }
    public init(_ d: Double?) { self = d.map { .double($0) } ?? .null }
    public init(_ i: Int?) { self = i.map { .int(Int64($0)) } ?? .null }
}
