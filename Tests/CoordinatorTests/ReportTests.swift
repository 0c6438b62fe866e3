import Foundation
import JobCore
import XCTest
@testable import Coordinator

#if canImport(FoundationXML)
import FoundationXML
#endif

/// `coordinator report` on a store built by hand: the table's numbers, the figures' marks, a
/// partial experiment, both data sources, and (when chromium is installed) the page in a browser.
final class ReportTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("report-tests-\(UUID().uuidString)")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    var storeDir: URL { dir.appendingPathComponent("store") }

    /// exact_match per (method label, task) and seed; judge = exact match + 0.1.
    static let em: [String: [Double]] = [
        "zero-shot/antonym": [0.0, 0.1, 0.2], "zero-shot/synonym": [0.0, 0.0, 0.0],
        "few-shot/antonym": [0.1, 0.2, 0.3], "few-shot/synonym": [0.05, 0.05, 0.2],
        "reg2/antonym": [0.3, 0.4, 0.5], "reg2/synonym": [0.1, 0.1, 0.25],
        "reg4/antonym": [0.2, 0.2, 0.5], "reg4/synonym": [0.0, 0.1, 0.2],
        "unreg2/antonym": [0.25, 0.35, 0.3], "unreg2/synonym": [0.05, 0.1, 0.15],
    ]

    struct Planned {
        var key: String
        var spec: JobSpec
    }

    /// zero-shot and few-shot, the intervention at layers 2 and 4 (λ = γ = 0.01) and unregularised
    /// at layer 2; antonym and synonym; seeds 0–2: 30 jobs.
    static func plan() -> [Planned] {
        var out: [Planned] = []
        for seed in 0..<3 {
            for task in ["antonym", "synonym"] {
                func spec(_ m: JobMethod, layer: Int = 4, lg: Double = 0.01) -> JobSpec {
                    JobSpec(task: task, method: m, layer: layer, lambda: lg, gamma: lg, seed: seed, testSize: 50,
                            steps: 60)
                }
                out.append(Planned(key: "zero-shot/\(task)", spec: spec(.zeroShot)))
                out.append(Planned(key: "few-shot/\(task)", spec: spec(.fewShot)))
                out.append(Planned(key: "reg2/\(task)", spec: spec(.intervention, layer: 2)))
                out.append(Planned(key: "reg4/\(task)", spec: spec(.intervention, layer: 4)))
                out.append(Planned(key: "unreg2/\(task)", spec: spec(.intervention, layer: 2, lg: 0)))
            }
        }
        return out
    }

    /// A Δ of 3 heads × 4: the regularised ones have head 1 zero throughout and 2 more zeros.
    static func delta(_ spec: JobSpec) -> DeltaArtefact {
        var v = (0..<12).map { Float($0 + 1) * 0.01 * Float(spec.seed + 1) }
        if spec.lambda > 0 {
            for i in 4..<8 { v[i] = 0 }
            v[0] = 0; v[11] = 0
        }
        let md = DeltaMetadata(
            model: spec.model, modelSHA256: "00", task: spec.task, method: spec.method.rawValue, layer: spec.layer,
            heads: 3, headDim: 4, seed: spec.seed, lambda: spec.lambda, gamma: spec.gamma, steps: spec.steps,
            lr: spec.lr, solver: "adam-avg", precision: "int8", trainSize: spec.trainSize, finalLoss: 1)
        return DeltaArtefact(delta: v, metadata: md)
    }

    /// Writes the experiment into a store; `state` decides each job's state (done by default).
    func makeStore(experiment: String = "exp", state: (Planned) -> JobState = { _ in .done }) throws {
        let store = try Store(directory: storeDir)
        defer { store.close() }
        var records: [JobRecord] = []
        for (i, p) in Self.plan().enumerated() {
            let st = state(p)
            var j = JobRecord(id: p.spec.id, spec: p.spec, device: .any, seq: i, state: st,
                              worker: st == .queued ? nil : "w1", created: 1000,
                              started: st == .queued ? nil : 1000 + Double(i))
            if st == .done {
                let em = Self.em[p.key]![p.spec.seed]
                j.metrics = ["exact_match": em, "judge_accuracy": em + 0.1, "final_loss": 1]
                j.ended = 1010 + Double(i)
                if p.spec.method.learnsDelta {
                    let (sha, rel) = try store.putArtefact(Self.delta(p.spec).data,
                                                           claimedSHA256: SHA256.hex(Self.delta(p.spec).data))
                    j.artefactSHA256 = sha
                    j.artefactPath = rel
                }
            }
            if st == .failed { j.error = "boom"; j.ended = 1010 }
            records.append(j)
        }
        try store.saveJobs(records)
        try store.saveExperiment(ExperimentRecord(name: experiment, gridJSON: "{}", submitted: 999,
                                                  jobIDs: records.map(\.id)))
    }

    /// Counts elements by their class attribute; fails on malformed XML.
    final class Marks: NSObject, XMLParserDelegate {
        var byClass: [String: Int] = [:]
        var root = ""
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]) {
            if root.isEmpty { root = name }
            if let c = attributes["class"] { byClass[c, default: 0] += 1 }
        }
    }

    func marks(_ url: URL, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Int] {
        let m = Marks()
        let p = XMLParser(data: try Data(contentsOf: url))
        p.delegate = m
        XCTAssertTrue(p.parse(), "\(url.lastPathComponent): not well-formed XML: \(String(describing: p.parserError))",
                      file: file, line: line)
        XCTAssertEqual(m.root, "svg", file: file, line: line)
        return m.byClass
    }

    func testTableNumbersFiguresAndFooters() throws {
        try makeStore()
        let snap = try ReportSource.store(storeDir).snapshot("exp")
        XCTAssertEqual(snap.jobs.count, 30)
        let r = try ExperimentReport.make(snap)
        XCTAssertFalse(r.partial)
        XCTAssertEqual(r.metrics, ["exact_match", "judge_accuracy"])
        XCTAssertEqual(r.tasks, ["antonym", "synonym"])
        XCTAssertEqual(r.rows.map(\.label), [
            "zero-shot", "few-shot", "intervention λ=0.01 γ=0.01 · layer 2", "intervention λ=0.01 γ=0.01 · layer 4",
            "intervention λ=0 γ=0 · layer 2",
        ])
        XCTAssertEqual(r.layers, [2, 4])
        // few-shot antonym: 0.1, 0.2, 0.3 → 0.2 ± 0.1; synonym: 0.05, 0.05, 0.2 → 0.1 ± 0.0866
        let fs = try XCTUnwrap(r.cells[1][0].stats["exact_match"])
        XCTAssertEqual(fs.mean, 0.2, accuracy: 1e-12)
        XCTAssertEqual(fs.std, 0.1, accuracy: 1e-12)
        XCTAssertEqual(fs.n, 3)
        let syn = try XCTUnwrap(r.cells[1][1].stats["judge_accuracy"])
        XCTAssertEqual(syn.mean, 0.2, accuracy: 1e-12)
        XCTAssertEqual(syn.std, (0.015 / 2).squareRoot(), accuracy: 1e-12)

        let out = dir.appendingPathComponent("out")
        let w = try ReportRenderer.write(r, to: out, command: "coordinator report exp --out out", started: Date(),
                                         png: false)
        let md = try String(contentsOf: out.appendingPathComponent("report.md"), encoding: .utf8)
        let header = "| method | layer | seeds | antonym EM | antonym judge | synonym EM | synonym judge |"
        XCTAssertTrue(md.contains(header), md)
        let fewShot = "| few-shot | – | 3 | 0.200 ± 0.100 | 0.300 ± 0.100 | 0.100 ± 0.087 | 0.200 ± 0.087 |"
        XCTAssertTrue(md.contains(fewShot), md)
        XCTAssertTrue(md.contains("| intervention λ=0.01 γ=0.01 | 2 | 3 | **0.400 ± 0.100** | **0.500 ± 0.100** |"), md)
        XCTAssertTrue(md.contains("Complete: 30 of 30 jobs done."), md)
        XCTAssertTrue(md.contains("Made by `coordinator report exp --out out`"), md)
        XCTAssertTrue(md.contains("![exact match against the layer Δ is added at](fig1-exact_match-vs-layer.svg)"), md)

        XCTAssertEqual(Set(w.files), [
            "report.md", "index.html", "fig1-exact_match-vs-layer.svg", "bars-exact_match.svg",
            "fig1-judge_accuracy-vs-layer.svg", "bars-judge_accuracy.svg", "fig2-delta-antonym-layer2.svg",
            "fig2-delta-antonym-layer4.svg", "fig2-delta-synonym-layer2.svg", "fig2-delta-synonym-layer4.svg",
        ])
        XCTAssertEqual(w.pngNote, "PNG not made (--no-png).")

        // Figure 1: per task, the λ = 0.01 series at layers 2 and 4 and λ = 0 at layer 2 (3 points,
        // each with an error bar: every cell has a spread), and the two baselines as dashed lines.
        let sweep = try marks(out.appendingPathComponent("fig1-exact_match-vs-layer.svg"))
        XCTAssertEqual(sweep["point"], 6)
        XCTAssertEqual(sweep["errorbar"], 6)
        XCTAssertEqual(sweep["reference"], 4)
        XCTAssertEqual(sweep["line"], 2, "a line joins the two layers of the regularised series, per task")
        // Bars: 5 rows × 2 tasks; zero-shot synonym is 0 ± 0 (a bar of no height, no error bar).
        let bars = try marks(out.appendingPathComponent("bars-exact_match.svg"))
        XCTAssertEqual(bars["bar"], 10)
        XCTAssertEqual(bars["errorbar"], 9)
        // Figure 2 at layer 2: regularised beside unregularised, 3 heads × 4 dims each; the
        // regularised Δ has head 1 zero throughout.
        let heat = try marks(out.appendingPathComponent("fig2-delta-antonym-layer2.svg"))
        XCTAssertEqual(heat["cell"], 24)
        XCTAssertEqual(heat["zero-head"], 1)
        let heatURL = out.appendingPathComponent("fig2-delta-antonym-layer2.svg")
        let heatText = try String(contentsOf: heatURL, encoding: .utf8)
        let reg = try XCTUnwrap(heatText.range(of: "intervention λ=0.01 γ=0.01 · seed 0"))
        let unreg = try XCTUnwrap(heatText.range(of: "intervention λ=0 γ=0 · seed 0"))
        XCTAssertLessThan(reg.lowerBound, unreg.lowerBound, "regularised first, unregularised beside it")
        XCTAssertTrue(heatText.contains("6 of 12 non-zero"), heatText)
        XCTAssertTrue(heatText.contains("<desc>") && heatText.contains("coordinator report exp --out out"))
        XCTAssertEqual(try marks(out.appendingPathComponent("fig2-delta-antonym-layer4.svg"))["cell"], 12)

        let html = try String(contentsOf: out.appendingPathComponent("index.html"), encoding: .utf8)
        XCTAssertEqual(html.components(separatedBy: "<figure ").count - 1, 8)
        XCTAssertTrue(html.contains("<th colspan=\"2\" class=\"group\">antonym</th>"), html)
        XCTAssertTrue(html.contains("<footer>") && html.contains("coordinator report exp --out out"))
    }

    func testAPartialExperimentIsMarkedAndCountsItsPendingJobs() throws {
        // seed 2 of every job is queued, the layer-4 ones of seed 1 are running, one seed-1 job failed
        try makeStore { p in
            if p.spec.seed == 2 { return .queued }
            if p.spec.seed == 1 && p.key.hasPrefix("reg4") { return .running }
            if p.spec.seed == 1 && p.key == "few-shot/synonym" { return .failed }
            return .done
        }
        let r = try ExperimentReport.make(try ReportSource.store(storeDir).snapshot("exp"))
        XCTAssertTrue(r.partial)
        XCTAssertEqual(r.counts.queued, 10)
        XCTAssertEqual(r.counts.running, 2)
        XCTAssertEqual(r.counts.failed, 1)
        let out = dir.appendingPathComponent("out")
        _ = try ReportRenderer.write(r, to: out, command: "coordinator report exp --out out", started: Date(),
                                     png: false)
        let md = try String(contentsOf: out.appendingPathComponent("report.md"), encoding: .utf8)
        XCTAssertTrue(md.contains("**Partial** (the experiment is still running): 17 of 30 jobs done, 2 running, "
                                  + "10 queued, 1 failed."), md)
        // few-shot antonym: seeds 0, 1 done (0.1, 0.2), seed 2 queued
        XCTAssertTrue(md.contains("| few-shot | – | 3 | 0.150 ± 0.071 (2/3) |"), md)
        XCTAssertTrue(md.contains("0.050 (1/3, 1 failed)"), "few-shot synonym: one done, one failed: \(md)")
        XCTAssertTrue(md.contains("## Failed jobs") && md.contains("boom"), md)
        let html = try String(contentsOf: out.appendingPathComponent("index.html"), encoding: .utf8)
        XCTAssertTrue(html.contains("<p id=\"status\" class=\"partial\"><b>Partial</b>"), html)
        // pending points are drawn hollow
        let sweep = try String(contentsOf: out.appendingPathComponent("fig1-exact_match-vs-layer.svg"), encoding: .utf8)
        XCTAssertTrue(sweep.contains("fill=\"#fff\" stroke=\""), "hollow points: \(sweep)")

        // nothing done yet: a table of what waits, no figures
        try FileManager.default.removeItem(at: storeDir)
        try makeStore { _ in .queued }
        let q = try ExperimentReport.make(try ReportSource.store(storeDir).snapshot("exp"))
        let w = try ReportRenderer.write(q, to: out, command: "c", started: Date(), png: false)
        let md2 = try String(contentsOf: out.appendingPathComponent("report.md"), encoding: .utf8)
        XCTAssertTrue(md2.contains("| zero-shot | – | 3 | queued | queued |"), md2)
        XCTAssertEqual(w.figures, 0, "no figure without a value: \(w.files)")
        XCTAssertTrue(md2.contains("No figures yet."), md2)
    }

    func testErrorsNameTheFieldAndTheFix() throws {
        XCTAssertThrowsError(try ReportSource.store(dir).snapshot("exp")) {
            XCTAssertTrue("\($0)".contains("--store") && "\($0)".contains("no store.sqlite"), "\($0)")
        }
        try makeStore()
        XCTAssertThrowsError(try ReportSource.store(storeDir).snapshot("nope")) {
            XCTAssertTrue("\($0)".contains("no experiment named \"nope\"") && "\($0)".contains("it has: exp"), "\($0)")
        }
        let snap = try ReportSource.store(storeDir).snapshot("exp")
        XCTAssertThrowsError(try ExperimentReport.make(snap, metrics: ["kl"])) {
            XCTAssertTrue("\($0)".contains("--metric kl") && "\($0)".contains("exact_match"), "\($0)")
        }
        // a metric named explicitly is what the table shows
        let r = try ExperimentReport.make(snap, metrics: ["final_loss"])
        XCTAssertEqual(ReportRenderer.table(r).sub, ["final_loss"])
        XCTAssertTrue(ReportRenderer.lowerIsBetter("final_loss") && ReportRenderer.lowerIsBetter("kl"))
    }

    /// The coordinator and the store folder give the same report.
    func testACoordinatorAndItsStoreGiveTheSameReport() throws {
        try makeStore()
        let server = try CoordinatorServer(options: .init(
            storeDirectory: storeDir, bind: "tcp://127.0.0.1:*", pub: "tcp://127.0.0.1:*", tickMs: 50))
        try server.start()
        defer { server.stop() }
        let client = try CoordinatorClient(endpoint: server.endpoint, timeoutSeconds: 5)
        let live = try ExperimentReport.make(try ReportSource.coordinator(client).snapshot("exp"))
        let offline = try ExperimentReport.make(try ReportSource.store(storeDir).snapshot("exp"))
        XCTAssertEqual(ReportRenderer.table(live).markdown, ReportRenderer.table(offline).markdown)
        XCTAssertEqual(live.deltaGroups.map { $0.panels.map(\.path) },
                       offline.deltaGroups.map { $0.panels.map(\.path) })
        XCTAssertTrue(live.source.hasPrefix("coordinator tcp://127.0.0.1:"), live.source)
    }

    /// index.html in headless Chromium: every figure loads and is drawn (cluster/check-report.py).
    func testTheReportPageIsDrawnInChromium() throws {
        guard ["chromium", "chromium-browser", "google-chrome"].contains(where: { name in
            (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":")
                .contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(name)") }
        }) else {
            print("ReportTests: skipped the browser check: chromium is not installed (apt-get install chromium)")
            throw XCTSkip("chromium is not installed (Debian: apt-get install chromium)")
        }
        try makeStore { $0.spec.seed == 2 && $0.key.hasPrefix("reg4") ? .running : .done }
        // INTERVENE_REPORT_TEST_OUT keeps the page and its screenshot there, to look at
        let keep = ProcessInfo.processInfo.environment["INTERVENE_REPORT_TEST_OUT"].map { URL(fileURLWithPath: $0) }
        let out = keep ?? dir.appendingPathComponent("out")
        let r = try ExperimentReport.make(try ReportSource.store(storeDir).snapshot("exp"))
        _ = try ReportRenderer.write(r, to: out, command: "coordinator report exp --out out", started: Date())
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", root.appendingPathComponent("cluster/check-report.py").path, out.path,
                       "--screenshot", (keep ?? dir).appendingPathComponent("page.png").path]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        print(text)
        XCTAssertEqual(p.terminationStatus, 0, text)
        XCTAssertTrue(text.contains("8 figures"), text)
    }

    /// A job's second evaluation (an intervention's 0-shot, a function vector's k-shot) is named
    /// after its metric.
    func testSecondEvaluationsAreNamed() {
        XCTAssertEqual(ExperimentReport.metricName("few_shot_exact_match"), "exact match (k-shot)")
        XCTAssertEqual(ExperimentReport.metricName("zero_shot_judge_accuracy"), "judge accuracy (0-shot)")
        XCTAssertEqual(ExperimentReport.metricName("kl"), "kl")
    }

    /// Jobs that read others' artefacts sit in the rows of their method (an add job's inputs
    /// differ per task and seed); jobs that only make an input (a head ranking) are no row or
    /// column, but count in the totals, and their failures are listed.
    func testInputJobsAreNoRowsAndAddJobsOneRow() throws {
        var views: [JobView] = []
        for seed in 0..<2 {
            for task in ["a_b", "c_d"] {
                var ranking = JobSpec(task: task, method: .fvHeads, seed: seed, testSize: 0)
                ranking = ranking.normalised
                var fv = JobSpec(task: task, method: .functionVector, seed: seed, testSize: 50)
                fv.inputs = [ranking.id]
                var add = JobSpec(task: task, method: .add, seed: seed, testSize: 50)
                add.inputs = ["\(task)-x-\(seed)", "\(task)-y-\(seed)"]
                let failed = task == "c_d" && seed == 1
                views.append(JobView(id: ranking.id, spec: ranking, state: failed ? .failed : .done,
                                     error: failed ? "no room" : ""))
                views.append(JobView(id: fv.id, spec: fv.normalised, state: .done, metrics: ["exact_match": 0.5]))
                views.append(JobView(id: add.id, spec: add.normalised, state: .done, metrics: ["exact_match": 0.25]))
            }
        }
        let snap = ExperimentSnapshot(experiment: "e", submitted: 0, jobs: views, source: "test")
        let r = try ExperimentReport.make(snap)
        XCTAssertEqual(r.rows.map(\.label), ["function-vector", "add · layer 4"])
        XCTAssertEqual(r.tasks, ["a_b", "c_d"])
        XCTAssertEqual(r.cells[1][0].stats["exact_match"]?.n, 2, "both seeds' add jobs in one cell")
        XCTAssertEqual(r.counts.done, 11)
        XCTAssertEqual(r.failures.map(\.error), ["no room"])
        // compare pairs the arms that score: a ranking is none (it would leave every row a hole)
        let c = try Comparison.make(views, metric: "exact_match")
        XCTAssertEqual(c.arms.map(\.label), ["function-vector", "add"])
        XCTAssertEqual(c.suite.count, 2)
    }
}
