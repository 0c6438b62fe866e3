import Foundation
import JobCore

/// A table with a spanning header row (task names over their metric columns), rendered as
/// Markdown (the spanning row folded into the column names) or HTML (two header rows).
public struct ReportTable: Sendable {
    public var title: String
    /// The leading columns (method, layer, seeds), then the spanned ones.
    public var lead: [String]
    public var groups: [String]
    public var sub: [String]
    public var rows: [[String]]
    /// (row, column) of the cells to emphasise.
    public var bold: Set<[Int]> = []
    public var note: String = ""

    var columns: [String] { lead + groups.flatMap { g in sub.map { "\(g) \($0)" } } }

    public var markdown: String {
        let esc = { (s: String) in s.replacingOccurrences(of: "|", with: "\\|") }
        var out = ["| " + columns.map(esc).joined(separator: " | ") + " |",
                   "|" + columns.indices.map { $0 < lead.count ? "---|" : "---:|" }.joined()]
        for (r, row) in rows.enumerated() {
            let cells = row.enumerated().map { c, v in bold.contains([r, c]) ? "**\(esc(v))**" : esc(v) }
            out.append("| " + cells.joined(separator: " | ") + " |")
        }
        return out.joined(separator: "\n") + "\n" + (note.isEmpty ? "" : "\n" + note + "\n")
    }

    public var html: String {
        let e = SVG.escape
        var out = "<table>\n<thead>\n<tr>"
        out += lead.map { "<th rowspan=\"2\">\(e($0))</th>" }.joined()
        out += groups.map { "<th colspan=\"\(sub.count)\" class=\"group\">\(e($0))</th>" }.joined() + "</tr>\n<tr>"
        out += groups.flatMap { _ in sub.map { "<th>\(e($0))</th>" } }.joined() + "</tr>\n</thead>\n<tbody>\n"
        for (r, row) in rows.enumerated() {
            out += "<tr>" + row.enumerated().map { c, v in
                let t = bold.contains([r, c]) ? "<b>\(e(v))</b>" : e(v)
                return c < lead.count ? "<td>\(t)</td>" : "<td class=\"num\">\(t)</td>"
            }.joined() + "</tr>\n"
        }
        return out + "</tbody>\n</table>\n" + (note.isEmpty ? "" : "<p class=\"note\">\(e(note))</p>\n")
    }
}

/// A figure of the report: an SVG document and what it shows.
public struct ReportFigure: Sendable {
    /// File name without extension.
    public var name: String
    public var title: String
    public var svg: SVG
}

/// Turns an `ExperimentReport` into files: `report.md` (tables, figures linked), `index.html`
/// (tables and figures on one page), one SVG per figure and, when `rsvg-convert` is on the PATH,
/// a PNG of each. Every file says the command that made it, when, how long the report took and the
/// experiment's wall time.
public enum ReportRenderer {
    /// Short column names for metrics (the table's note spells them out).
    static func short(_ m: String) -> String {
        for (prefix, tag) in ExperimentReport.promptVariants where m.hasPrefix(prefix) {
            return short(String(m.dropFirst(prefix.count))) + " (\(tag))"
        }
        return ["exact_match": "EM", "judge_accuracy": "judge", "first_token_accuracy": "first token"][m] ?? m
    }

    /// Whether smaller is better (losses, divergences): decides which cell a table emphasises.
    public static func lowerIsBetter(_ m: String) -> Bool {
        let l = m.lowercased()
        return l.contains("loss") || l.contains("kl") || l.contains("objective") || l.contains("error")
    }

    static func f(_ x: Double) -> String { String(format: "%.3f", x) }

    /// A cell's text for one metric: mean ± std over the seeds done, "(k/N)" when not every job
    /// of the cell is done, or what the cell waits on.
    static func cellText(_ c: ExperimentReport.Cell, _ metric: String) -> String {
        guard let s = c.stats[metric] else {
            if c.pending > 0 { return c.running > 0 ? "running" : "queued" }
            if c.failed > 0 { return "failed" }
            return "–"
        }
        var t = s.n > 1 ? f(s.mean) + " ± " + f(s.std) : f(s.mean)
        if c.done < c.jobs {
            t += " (\(c.done)/\(c.jobs)" + (c.failed > 0 ? ", \(c.failed) failed" : "") + ")"
        }
        return t
    }

    /// The paper's table: methods × tasks, the metrics side by side under each task.
    public static func table(_ r: ExperimentReport) -> ReportTable {
        var rows: [[String]] = []
        for (i, row) in r.rows.enumerated() {
            let n = r.cells[i].map(\.jobs).max() ?? 0
            rows.append([row.method, row.layer.map(String.init) ?? "–", String(n)]
                + r.tasks.indices.flatMap { t in r.metrics.map { cellText(r.cells[i][t], $0) } })
        }
        var bold = Set<[Int]>()
        if r.rows.count > 1 {
            for t in r.tasks.indices {
                for (k, m) in r.metrics.enumerated() {
                    let means = r.rows.indices.compactMap { i in r.cells[i][t].stats[m].map { (i, $0.mean) } }
                    guard let best = lowerIsBetter(m) ? means.map(\.1).min() : means.map(\.1).max() else { continue }
                    for (i, v) in means where v == best { bold.insert([i, 3 + t * r.metrics.count + k]) }
                }
            }
        }
        let names = r.metrics.map { "\(short($0)): \(ExperimentReport.metricName($0))" }
        let note = "Mean ± std over seeds (seeds: jobs per cell; (k/N): k of N done). "
            + names.joined(separator: "; ") + ". Bold: the best mean of a column."
        return ReportTable(
            title: r.metrics.map(ExperimentReport.metricName).joined(separator: " and "),
            lead: ["method", "layer", "seeds"], groups: r.tasks, sub: r.metrics.map(short), rows: rows, bold: bold,
            note: note)
    }

    /// A row's colour: its series' (as in the sweep), lighter for each later layer of the series.
    static func rowColours(_ r: ExperimentReport) -> [String] {
        let series = r.series
        return r.rows.map { row in
            let s = series.firstIndex(of: row.method)!
            let layers = r.rows.filter { $0.method == row.method }.compactMap(\.layer)
            guard let l = row.layer, layers.count > 1, let k = layers.firstIndex(of: l) else { return Charts.colour(s) }
            return Charts.lighter(Charts.colour(s), 0.55 * Double(k) / Double(layers.count - 1))
        }
    }

    static func value(_ c: ExperimentReport.Cell, _ m: String) -> Charts.Value? {
        c.stats[m].map { Charts.Value(mean: $0.mean, std: $0.std, n: $0.n, partial: c.pending > 0) }
    }

    static func fileName(_ s: String) -> String {
        String(s.lowercased().map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "-" })
    }

    /// The figures: per metric the sweep over layers (two layers or more) and the bars per task
    /// (up to 12 rows), then a heatmap per task and layer that has Δs. `notes` collects what could
    /// not be drawn.
    public static func figures(_ r: ExperimentReport, notes: inout [String]) -> [ReportFigure] {
        var out: [ReportFigure] = []
        let series = r.series
        for m in r.metrics {
            let name = ExperimentReport.metricName(m)
            guard r.cells.contains(where: { $0.contains { $0.stats[m] != nil } }) else { continue }
            if r.layers.count >= 2 {
                let panels = r.tasks.indices.map { t in
                    var p = Charts.SweepPanel(title: r.tasks[t], points: [:], flat: [:])
                    for (i, row) in r.rows.enumerated() {
                        guard let v = value(r.cells[i][t], m), let s = series.firstIndex(of: row.method) else {
                            continue
                        }
                        if let l = row.layer { p.points[s, default: [:]][l] = v } else { p.flat[s] = v }
                    }
                    return p
                }
                let title = "\(name) against the layer Δ is added at"
                out.append(ReportFigure(
                    name: "fig1-\(fileName(m))-vs-layer", title: title,
                    svg: Charts.sweep(title: title, metric: name, xLabel: "layer", xs: r.layers, series: series,
                                      panels: panels)))
            }
            if r.rows.count <= 12 {
                let title = "\(name) per task"
                let values = r.tasks.indices.map { t in r.rows.indices.map { value(r.cells[$0][t], m) } }
                out.append(ReportFigure(
                    name: "bars-\(fileName(m))", title: title,
                    svg: Charts.bars(title: title, metric: name, groups: r.tasks,
                                     series: r.rows.map { r.layers.count > 1 ? $0.label : $0.method },
                                     values: values, colours: rowColours(r))))
            } else {
                notes.append("No bar chart of \(name): \(r.rows.count) rows are too many bars (the tables have them).")
            }
        }
        if r.layers.count < 2, r.rows.contains(where: { $0.layer != nil }) {
            notes.append("No layer sweep (Figure 1): the experiment has one layer.")
        }
        for g in r.deltaGroups {
            var panels: [Charts.HeatPanel] = []
            for (row, seed, path) in g.panels {
                let spec = r.rows[row].example
                do {
                    let a = try DeltaArtefact(data: try Data(contentsOf: URL(fileURLWithPath: path)))
                    let m = a.metadata
                    let method = r.rows[row].method
                    let penalties = method.contains("λ=") ? ""
                        : " · λ \(Render.num(spec.lambda)) γ \(Render.num(spec.gamma))"
                    panels.append(Charts.HeatPanel(
                        title: "\(method)\(penalties) · seed \(seed)",
                        heads: m.heads, headDim: m.headDim, values: a.delta))
                } catch {
                    notes.append("Δ of \(r.rows[row].label), \(r.tasks[g.task]), seed \(seed) not drawn: "
                                 + "cannot read \(path) (\(error)).")
                }
            }
            guard !panels.isEmpty else { continue }
            let title = "|Δ| at layer \(g.layer), \(r.tasks[g.task])"
            out.append(ReportFigure(name: "fig2-delta-\(fileName(r.tasks[g.task]))-layer\(g.layer)", title: title,
                                    svg: Charts.heatmap(title: title, panels: panels)))
        }
        return out
    }

    /// "Partial: 12 of 30 jobs done, 2 running, 16 queued. The numbers will change." or "Complete: …".
    public static func status(_ r: ExperimentReport, now: Double) -> String {
        let c = r.counts
        var s = r.partial ? "**Partial** (the experiment is still running): " : "Complete: "
        s += "\(c.done) of \(c.total) jobs done"
        if c.running > 0 { s += ", \(c.running) running" }
        if c.queued > 0 { s += ", \(c.queued) queued" }
        if c.failed > 0 { s += ", \(c.failed) failed" }
        if c.cancelled > 0 { s += ", \(c.cancelled) cancelled" }
        s += "."
        if let w = r.wallSeconds(now: now) {
            s += (r.partial ? " Running for " : " Wall time ") + Render.duration(w)
                + " (first job start → \(r.partial ? "now" : "last result")), "
                + Render.duration(r.jobSeconds) + " of job time summed."
        }
        return s
    }

    /// Parameters every job shares ("model smollm2-135m-instruct, train 10, test 50"), so the table
    /// need not repeat them.
    static func shared(_ r: ExperimentReport) -> String {
        let specs = r.rows.map(\.example)
        return Render.parameterColumns.compactMap { name, f in
            let vs = Set(specs.map(f).filter { $0 != "-" && !$0.isEmpty })
            guard vs.count == 1, name != "layer" else { return nil }
            return "\(name) \(vs.first!)"
        }.joined(separator: ", ")
    }

    /// What was written.
    public struct Written: Sendable {
        public var files: [String]
        public var figures: Int
        /// Why no PNGs were made, when none were ("" when they were).
        public var pngNote: String
        public var notes: [String]
    }

    /// The path of `rsvg-convert` on $PATH, or nil.
    public static func pngConverter() -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/rsvg-convert" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Renders and writes the report into `dir` (created if missing). `command` is the command line
    /// the footers quote; `started` when the command began (the footers give the time since).
    /// `png`: also convert each SVG with rsvg-convert when it is on the PATH.
    public static func write(_ r: ExperimentReport, to dir: URL, command: String, started: Date,
                             png: Bool = true) throws -> Written {
        let now = Date()
        var notes: [String] = []
        let figures = figures(r, notes: &notes)
        let table = table(r)
        let converter = png ? pngConverter() : nil
        let pngNote = !png ? "PNG not made (--no-png)."
            : converter == nil ? "PNG not made: rsvg-convert is not on the PATH (Debian: apt-get install librsvg2-bin)."
            : ""
        let status = status(r, now: now.timeIntervalSince1970)
        let sharedLine = shared(r).isEmpty ? "" : "Parameters all jobs share (where their method has them): "
            + shared(r) + "."
        let failures = r.failures.prefix(20).map { "`\($0.job)` \($0.label): \($0.error)" }
            + (r.failures.count > 20 ? ["… and \(r.failures.count - 20) more"] : [])

        // report.md
        var md = "# Experiment \(r.experiment)\n\n\(status)\n\n"
        if !sharedLine.isEmpty { md += sharedLine + "\n\n" }
        md += "## \(table.title)\n\n" + table.markdown + "\n## Figures\n\n"
        for f in figures {
            md += "### \(f.title)\n\n![\(f.title)](\(f.name).svg)\n\n"
                + (converter != nil ? "[PNG](\(f.name).png)\n\n" : "")
        }
        if figures.isEmpty { md += "No figures yet.\n\n" }
        for n in notes + (pngNote.isEmpty ? [] : [pngNote]) { md += "- \(n)\n" }
        if !failures.isEmpty { md += "\n## Failed jobs\n\n" + failures.map { "- \($0)\n" }.joined() }

        // index.html
        let e = SVG.escape
        var html = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>Experiment \(e(r.experiment))</title>
            <style>
            body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1500px; }
            table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
            th, td { border: 1px solid #ccc; padding: 4px 8px; }
            th { background: #f3f3f3; } th.group { text-align: center; }
            td.num { text-align: right; font-variant-numeric: tabular-nums; }
            .partial { background: #fff4d6; border: 1px solid #e0b400; padding: 6px 10px; }
            .note, footer { color: #555; font-size: 13px; }
            figure { margin: 16px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
            </style></head>
            <body>
            <h1>Experiment \(e(r.experiment))</h1>

            """
        let statusHTML = e(status).replacingOccurrences(of: "**Partial**", with: "<b>Partial</b>")
        html += "<p id=\"status\"\(r.partial ? " class=\"partial\"" : "")>\(statusHTML)</p>\n"
        if !sharedLine.isEmpty { html += "<p>\(e(sharedLine))</p>\n" }
        html += "<h2>\(e(table.title))</h2>\n" + table.html + "<h2>Figures</h2>\n"
        for (i, f) in figures.enumerated() {
            html += "<figure id=\"figure-\(i + 1)\"><img src=\"\(f.name).svg\" width=\"\(SVG.n(f.svg.width))\" "
                + "height=\"\(SVG.n(f.svg.height))\" alt=\"\(e(f.title))\">"
                + "<figcaption>Figure \(i + 1): \(e(f.title)) (<a href=\"\(f.name).svg\">SVG</a>"
                + (converter != nil ? ", <a href=\"\(f.name).png\">PNG</a>" : "") + ")</figcaption></figure>\n"
        }
        if figures.isEmpty { html += "<p>No figures yet.</p>\n" }
        let allNotes = notes + (pngNote.isEmpty ? [] : [pngNote])
        if !allNotes.isEmpty {
            html += "<ul class=\"note\">" + allNotes.map { "<li>\(e($0))</li>" }.joined() + "</ul>\n"
        }
        if !failures.isEmpty {
            html += "<h2>Failed jobs</h2>\n<ul>" + failures.map { "<li>\(e($0))</li>" }.joined() + "</ul>\n"
        }

        // footers: the command, when, how long, from where
        let stamp = ISO8601DateFormatter().string(from: now)
        let footer = "Made by `\(command)` at \(stamp), rendered in "
            + String(format: "%.2f", now.timeIntervalSince(started)) + " s"
            + (converter != nil ? " (PNG conversion after that)" : "") + " from the \(r.source)."
        md += "\n---\n\n_\(footer)_\n"
        html += "<footer><hr><p>\(e(footer).replacingOccurrences(of: "`", with: ""))</p></footer>\n</body></html>\n"

        let fm = FileManager.default
        try fm.createDirectory(at: dir, withIntermediateDirectories: true)
        var files: [String] = []
        func put(_ name: String, _ text: String) throws {
            try Data(text.utf8).write(to: dir.appendingPathComponent(name), options: .atomic)
            files.append(name)
        }
        try put("report.md", md)
        try put("index.html", html)
        for f in figures {
            var doc = f.svg.document
            let desc = "<desc>\(e(f.title)). \(e(status.replacingOccurrences(of: "**", with: ""))) "
                + "\(e(footer.replacingOccurrences(of: "`", with: "")))</desc>\n"
            doc = String(doc.dropLast("</svg>\n".count)) + desc + "</svg>\n"
            try put(f.name + ".svg", doc)
        }
        var pngFailures: [String] = []
        if let converter {
            for f in figures {
                let p = Process()
                p.executableURL = URL(fileURLWithPath: converter)
                p.arguments = ["-f", "png", "-o", dir.appendingPathComponent(f.name + ".png").path,
                               dir.appendingPathComponent(f.name + ".svg").path]
                p.standardError = FileHandle.nullDevice
                try p.run()
                p.waitUntilExit()
                if p.terminationStatus == 0 { files.append(f.name + ".png") } else { pngFailures.append(f.name) }
            }
        }
        let note = pngFailures.isEmpty ? pngNote
            : "rsvg-convert failed on \(pngFailures.joined(separator: ", "))"
        return Written(files: files, figures: figures.count, pngNote: note, notes: notes)
    }
}
