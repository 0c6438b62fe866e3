import Foundation

/// The metadata of a Δ artefact: one schema for every job kind that learns a Δ (`worker run`,
/// `worker opinion`, cluster jobs, the synthetic kind), stored as the safetensors header's
/// `__metadata__` string map. What a user needs to apply Δ again is here: the model it was
/// learned on (name and sha256), the site (layer, heads × head_dim, the o_proj input), the position
/// policy, and how it was learned.
///
/// Schema 1 adds `schema`, `method` and `positions` to the keys that artefacts already had;
/// artefacts without `schema` (written before it) read as schema 0 with the same keys.
public struct DeltaMetadata: Equatable, Sendable {
    public static let currentSchema = 1

    public var schema: Int = DeltaMetadata.currentSchema
    public var model: String
    public var modelSHA256: String
    /// Task name or path ("opinion:<group>" for opinion tasks).
    public var task: String
    public var method: String
    public var layer: Int
    public var heads: Int
    public var headDim: Int
    /// Where Δ is added: "last" (the prompt's last token, as trained).
    public var positions: String = "last"
    public var seed: Int
    public var lambda: Double
    public var gamma: Double
    /// Solver steps taken.
    public var steps: Int
    public var lr: Double
    public var solver: String
    /// The precision that actually ran (a job may ask for int8 on a CPU that only runs fp32).
    public var precision: String
    public var trainSize: Int
    /// The solver's loss at the returned Δ, in the fp32 it was computed in.
    public var finalLoss: Float
    /// Task-specific entries (prompt and target formats, the data file, a headline metric).
    public var extra: [String: String] = [:]

    public init(
        model: String, modelSHA256: String, task: String, method: String, layer: Int, heads: Int, headDim: Int,
        seed: Int, lambda: Double, gamma: Double, steps: Int, lr: Double, solver: String, precision: String,
        trainSize: Int, finalLoss: Float, extra: [String: String] = [:]
    ) {
        self.model = model
        self.modelSHA256 = modelSHA256
        self.task = task
        self.method = method
        self.layer = layer
        self.heads = heads
        self.headDim = headDim
        self.seed = seed
        self.lambda = lambda
        self.gamma = gamma
        self.steps = steps
        self.lr = lr
        self.solver = solver
        self.precision = precision
        self.trainSize = trainSize
        self.finalLoss = finalLoss
        self.extra = extra
    }

    /// The string map written into the safetensors header.
    public var dictionary: [String: String] {
        var d = extra
        d["schema"] = "\(schema)"
        d["model"] = model
        d["model_sha256"] = modelSHA256
        d["task"] = task
        d["method"] = method
        d["layer"] = "\(layer)"
        d["heads"] = "\(heads)"
        d["head_dim"] = "\(headDim)"
        d["positions"] = positions
        d["seed"] = "\(seed)"
        d["lambda"] = "\(lambda)"
        d["gamma"] = "\(gamma)"
        d["steps"] = "\(steps)"
        d["lr"] = "\(lr)"
        d["solver"] = solver
        d["precision"] = precision
        d["train_size"] = "\(trainSize)"
        d["final_loss"] = "\(finalLoss)"
        return d
    }

    static let typedKeys: Set<String> = [
        "schema", "model", "model_sha256", "task", "method", "layer", "heads", "head_dim",
        "positions", "seed", "lambda", "gamma", "steps", "lr", "solver", "precision",
        "train_size", "final_loss",
    ]

    public struct ReadError: Error, CustomStringConvertible, Equatable {
        public var key: String
        public var message: String
        public var description: String { "Δ metadata \"\(key)\": \(message)" }
    }

    /// Reads an artefact's metadata. Schema 0 (no `schema` key) lacks `method` and `positions`
    /// (they read as "intervention" and "last", which every schema-0 artefact was), and opinion
    /// artefacts of schema 0 lack `lr` and `train_size` (they read as 0).
    public init(_ d: [String: String]) throws {
        let legacy = d["schema"] == nil
        func string(_ k: String, legacyDefault: String? = nil) throws -> String {
            if let v = d[k] { return v }
            if legacy, let legacyDefault { return legacyDefault }
            throw ReadError(key: k, message: "missing")
        }
        func int(_ k: String, legacyDefault: Int? = nil) throws -> Int {
            guard let s = d[k] else { return try Int(string(k, legacyDefault: legacyDefault.map(String.init)))! }
            guard let v = Int(s) else { throw ReadError(key: k, message: "not an integer: \(s)") }
            return v
        }
        func double(_ k: String, legacyDefault: Double? = nil) throws -> Double {
            guard let s = d[k] else { return try Double(string(k, legacyDefault: legacyDefault.map { "\($0)" }))! }
            guard let v = Double(s) else { throw ReadError(key: k, message: "not a number: \(s)") }
            return v
        }
        func float(_ k: String) throws -> Float {
            let s = try string(k)
            guard let v = Float(s) else { throw ReadError(key: k, message: "not a number: \(s)") }
            return v
        }
        let schema = legacy ? 0 : try int("schema")
        guard schema <= Self.currentSchema else {
            throw ReadError(
                key: "schema", message: "schema \(schema) is newer than this build reads (\(Self.currentSchema))")
        }
        self.init(
            model: try string("model"), modelSHA256: try string("model_sha256"), task: try string("task"),
            method: try string("method", legacyDefault: "intervention"), layer: try int("layer"),
            heads: try int("heads"), headDim: try int("head_dim"), seed: try int("seed"),
            lambda: try double("lambda"), gamma: try double("gamma"), steps: try int("steps"),
            lr: try double("lr", legacyDefault: 0), solver: try string("solver"), precision: try string("precision"),
            trainSize: try int("train_size", legacyDefault: 0), finalLoss: try float("final_loss"),
            extra: d.filter { !Self.typedKeys.contains($0.key) })
        self.schema = schema
        self.positions = try string("positions", legacyDefault: "last")
    }
}

/// A Δ artefact: the vector and its metadata, as safetensors bytes.
public struct DeltaArtefact: Equatable, Sendable {
    public var delta: [Float]
    public var metadata: DeltaMetadata
    public init(delta: [Float], metadata: DeltaMetadata) {
        self.delta = delta
        self.metadata = metadata
    }

    public var data: Data {
        Safetensors.write(tensors: [("delta", [delta.count], delta)], metadata: metadata.dictionary)
    }

    public init(data: Data) throws {
        let (t, md) = try Safetensors.read(data)
        guard let d = t["delta"] else { throw Safetensors.ReadError.malformed("no tensor named delta") }
        let m = try DeltaMetadata(md)
        guard d.shape == [m.heads * m.headDim] else {
            throw Safetensors.ReadError.malformed(
                "delta has shape \(d.shape); the metadata says \(m.heads) heads × \(m.headDim)")
        }
        self.init(delta: d.values, metadata: m)
    }
}

/// Safetensors: 8-byte little-endian header length, a JSON header, then raw tensor bytes.
public enum Safetensors {
    public static func write(tensors: [(name: String, shape: [Int], values: [Float])], metadata: [String: String])
        -> Data
    {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for t in tensors {
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.values.count]]
            offset += 4 * t.values.count
        }
        var h = try! JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while h.count % 8 != 0 { h.append(0x20) }
        var out = Data()
        var n = UInt64(h.count).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(h)
        for t in tensors { t.values.withUnsafeBytes { out.append(contentsOf: $0) } }
        return out
    }

    public enum ReadError: Error, CustomStringConvertible {
        case malformed(String)
        public var description: String {
            if case .malformed(let w) = self { return "malformed safetensors: \(w)" }
            return ""
        }
    }

    /// Reads F32 tensors and the metadata.
    public static func read(_ data: Data) throws -> (
        tensors: [String: (shape: [Int], values: [Float])], metadata: [String: String]
    ) {
        guard data.count >= 8 else { throw ReadError.malformed("shorter than 8 bytes") }
        let n = data.prefix(8).withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
        guard n > 0, n <= data.count - 8 else { throw ReadError.malformed("header length \(n)") }
        guard let h = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any] else {
            throw ReadError.malformed("header is not an object")
        }
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        for (k, v) in h where k != "__metadata__" {
            guard let t = v as? [String: Any], t["dtype"] as? String == "F32", let shape = t["shape"] as? [Int],
                let off = t["data_offsets"] as? [Int], off.count == 2, off[0] >= 0, off[1] >= off[0],
                8 + n + off[1] <= data.count, (off[1] - off[0]) == 4 * shape.reduce(1, *)
            else {
                throw ReadError.malformed("tensor \(k)")
            }
            let bytes = data.subdata(in: (8 + n + off[0])..<(8 + n + off[1]))
            let vals = bytes.withUnsafeBytes { raw in
                (0..<(bytes.count / 4)).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self) }
            }
            tensors[k] = (shape, vals)
        }
        return (tensors, (h["__metadata__"] as? [String: String]) ?? [:])
    }
}
