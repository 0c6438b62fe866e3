import ArgumentParser
import JobCore
import Foundation
import Protocol
#if canImport(Glibc)
import Glibc
#endif

/// `coordinator`: serves the job queue and the store; its other subcommands are clients.
public struct CoordinatorCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Expand experiment grids, farm their jobs to workers, and keep every result.",
        discussion: """
        One `coordinator serve` owns the store (SQLite + Δ artefacts) and hands jobs to the workers \
        that connect to it. The other subcommands are clients of a running coordinator: they find it \
        through --coordinator, else $INTERVENE_COORDINATOR, else tcp://127.0.0.1:5555.

        A typical session:
          coordinator serve --store runs/store &
          worker --connect tcp://127.0.0.1:5555 --cpu &
          coordinator submit cluster/grids/quickstart.json --tail
          coordinator results quickstart --format csv > quickstart.csv

        Jobs are identified by a hash of their parameters, so submitting a grid again reuses every \
        finished job and runs only what is missing (or had failed).
        """,
        subcommands: [
            Serve.self, Submit.self, Status.self, Tail.self, Results.self, Compare.self, Report.self, Cancel.self,
            Bench.self, Drill.self, Keys.self,
        ]
    )
    public init() {}
}

/// Where client subcommands find the coordinator.
struct ClientOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "The coordinator's ROUTER address.",
        discussion: "Defaults to $INTERVENE_COORDINATOR, else tcp://127.0.0.1:5555. The update stream's address is learnt from the coordinator.",
        valueName: "tcp://host:port"))
    var coordinator: String?

    @Option(name: .long, help: "Seconds to wait for each reply.")
    var timeout: Double = 10

    @Option(name: .customLong("curve-secret"), help: ArgumentHelp(CurveClientKeys.secretHelp, valueName: "file"))
    var curveSecret: String?

    @Option(name: .customLong("server-key"), help: ArgumentHelp(CurveClientKeys.serverKeyHelp, valueName: "file"))
    var serverKey: String?

    func client() throws -> CoordinatorClient {
        let keys = try CurveClientKeys.resolve(secretFile: curveSecret, serverKeyFile: serverKey)
        return try CoordinatorClient(
            endpoint: coordinator ?? CoordinatorClient.defaultEndpoint, timeoutSeconds: timeout, keys: keys)
    }
}

func printError(_ s: String) {
    FileHandle.standardError.write(Data((s.hasSuffix("\n") ? s : s + "\n").utf8))
}

/// Runs a client body, turning client errors into a message and exit status 1.
func runClient(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as ClientError {
        printError("error: \(e)")
        throw ExitCode.failure
    } catch let e as ZMQError {
        printError("error: \(e)")
        throw ExitCode.failure
    } catch let e as CompareError {
        printError("error: \(e)")
        throw ExitCode.failure
    } catch let e as CurveKeyError {
        printError("error: \(e)")
        throw ExitCode(2)
    } catch let e as ReportError {
        printError("error: \(e)")
        throw ExitCode.failure
    }
}

// MARK: serve

extension CoordinatorCommand {
    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the coordinator: the job queue, the store and the sockets.",
            discussion: """
            Workers and clients connect to --bind (a ROUTER socket); job updates are published on \
            --pub for `tail`. Everything is kept in --store: store.sqlite (WAL) and \
            artefacts/<sha256>.safetensors. Restarting on the same store resumes: finished jobs stay \
            finished, and jobs that were running come back to the queue when their lease expires \
            (unless their worker reports back first).

            Examples:
              coordinator serve --store runs/store
              coordinator serve --store runs/store --lease 60 --max-attempts 5
              coordinator serve --bind tcp://0.0.0.0:5555 --pub tcp://0.0.0.0:5556 \\
                --curve-secret keys/coordinator.secret --worker-keys keys/workers.txt --client-keys keys/clients.txt

            Authentication (CurveZMQ): with --curve-secret, --worker-keys and --client-keys, every \
            connection must present a key from one of the lists (`coordinator keys` makes pairs); \
            worker keys may only run jobs, client keys only submit, cancel and read. Without keys \
            the coordinator binds only to loopback, unless --insecure-no-auth says otherwise.
            """
        )

        @Option(help: "The store folder (created if missing).")
        var store: String = "runs/store"

        @Option(help: "ROUTER address for workers and clients.")
        var bind: String = "tcp://127.0.0.1:5555"

        @Option(help: "PUB address for the update stream.")
        var pub: String = "tcp://127.0.0.1:5556"

        @Option(name: .customLong("advertise-pub"), help: ArgumentHelp(
            "PUB address to give clients, when it differs from --pub (e.g. behind NAT).", valueName: "address"))
        var advertisePub: String?

        @Option(help: "Seconds a running job's lease lasts; workers renew it with heartbeats.")
        var lease: Double = 30

        @Option(name: .customLong("max-attempts"), help: "How many times a job may be lost before it is failed.")
        var maxAttempts: Int = 3

        @Option(name: .customLong("worker-timeout"), help: "Seconds of silence after which a worker is forgotten.")
        var workerTimeout: Double = 60

        @Option(name: .customLong("max-message-mb"), help: "Larger messages are dropped and counted.")
        var maxMessageMB: Int = 64

        @Option(name: .customLong("curve-secret"), help: ArgumentHelp(
            "The coordinator's NAME.secret (from `coordinator keys`): turns on CurveZMQ "
                + "(default: $INTERVENE_SERVER_SECRET).", valueName: "file"))
        var curveSecret: String?

        @Option(name: .customLong("worker-keys"), help: ArgumentHelp(
            "Public keys admitted as workers: one per line, # comments; concatenated NAME.pub files do "
                + "(default: $INTERVENE_WORKER_KEYS).", valueName: "file"))
        var workerKeys: String?

        @Option(name: .customLong("client-keys"), help: ArgumentHelp(
            "Public keys admitted as clients (submit, cancel, status, results, tail), same format "
                + "(default: $INTERVENE_CLIENT_KEYS).", valueName: "file"))
        var clientKeys: String?

        @Flag(name: .customLong("insecure-no-auth"), help: ArgumentHelp(
            "Bind to a non-loopback address without keys: anyone who reaches the port may submit, cancel and "
                + "post results."))
        var insecureNoAuth = false

        @Option(name: .customLong("max-grid-jobs"), help: "Jobs one submission may expand to; larger are refused.")
        var maxGridJobs = CoordinatorLimits().maxGridJobs

        @Option(name: .customLong("max-queued-jobs"), help:
            "Jobs waiting in the queue, all experiments together; a submission that would pass it is refused whole.")
        var maxQueuedJobs = SchedulerConfig().maxQueuedJobs

        @Option(name: .customLong("max-bad-frames"), help: ArgumentHelp(
            "Bad frames (malformed, wrong version, oversized, forbidden) a connection may send per second before "
                + "it is blocked."))
        var maxBadFrames = CoordinatorLimits().badFramesPerSecond

        @Option(name: .customLong("bad-frame-block"), help: "Seconds a connection past that budget is ignored.")
        var badFrameBlock = CoordinatorLimits().blockSeconds

        @Flag(help: "Log only errors.")
        var quiet = false

        func validate() throws {
            guard lease > 0 else { throw ValidationError("--lease must be positive") }
            guard maxAttempts >= 1 else { throw ValidationError("--max-attempts must be at least 1") }
            guard workerTimeout > 0 else { throw ValidationError("--worker-timeout must be positive") }
            guard maxMessageMB >= 1 else { throw ValidationError("--max-message-mb must be at least 1") }
            guard maxGridJobs >= 1, maxQueuedJobs >= 1, maxBadFrames >= 1, badFrameBlock > 0 else {
                throw ValidationError("--max-grid-jobs, --max-queued-jobs, --max-bad-frames and --bad-frame-block "
                    + "must be positive")
            }
        }

        func run() throws {
            let quiet = self.quiet
            let logger: @Sendable (String) -> Void = { line in
                if quiet && !(line.contains("failed") || line.contains("error")) { return }
                let f = ISO8601DateFormatter()
                printError("\(f.string(from: Date())) \(line)")
            }
            let keys: CurveServerKeys?
            do {
                keys = try CurveServerKeys.resolve(secretFile: curveSecret, workerKeysFile: workerKeys,
                                                   clientKeysFile: clientKeys)
            } catch {
                printError("error: \(error)")
                throw ExitCode(2)
            }
            if let why = Exposure.refusal([bind, pub], keyed: keys != nil, insecure: insecureNoAuth) {
                printError("error: refusing to serve: \(why)")
                throw ExitCode(2)
            }
            let limits = CoordinatorLimits(maxGridJobs: maxGridJobs, badFramesPerSecond: maxBadFrames,
                                           blockSeconds: badFrameBlock)
            let server = try CoordinatorServer(options: .init(
                storeDirectory: URL(fileURLWithPath: store, isDirectory: true), bind: bind, pub: pub,
                advertisedPub: advertisePub,
                scheduler: SchedulerConfig(leaseSeconds: lease, workerTimeoutSeconds: workerTimeout,
                                           maxAttempts: maxAttempts, maxQueuedJobs: maxQueuedJobs),
                maxMessageBytes: maxMessageMB << 20, keys: keys, limits: limits, log: logger))
            try server.start()
            signal(SIGINT, SIG_IGN)
            signal(SIGTERM, SIG_IGN)
            let q = DispatchQueue(label: "signals")
            var sources: [DispatchSourceSignal] = []
            for sig in [SIGINT, SIGTERM] {
                let s = DispatchSource.makeSignalSource(signal: sig, queue: q)
                s.setEventHandler { logger("signal \(sig): stopping"); server.stop() }
                s.resume()
                sources.append(s)
            }
            server.wait()
            _ = sources
        }
    }
}

// MARK: submit

extension CoordinatorCommand {
    struct Submit: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a grid, queue its jobs, and optionally follow them.",
            discussion: """
            The grid is checked here first: every problem is reported with its field path (e.g. \
            layers[2]) and nothing is queued from a grid with any error. Jobs the store already has \
            are reused (done ones are not run again; failed or cancelled ones are queued again).

            grid.json fields: experiment (name), model, tasks, methods, layers, lambda, gamma, seeds \
            (each a value or a list: the grid is their Cartesian product; a method's irrelevant axes \
            collapse), train_size, test_size, shots, solver {steps, lr, method (adam-avg | adam | \
            adam-uniform | adam-subgradient | fista), precision (int8 | fp32)}, eval {max_new_tokens}, prompt {query ("Q: {input}\\nA:"), target \
            (" {output}")}, \
            device ("cpu" | "gpu" | "any"), components ({"task": ["task a", "task b" or a job id]}: what \
            the add method sums per task; "a_b" without an entry adds a and b), and each method's own \
            section (lora, ia3, soft_prompt, fv, icv; see `worker run --help` for their keys). \
            Jobs that read others' artefacts (add, function-vector) run after them.

            Examples:
              coordinator submit cluster/grids/quickstart.json --tail
              coordinator submit grid.json --wait && echo all done
              coordinator submit grid.json --dry-run
            """
        )

        @Argument(help: ArgumentHelp("The grid file ('-' reads standard input).", valueName: "grid.json"))
        var grid: String

        @Flag(help: "Follow the experiment live until it ends (progress and mean ± std per configuration).")
        var tail = false

        @Flag(help: "Return when every job has ended: exit 0 if all are done, 1 otherwise.")
        var wait = false

        @Flag(name: .customLong("dry-run"), help: "Validate and count jobs; queue nothing.")
        var dryRun = false

        @OptionGroup var client: ClientOptions

        func run() throws {
            let text: String
            do {
                if grid == "-" {
                    text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
                } else {
                    guard let h = FileHandle(forReadingAtPath: grid) else {
                        throw CocoaError(.fileReadNoSuchFile)
                    }
                    text = String(decoding: h.readDataToEndOfFile(), as: UTF8.self)
                    h.closeFile()
                }
            } catch {
                printError("error: cannot read \(grid) (no such file, or not readable)")
                throw ExitCode(2)
            }
            let parsed: Grid
            do {
                parsed = try Grid.parse(text, maxJobs: .max)   // the coordinator has its own limit
            } catch let e as GridErrors {
                printError("\(grid): \(e.description)")
                printError("nothing was queued.")
                throw ExitCode(2)
            }
            try runClient {
                let c = try client.client()
                let r = try c.submit(gridJSON: text, dryRun: dryRun)
                guard r.ok else {
                    printError("\(grid): the coordinator refused the grid:")
                    for e in r.errors { printError("  " + (e.path.isEmpty ? e.message : "\(e.path): \(e.message)")) }
                    throw ExitCode(2)
                }
                let verb = dryRun ? "would queue" : "queued"
                print("experiment \(r.experiment): \(r.jobsTotal) jobs — \(verb) \(r.jobsNew) new, reused \(r.jobsReused)"
                      + (r.jobsRequeued > 0 ? " (\(r.jobsRequeued) of them queued again)" : ""))
                if dryRun {
                    let byMethod = Dictionary(grouping: parsed.expand(), by: { $0.spec.method.rawValue }).mapValues { $0.count }
                    print(byMethod.sorted { $0.key < $1.key }.map { "  \($0.key): \($0.value)" }.joined(separator: "\n"))
                    return
                }
                guard tail || wait else { return }
                let ok = try follow(client: c, experiment: r.experiment, live: tail, exitWhenFinished: true)
                if !ok { throw ExitCode.failure }
            }
        }
    }
}

// MARK: status

extension CoordinatorCommand {
    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show experiments, their job counts and the connected workers.",
            discussion: """
            Queued jobs say why they wait (e.g. "needs gpu, no gpu worker connected").

            Examples:
              coordinator status
              coordinator status quickstart --verbose
            """
        )

        @Argument(help: "Only this experiment.")
        var experiment: String?

        @Flag(help: "Also show the coordinator's counters (dropped frames, duplicate and refused results, ...).")
        var verbose = false

        @OptionGroup var client: ClientOptions

        func run() throws {
            try runClient {
                let r = try client.client().status(experiment: experiment ?? "")
                if !r.error.isEmpty { throw ClientError.remote(r.error) }
                print(Self.render(r, verbose: verbose), terminator: "")
            }
        }

        static func render(_ r: Intervene_V1_StatusReply, verbose: Bool) -> String {
            var out = ""
            if r.experiments.isEmpty {
                out += "no experiments yet (coordinator submit grid.json)\n"
            } else {
                let rows = r.experiments.map { e -> [String] in
                    let t = Date(timeIntervalSince1970: Double(e.createdUnixMs) / 1000)
                    let f = DateFormatter()
                    f.dateFormat = "yyyy-MM-dd HH:mm"
                    return [e.experiment, String(e.total), String(e.done), String(e.running), String(e.queued),
                            String(e.failed), String(e.cancelled), f.string(from: t)]
                }
                out += Render.grid(["experiment", "jobs", "done", "running", "queued", "failed", "cancelled", "submitted"],
                                   rows, rightAlign: [1, 2, 3, 4, 5, 6])
                for e in r.experiments where !e.pending.isEmpty {
                    for (why, n) in e.pending.sorted(by: { $0.value > $1.value }) {
                        out += "  \(e.experiment): \(n) queued — \(why)\n"
                    }
                }
            }
            out += "\n"
            if r.workers.isEmpty {
                out += "no workers connected (worker --connect ... --cpu)\n"
            } else {
                let now = Date().timeIntervalSince1970
                let rows = r.workers.map { w -> [String] in
                    let job = w.jobID.isEmpty ? "idle" : w.jobID + (w.total > 0 ? " step \(w.step)/\(w.total)" : "")
                    let seen = now - Double(w.lastSeenUnixMs) / 1000
                    return [w.workerID, w.device, String(w.threads), w.hostname, job, Render.duration(max(0, seen)) + " ago"]
                }
                out += Render.grid(["worker", "device", "threads", "host", "job", "last seen"], rows)
            }
            if verbose {
                out += "\nupdates: \(r.pubEndpoint)\n"
                for (k, v) in r.counters.sorted(by: { $0.key < $1.key }) { out += "  \(k): \(v)\n" }
            }
            return out
        }
    }
}

// MARK: tail

extension CoordinatorCommand {
    struct Tail: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Follow an experiment live: progress, ETA, and mean ± std over seeds per configuration.",
            discussion: """
            Takes a snapshot of the experiment, then follows the coordinator's update stream; a late \
            tail sees the whole state. On a terminal the table is redrawn in place; otherwise one line \
            is printed per finished job, and the table at the end. Without an experiment, follows all.

            Examples:
              coordinator tail quickstart
              coordinator tail quickstart --follow     # keep following after it ends
              coordinator tail > progress.log
            """
        )

        @Argument(help: "The experiment (default: all).")
        var experiment: String?

        @Flag(help: "Keep following after the experiment has ended.")
        var follow = false

        @OptionGroup var client: ClientOptions

        func run() throws {
            try runClient {
                let ok = try CoordinatorCommand.follow(client: try client.client(), experiment: experiment, live: true,
                                                       exitWhenFinished: experiment != nil && !follow)
                if !ok { throw ExitCode.failure }
            }
        }
    }
}

// MARK: results

extension CoordinatorCommand {
    struct Results: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print an experiment's jobs with their parameters, state, metrics and Δ artefact.",
            discussion: """
            table: one row per job, then mean ± std over seeds per configuration.
            csv:   one row per job, every parameter and metric as a column.
            json:  an array with one object per job: params, state, attempts, metrics, artefact_path.

            Examples:
              coordinator results quickstart
              coordinator results quickstart --format json | jq '.[] | select(.state == "done")'
            """
        )

        @Argument(help: "The experiment.")
        var experiment: String

        @Option(help: "table, csv or json.")
        var format: String = "table"

        @OptionGroup var client: ClientOptions

        func validate() throws {
            guard ["table", "csv", "json"].contains(format) else {
                throw ValidationError("--format must be table, csv or json, not \"\(format)\"")
            }
        }

        func run() throws {
            try runClient {
                let r = try client.client().query(experiment: experiment)
                let text = Render.results(try r.jobs.map(JobView.init), format: format)
                print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
            }
        }
    }
}

// MARK: compare

extension CoordinatorCommand {
    struct Compare: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Compare configurations task by task on one metric, paired by seed.",
            discussion: """
            Gathers the done jobs of the experiments named, groups them into arms (every parameter \
            but model, task, seed and test size) and prints one row per task: each arm's mean ± std \
            over seeds and its difference from the baseline arm paired by seed (± SE), then the \
            mean over the tasks every arm has (SE = √(Σ SE_t²)/T), the worst task's difference, and \
            the mean final objective, loss, ‖Δ‖ and non-zeros of each arm beside the metric.

            Examples:
              coordinator compare dev-base dev-subgrad
              coordinator compare dev-base dev-subgrad --baseline adam-subgradient --format markdown
              coordinator compare quickstart --metric judge_accuracy --format json
            """
        )

        @Argument(help: "One or more experiments; their jobs are pooled.")
        var experiments: [String]

        @Option(help: "The metric compared.")
        var metric: String = "exact_match"

        @Option(help: "The arm the others are paired against: its label, or a part naming one arm (default: the first).")
        var baseline: String?

        @Option(help: "table, markdown or json.")
        var format: String = "table"

        @OptionGroup var client: ClientOptions

        func validate() throws {
            guard ["table", "markdown", "json"].contains(format) else {
                throw ValidationError("--format must be table, markdown or json, not \"\(format)\"")
            }
            guard !experiments.isEmpty else { throw ValidationError("name at least one experiment") }
        }

        func run() throws {
            try runClient {
                let c = try client.client()
                var jobs: [JobView] = []
                for e in experiments { jobs += try c.query(experiment: e).jobs.map(JobView.init) }
                let cmp = try Comparison.make(jobs, metric: metric, baseline: baseline)
                let text = format == "json"
                    ? Render.comparisonJSON(cmp) : Render.comparison(cmp, markdown: format == "markdown")
                print(text, terminator: "")
            }
        }
    }
}

// MARK: report

extension CoordinatorCommand {
    struct Report: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write an experiment's tables and figures (Markdown, SVG, PNG, one HTML page).",
            discussion: """
            Writes into --out: report.md (a table of methods × tasks, the metrics side by side, mean ± \
            std over seeds, and the figures linked), index.html (tables and figures on one page), one \
            SVG per figure and a PNG of each when rsvg-convert is on the PATH. Figures: each metric \
            against the layer per method (two layers or more), each metric per task as bars, and |Δ| \
            per head and dimension for each task and layer from the stored Δ artefacts (regularised \
            beside unregularised where λ = γ = 0 ran too). Works while the experiment runs: queued \
            and running jobs are counted and the report is marked partial. Every file names the \
            command that made it and how long it took.

            Reads a running coordinator (--coordinator), or with --store the store folder itself, \
            with no coordinator needed.

            Examples:
              coordinator report quickstart --out reports/quickstart
              coordinator report table1 --store runs/store --out docs/results/table1
              coordinator report opinions --metric kl --metric alignment --out reports/opinions
            """
        )

        @Argument(help: "The experiment.")
        var experiment: String

        @Option(help: ArgumentHelp("The folder to write into (created if missing).", valueName: "dir"))
        var out: String

        @Option(help: ArgumentHelp(
            "Read this store folder (coordinator serve --store) instead of asking a coordinator.",
            valueName: "dir"))
        var store: String?

        @Option(name: .customLong("metric"), help: ArgumentHelp(
            "A metric to show (repeat for several; default: exact_match and judge_accuracy where present).",
            valueName: "name"))
        var metrics: [String] = []

        @Flag(name: .customLong("no-png"), help: "Write no PNGs even when rsvg-convert is present.")
        var noPNG = false

        @OptionGroup var client: ClientOptions

        func run() throws {
            let started = Date()
            let args = CommandLine.arguments
            let command = ([URL(fileURLWithPath: args.first ?? "coordinator").lastPathComponent] + args.dropFirst())
                .map { $0.contains(where: { " \"'$\\".contains($0) }) ? "'\($0)'" : $0 }.joined(separator: " ")
            try runClient {
                let source: ReportSource
                if let store {
                    source = .store(URL(fileURLWithPath: store, isDirectory: true))
                } else {
                    source = .coordinator(try client.client())
                }
                let snapshot: ExperimentSnapshot
                do {
                    snapshot = try source.snapshot(experiment)
                } catch let e as ClientError {
                    guard case .noReply = e else { throw e }
                    throw ReportError("\(e)\nWithout a coordinator, read its store: coordinator report "
                                      + "\(experiment) --store STORE_DIR --out \(out)")
                }
                let report = try ExperimentReport.make(snapshot, metrics: metrics.isEmpty ? nil : metrics)
                let w = try ReportRenderer.write(report, to: URL(fileURLWithPath: out, isDirectory: true),
                                                 command: command, started: started, png: !noPNG)
                let pending = report.counts.queued + report.counts.running
                print("\(out)/index.html: \(report.rows.count) methods × \(report.tasks.count) tasks, "
                      + "\(w.figures) figures, \(w.files.count) files"
                      + (report.partial ? " (partial: \(pending) jobs pending)" : ""))
                for n in w.notes + (w.pngNote.isEmpty ? [] : [w.pngNote]) { print("  " + n) }
            }
        }
    }
}

// MARK: cancel

extension CoordinatorCommand {
    struct Cancel: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cancel an experiment's unfinished jobs.",
            discussion: """
            Queued jobs are dropped; running ones are abandoned at their worker's next heartbeat. A job \
            that another (not cancelled) experiment also needs keeps running. Finished results stay; \
            submitting the grid again queues the cancelled jobs again.

            Example:
              coordinator cancel quickstart
            """
        )

        @Argument(help: "The experiment.")
        var experiment: String

        @OptionGroup var client: ClientOptions

        func run() throws {
            try runClient {
                let r = try client.client().cancel(experiment: experiment)
                print("experiment \(experiment): \(r.cancelled) job\(r.cancelled == 1 ? "" : "s") cancelled")
            }
        }
    }
}

// MARK: following

extension CoordinatorCommand {
    /// Follows an experiment (or all, with nil). `live`: draw the table (in place on a TTY); otherwise
    /// stay quiet. Returns whether every job ended done (when it returns because all ended).
    static func follow(client: CoordinatorClient, experiment: String?, live: Bool, exitWhenFinished: Bool) throws -> Bool {
        let follower = try ExperimentFollower(client: client, experiment: experiment)
        defer { follower.close() }
        let view = LiveView(follower: follower, enabled: live)
        view.handle(try follower.start())
        while true {
            if exitWhenFinished && follower.finished {
                view.finish()
                return follower.allDone
            }
            view.handle(try follower.poll(timeout: 0.25))
        }
    }
}

/// Draws the tail: in place on a terminal, as appended lines otherwise.
final class LiveView {
    let follower: ExperimentFollower
    let enabled: Bool
    let tty = isatty(STDOUT_FILENO) != 0
    private var drawnLines = 0
    private var lastDraw = Date.distantPast
    private var dirty = true
    private var lastProgressLine = Date.distantPast

    init(follower: ExperimentFollower, enabled: Bool) {
        self.follower = follower
        self.enabled = enabled
    }

    func handle(_ events: [ExperimentFollower.Event]) {
        guard enabled else { return }
        if !events.isEmpty { dirty = true }
        if tty {
            let since = Date().timeIntervalSince(lastDraw)
            if (dirty && since >= 0.25) || since >= 1 { redraw() }
            return
        }
        for e in events {
            switch e {
            case let .changed(exp, job, previous) where job.state != previous && job.state != .running && job.state != .queued:
                let st = follower.experiments[exp]
                let c = Render.counts(st?.views ?? [])
                var line = "\(Self.clock()) \(exp) \(job.state.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)) "
                    + "\(job.id) \(Self.describe(job.spec))"
                if job.state == .done {
                    let ms = Render.metricColumns([job])
                    line += "  " + ms.compactMap { m in job.metrics[m].map { "\(m)=\(String(format: "%.3f", $0))" } }.joined(separator: " ")
                } else if !job.error.isEmpty {
                    line += "  (\(job.error))"
                }
                line += "  [\(c.ended)/\(c.total)]"
                print(line)
            case .snapshot(let exp) where drawnLines == 0:
                let st = follower.experiments[exp]
                print("\(Self.clock()) \(exp): " + Render.progressLine(Render.counts(st?.views ?? []), eta: nil))
                drawnLines = 1
                lastProgressLine = Date()
            default:
                break
            }
        }
        if Date().timeIntervalSince(lastProgressLine) > 30 {
            lastProgressLine = Date()
            for st in follower.experiments.values.sorted(by: { $0.name < $1.name }) where !events.isEmpty {
                print("\(Self.clock()) \(st.name): " + Render.progressLine(Render.counts(st.views), eta: eta(st)))
            }
        }
        fflush(stdout)
    }

    func finish() {
        guard enabled else { return }
        if tty {
            redraw()
        } else {
            print(render(), terminator: "")
        }
        fflush(stdout)
    }

    private func eta(_ st: ExperimentFollower.ExperimentState) -> Double? {
        Render.eta(st.views, since: st.submitted, now: Date().timeIntervalSince1970)
    }

    static func clock() -> String {
        let f = DateFormatter()
        f.dateFormat = "HH:mm:ss"
        return f.string(from: Date())
    }

    static func describe(_ s: JobSpec) -> String {
        var parts = [s.task, s.method.rawValue]
        let a = s.method.axes
        if a.contains(.layer) { parts.append("layer \(s.layer)") }
        if a.contains(.lambda) { parts.append("λ \(Render.num(s.lambda))") }
        if a.contains(.gamma) { parts.append("γ \(Render.num(s.gamma))") }
        parts.append("seed \(s.seed)")
        return parts.joined(separator: " ")
    }

    func render() -> String {
        var out = ""
        for st in follower.experiments.values.sorted(by: { ($0.submitted, $0.name) < ($1.submitted, $1.name) }) {
            let views = st.views
            out += "experiment \(st.name)\n"
            out += Render.progressLine(Render.counts(views), eta: eta(st)) + "\n\n"
            if !views.isEmpty { out += Render.summary(views) }
            let running = views.filter { $0.state == .running }
            if !running.isEmpty {
                out += "\nrunning:\n"
                for j in running.prefix(8) {
                    out += "  \(j.id) \(Self.describe(j.spec)) on \(j.worker)" + (j.total > 0 ? " step \(j.step)/\(j.total)" : "") + "\n"
                }
                if running.count > 8 { out += "  ... and \(running.count - 8) more\n" }
            }
            let failed = views.filter { $0.state == .failed }
            if !failed.isEmpty {
                out += "\nfailed:\n"
                for j in failed.prefix(8) { out += "  \(j.id) \(Self.describe(j.spec)): \(j.error)\n" }
                if failed.count > 8 { out += "  ... and \(failed.count - 8) more\n" }
            }
            let waiting = Set(views.filter { $0.state == .queued }.map { $0.pendingReason }.filter { !$0.isEmpty })
            if !waiting.isEmpty { out += "\nwaiting: " + waiting.sorted().joined(separator: "; ") + "\n" }
            out += "\n"
        }
        return out
    }

    private func redraw() {
        let text = render()
        var s = ""
        if drawnLines > 0 { s += "\u{1B}[\(drawnLines)F\u{1B}[J" }
        s += text
        print(s, terminator: "")
        fflush(stdout)
        drawnLines = text.filter { $0 == "\n" }.count
        lastDraw = Date()
        dirty = false
    }
}

// MARK: drill

extension CoordinatorCommand {
    struct Drill: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A fault drill: kill workers and the coordinator while a grid runs, then check nothing was lost.",
            discussion: """
            Starts a coordinator (its store in --dir) and --workers worker processes on loopback, \
            submits --jobs synthetic jobs (no model; --step-ms per step), and while they run \
            SIGKILLs a random worker and restarts it under the same id (--worker-kills times), \
            SIGKILLs the coordinator and restarts it on its store (--coordinator-kills times), stalls \
            a worker past its lease (SIGSTOP, then SIGCONT) and floods the coordinator with \
            --flood malformed, truncated and wrong-version frames. With keys (the default; --no-keys \
            turns them off) every process presents CurveZMQ keys, and intruders without an admitted \
            key try to post a result, submit and cancel (they must hear nothing), and a client key \
            forges a result (it must be refused). Then it prints jobs, faults \
            injected, jobs lost, failed and duplicated, requeues and the time each coordinator \
            restart took to recover, and exits non-zero if any job was lost, failed or has no artefact.

            Examples:
              coordinator drill                                   # 80 jobs, 3 workers, 20 + 2 kills (~1 min)
              coordinator drill --jobs 20 --worker-kills 5 --coordinator-kills 1 --flood 500
            """
        )

        @Option(help: "Synthetic jobs in the grid.") var jobs = 80
        @Option(help: "Worker processes.") var workers = 3
        @Option(help: "Worker SIGKILL + restarts.") var workerKills = 20
        @Option(help: "Coordinator SIGKILL + restarts.") var coordinatorKills = 2
        @Option(help: "Workers stalled past their lease.") var stalls = 1
        @Option(help: "Malformed frames sent in one flood (0: none).") var flood = 2000
        @Option(help: "Seconds between faults.") var interval = 1.5
        @Option(help: "Milliseconds per synthetic solver step (100 steps a job).") var stepMs = 15
        @Option(help: "The lease in seconds.") var lease = 3.0
        @Option(help: "Attempts before a job fails for good (each kill costs the job on that worker one).")
        var maxAttempts = 8
        @Option(help: "Loopback port (the next one is the update stream).") var port = 5650
        @Option(help: "Folder for the store and logs (default: a new temporary folder).") var dir: String?
        @Option(help: "The worker executable (default: `worker` beside this one).") var workerBinary: String?
        @Flag(inversion: .prefixedNo, help: "CurveZMQ keys for every process, and intruders without them.")
        var keys = true

        func validate() throws {
            guard jobs >= 1, workers >= 1, workerKills >= 0, coordinatorKills >= 0, stalls >= 0, flood >= 0 else {
                throw ValidationError("counts must be ≥ 0 (jobs and workers ≥ 1)")
            }
            guard interval > 0, lease > 0, stepMs >= 0 else {
                throw ValidationError("--interval and --lease must be > 0")
            }
        }

        func run() throws {
            // this executable, wherever it was found (a bare name from $PATH is not a path)
            let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path != "/proc/self/exe"
                ? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
                : URL(fileURLWithPath: Bundle.main.executablePath ?? CommandLine.arguments[0]).resolvingSymlinksInPath()
            let worker = workerBinary ?? me.deletingLastPathComponent().appendingPathComponent("worker").path
            guard FileManager.default.isExecutableFile(atPath: worker) else {
                throw ValidationError(
                    "no worker executable at \(worker); build it (swift build --product worker) or give --worker-binary")
            }
            let folder = dir ?? NSTemporaryDirectory() + "intervene-drill-\(UUID().uuidString.prefix(8))"
            var c = FaultDrill.Config(coordinatorBinary: me.path, workerBinary: worker, directory: folder, port: port)
            c.jobs = jobs; c.workers = workers; c.workerKills = workerKills; c.coordinatorKills = coordinatorKills
            c.stalls = stalls; c.floodFrames = flood; c.interval = interval; c.stepMs = stepMs; c.lease = lease
            c.maxAttempts = maxAttempts
            c.keys = keys
            print("drill: store and logs in \(folder)")
            let report = try FaultDrill(c).run { print("  " + $0) }
            print(report.text, terminator: "")
            if !report.ok { throw ExitCode.failure }
        }
    }
}
