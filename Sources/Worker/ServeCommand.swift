import ArgumentParser
import Dispatch
import Engine
import Foundation
import Protocol
#if canImport(Glibc)
import Glibc
#endif

/// `worker [serve] --connect tcp://host:5555 --cpu [--threads N] [--id NAME] [--models DIR]`:
/// connect to a coordinator and run its jobs, one at a time, until SIGINT/SIGTERM.
public struct ServeCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Connect to a coordinator and run its jobs, one at a time.",
        discussion: """
        The first SIGINT/SIGTERM finishes the running job, delivers its result and leaves; a second \
        one leaves at once (the coordinator requeues the job when its lease expires).
        """
    )

    @Option(name: .long, help: "Coordinator endpoint (default: $INTERVENE_COORDINATOR, else tcp://127.0.0.1:5555).")
    public var connect: String?

    @Flag(name: .long, help: "Run on the CPU (the default).")
    public var cpu = false

    @Option(name: .long, help: ArgumentHelp("Run on CUDA device N.", valueName: "N"))
    public var gpu: Int?

    @Option(name: .long, help: "Compute threads (BLAS) for this worker.")
    public var threads: Int = 1

    @Option(name: .long, help: "The solver's products for jobs that name no precision (jobs from this build's coordinator always name one: the grid's solver.precision, else int8): int8 (~2.5× faster steps, the same exact match measured; needs AVX2, AVX-512 VNNI or aarch64's dot product, else fp32) or fp32 (exact). Each Δ's metadata records which ran.")
    public var precision: Precision = .solverDefault

    @Option(name: .long, help: "Worker name shown by the coordinator (default: host-pid).")
    public var id: String?

    @Option(name: .long, help: "Directory of cached models (.gguf); exported as INTERVENE_MODELS.")
    public var models: String?

    @Option(name: .customLong("curve-secret"), help: ArgumentHelp(CurveClientKeys.secretHelp, valueName: "file"))
    public var curveSecret: String?

    @Option(name: .customLong("server-key"), help: ArgumentHelp(CurveClientKeys.serverKeyHelp, valueName: "file"))
    public var serverKey: String?

    @Option(name: .long, help: ArgumentHelp("Heartbeat period when a job names no lease (ms).", visibility: .hidden))
    public var heartbeatMs: Int64?

    public init() {}

    public func validate() throws {
        if gpu != nil { throw ValidationError("no GPU backend in this build; run with --cpu") }
        if threads < 1 { throw ValidationError("--threads must be ≥ 1") }
        if let id, id.isEmpty || id.utf8.count > 200 { throw ValidationError("--id must be 1-200 bytes") }
    }

    /// The endpoint: --connect, else $INTERVENE_COORDINATOR, else tcp://127.0.0.1:5555.
    public static func resolveEndpoint(_ flag: String?, environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let flag, !flag.isEmpty { return flag }
        if let env = environment["INTERVENE_COORDINATOR"], !env.isEmpty { return env }
        return "tcp://127.0.0.1:5555"
    }

    /// Model files in `dir` (names of *.gguf / *.safetensors, sorted).
    public static func cachedModels(in dir: String?) -> [String] {
        guard let dir, let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        return names.filter { $0.hasSuffix(".gguf") || $0.hasSuffix(".safetensors") }.sorted()
    }

    public func run() throws {
        let endpoint = Self.resolveEndpoint(connect)
        if let models { setenv("INTERVENE_MODELS", models, 1) }
        setenv("OPENBLAS_NUM_THREADS", "\(threads)", 0)
        let workerID = id ?? "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
        var options = NodeOptions(endpoint: endpoint,
                                  hello: NodeOptions.hello(workerID: workerID, threads: threads,
                                                           modelsCached: Self.cachedModels(in: models ?? ModelRegistry.cacheDirectory)))
        if let heartbeatMs { options.timing.heartbeatMs = heartbeatMs }
        do {
            options.keys = try CurveClientKeys.resolve(secretFile: curveSecret, serverKeyFile: serverKey)
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode(2)
        }
        let threads = self.threads, precision = self.precision
        let node = try WorkerNode(options: options, registry: RunnerRegistry(engine: { EngineJobRunner(threads: threads, precision: precision) }))

        // Signals: handled on a dispatch queue, forwarded to the node's network loop.
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { node.requestStop() }
            src.resume()
            sources.append(src)
        }
        let status = node.run()
        sources.forEach { $0.cancel() }
        if status != 0 { throw ExitCode(status) }
    }
}
