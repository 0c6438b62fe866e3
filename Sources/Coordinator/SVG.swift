import Foundation

/// A small SVG writer (no dependencies): shapes and text appended as elements, numbers with at
/// most two decimals, text escaped. Every mark a chart draws carries a class (`point`,
/// `errorbar`, `bar`, `cell`, …) so tests can count them.
public struct SVG: Sendable {
    public let width: Double
    public let height: Double
    private var parts: [String] = []

    public init(width: Double, height: Double) {
        self.width = width
        self.height = height
    }

    static func n(_ x: Double) -> String {
        let r = (x * 100).rounded() / 100
        return r == r.rounded() ? String(Int(r)) : String(format: "%.2f", r)
            .replacingOccurrences(of: "0+$", with: "", options: .regularExpression)
    }

    public static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    private mutating func element(_ name: String, _ attrs: [(String, String?)], title: String? = nil) {
        let a = attrs.compactMap { k, v in v.map { " \(k)=\"\(SVG.escape($0))\"" } }.joined()
        if let title {
            parts.append("<\(name)\(a)><title>\(SVG.escape(title))</title></\(name)>")
        } else {
            parts.append("<\(name)\(a)/>")
        }
    }

    public mutating func rect(
        _ x: Double, _ y: Double, _ w: Double, _ h: Double, fill: String, cls: String? = nil,
        stroke: String? = nil, opacity: Double? = nil, title: String? = nil
    ) {
        element("rect", [("x", SVG.n(x)), ("y", SVG.n(y)), ("width", SVG.n(max(0, w))), ("height", SVG.n(max(0, h))),
                         ("fill", fill), ("stroke", stroke), ("fill-opacity", opacity.map(SVG.n)), ("class", cls)],
                title: title)
    }

    public mutating func line(
        _ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, stroke: String = "#000", width: Double = 1,
        dash: String? = nil, cls: String? = nil
    ) {
        element("line", [("x1", SVG.n(x1)), ("y1", SVG.n(y1)), ("x2", SVG.n(x2)), ("y2", SVG.n(y2)),
                         ("stroke", stroke), ("stroke-width", SVG.n(width)), ("stroke-dasharray", dash),
                         ("class", cls)])
    }

    public mutating func path(_ d: String, stroke: String, width: Double = 1, fill: String = "none",
                              dash: String? = nil, cls: String? = nil) {
        element("path", [("d", d), ("stroke", stroke), ("stroke-width", SVG.n(width)), ("fill", fill),
                         ("stroke-dasharray", dash), ("class", cls)])
    }

    public mutating func circle(_ cx: Double, _ cy: Double, r: Double, fill: String, stroke: String,
                                cls: String? = nil, title: String? = nil) {
        element("circle", [("cx", SVG.n(cx)), ("cy", SVG.n(cy)), ("r", SVG.n(r)), ("fill", fill),
                           ("stroke", stroke), ("stroke-width", "1.5"), ("class", cls)], title: title)
    }

    /// A vertical error bar at x from y `a` to `b` with caps `cap` wide on each side.
    public mutating func errorBar(_ x: Double, _ a: Double, _ b: Double, cap: Double, stroke: String, width: Double) {
        let (l, r) = (SVG.n(x - cap), SVG.n(x + cap))
        path("M\(SVG.n(x)) \(SVG.n(a)) V\(SVG.n(b)) M\(l) \(SVG.n(a)) H\(r) M\(l) \(SVG.n(b)) H\(r)", stroke: stroke,
             width: width, cls: "errorbar")
    }

    public enum Anchor: String { case start, middle, end }

    public mutating func text(
        _ x: Double, _ y: Double, _ s: String, size: Double = 12, anchor: Anchor = .start, bold: Bool = false,
        fill: String = "#222", rotate: Double? = nil, cls: String? = nil
    ) {
        let a: [(String, String?)] = [
            ("x", SVG.n(x)), ("y", SVG.n(y)), ("font-size", SVG.n(size)), ("text-anchor", anchor.rawValue),
            ("font-weight", bold ? "bold" : nil), ("fill", fill),
            ("transform", rotate.map { "rotate(\(SVG.n($0)) \(SVG.n(x)) \(SVG.n(y)))" }), ("class", cls),
        ]
        let attrs = a.compactMap { k, v in v.map { " \(k)=\"\(SVG.escape($0))\"" } }.joined()
        parts.append("<text\(attrs)>\(SVG.escape(s))</text>")
    }

    /// The whole document: an XML declaration, then the `<svg>` root with a white background.
    public var document: String {
        let w = SVG.n(width), h = SVG.n(height)
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(w)" height="\(h)" viewBox="0 0 \(w) \(h)" \
            font-family="DejaVu Sans, Liberation Sans, Arial, sans-serif">
            <rect x="0" y="0" width="\(w)" height="\(h)" fill="#fff"/>

            """ + parts.joined(separator: "\n") + "\n</svg>\n"
    }
}

/// The report's charts, each a self-contained SVG document: a metric against the layer per
/// method (Figure 1), a metric per group as bars (any "metric per task or subgroup" table as a
/// chart), and |Δ| per head and dimension as heatmaps (Figure 2).
public enum Charts {
    /// Series colours (distinct in print and for the common colour-vision deficiencies).
    static let palette = ["#1b6ca8", "#e07b00", "#2a9d3f", "#c8283c", "#7d55b3", "#8c5a3c", "#d45aa8",
                          "#6b6b6b", "#a6a117", "#1aa4b8"]
    static func colour(_ i: Int) -> String { palette[i % palette.count] }

    /// A mean ± std (std 0 for one seed) and whether more seeds may come.
    public struct Value: Sendable {
        public var mean: Double
        public var std: Double
        public var n: Int
        public var partial: Bool
        public init(mean: Double, std: Double, n: Int, partial: Bool = false) {
            self.mean = mean; self.std = std; self.n = n; self.partial = partial
        }
    }

    /// Round axis ticks covering lo…hi (about `count` of them).
    static func ticks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
        let span = hi > lo ? hi - lo : max(abs(hi), 1)
        let raw = span / Double(count)
        let mag = pow(10, floor(log10(raw)))
        let step = [1, 2, 2.5, 5, 10].map { $0 * mag }.first { $0 >= raw * 0.999 } ?? 10 * mag
        let start = floor(lo / step + 1e-9) * step
        let end = ceil(hi / step - 1e-9) * step
        var out: [Double] = []
        var v = start
        while v <= end + step * 1e-6 && out.count < 50 {
            out.append(abs(v) < step * 1e-9 ? 0 : v)
            v += step
        }
        return out.count >= 2 ? out : [start, start + step]
    }

    static func label(_ v: Double) -> String {
        let s = String(format: "%.3f", v).replacingOccurrences(of: "\\.?0+$", with: "", options: .regularExpression)
        return s == "-0" ? "0" : s
    }

    /// The y range of values with their error bars, from 0 when every mean is ≥ 0 (error bars
    /// below are cut at the axis: an accuracy is never negative).
    static func yRange(_ vals: [Value]) -> [Double] {
        let lo = min(0, vals.map(\.mean).min() ?? 0)
        let hi = max(vals.map { $0.mean + $0.std }.max() ?? 1, lo + 1e-6)
        return ticks(lo, hi == lo ? lo + 1 : hi)
    }

    /// Draws a y axis with grid lines on [top, top + h]; returns the value → y mapping.
    static func yAxis(_ svg: inout SVG, ticks: [Double], left: Double, top: Double, width: Double, height: Double,
                      title: String?) -> (Double) -> Double {
        let lo = ticks.first!, hi = ticks.last!
        let y = { (v: Double) in top + height - (min(hi, max(lo, v)) - lo) / (hi - lo) * height }
        for t in ticks {
            svg.line(left, y(t), left + width, y(t), stroke: "#e3e3e3", cls: "grid")
            svg.text(left - 6, y(t) + 4, label(t), size: 11, anchor: .end, fill: "#555")
        }
        svg.line(left, top, left, top + height, stroke: "#888")
        svg.line(left, top + height, left + width, top + height, stroke: "#888")
        if let title { svg.text(left - 40, top + height / 2, title, size: 12, anchor: .middle, rotate: -90) }
        return y
    }

    /// A legend row of swatches; returns its height.
    static func legend(_ svg: inout SVG, _ items: [(label: String, colour: String, dashed: Bool)], x: Double,
                       y: Double, width: Double) -> Double {
        var cx = x, cy = y
        for it in items {
            let w = 28 + Double(it.label.count) * 6.8 + 16
            if cx + w > x + width && cx > x { cx = x; cy += 18 }
            svg.line(cx, cy - 4, cx + 22, cy - 4, stroke: it.colour, width: it.dashed ? 2 : 3,
                     dash: it.dashed ? "5 3" : nil, cls: "legend")
            svg.text(cx + 28, cy, it.label, size: 12)
            cx += w
        }
        return cy - y + 18
    }

    // MARK: Figure 1

    /// One panel of a sweep: a series per method, with a value per x where it has one; methods
    /// without the x axis (`flat`) are drawn as a dashed line across the panel with a ±std band.
    public struct SweepPanel: Sendable {
        public var title: String
        /// series index → x → value
        public var points: [Int: [Int: Value]]
        /// series index → its one value
        public var flat: [Int: Value]
        public init(title: String, points: [Int: [Int: Value]], flat: [Int: Value]) {
            self.title = title; self.points = points; self.flat = flat
        }
    }

    /// A metric against the layer: one panel per task (three to a row), a line and error bars
    /// (± std over seeds) per method; hollow points have seeds still to come.
    public static func sweep(title: String, metric: String, xLabel: String, xs: [Int], series: [String],
                             panels: [SweepPanel]) -> SVG {
        // panels widen with the number of layers (30 on SmolLM2: 520 px), the figure never narrower
        // than its title and caption
        let pw = max(330, 14 * Double(xs.count) + 100), ph = 230.0, cols = max(1, min(3, panels.count))
        let rowsN = (panels.count + cols - 1) / cols
        let legendItems = series.indices.map { i in
            (series[i], colour(i), panels.contains { $0.flat[i] != nil } && !panels.contains { $0.points[i] != nil })
        }
        let width = max(Double(cols) * pw + 20, 560)
        var probe = SVG(width: width, height: 10)
        let legendH = legend(&probe, legendItems, x: 20, y: 0, width: width - 40)
        var svg = SVG(width: width, height: 40 + legendH + Double(rowsN) * (ph + 20) + 24)
        svg.text(20, 22, title, size: 15, bold: true)
        _ = legend(&svg, legendItems, x: 20, y: 44, width: width - 40)
        let all = panels.flatMap { p in p.points.values.flatMap(\.values) + p.flat.values }
        let ticks = yRange(all)
        let xmin = Double(xs.first ?? 0), xmax = Double(xs.last ?? 1)
        for (k, p) in panels.enumerated() {
            let ox = 10 + Double(k % cols) * pw, oy = 40 + legendH + Double(k / cols) * (ph + 20)
            let left = ox + 58, top = oy + 26, w = pw - 78, h = ph - 70
            svg.text(left + w / 2, oy + 14, p.title, size: 13, anchor: .middle, bold: true)
            let y = yAxis(&svg, ticks: ticks, left: left, top: top, width: w, height: h,
                          title: metric)
            let pad = 14.0
            let x = { (v: Int) in
                xmax > xmin ? left + pad + (Double(v) - xmin) / (xmax - xmin) * (w - 2 * pad) : left + w / 2
            }
            // a label every `every`-th tick, at least ~24 px apart
            let every = max(1, Int((24 * Double(xs.count) / max(w - 2 * pad, 1)).rounded(.up)))
            for (j, v) in xs.enumerated() {
                svg.line(x(v), top + h, x(v), top + h + 4, stroke: "#888")
                if j % every == 0 { svg.text(x(v), top + h + 17, String(v), size: 11, anchor: .middle, fill: "#555") }
            }
            svg.text(left + w / 2, top + h + 34, xLabel, size: 12, anchor: .middle)
            for (i, v) in p.flat.sorted(by: { $0.key < $1.key }) {
                let c = colour(i)
                if v.std > 0 {
                    svg.rect(left, y(v.mean + v.std), w, y(v.mean - v.std) - y(v.mean + v.std), fill: c,
                             cls: "band", opacity: 0.12)
                }
                svg.line(left, y(v.mean), left + w, y(v.mean), stroke: c, width: 2, dash: "6 4", cls: "reference")
            }
            for (i, byX) in p.points.sorted(by: { $0.key < $1.key }) {
                let c = colour(i)
                let pts = byX.sorted { $0.key < $1.key }
                if pts.count > 1 {
                    let d = pts.enumerated().map { j, e in
                        (j == 0 ? "M" : "L") + "\(SVG.n(x(e.key))) \(SVG.n(y(e.value.mean)))"
                    }
                    svg.path(d.joined(separator: " "), stroke: c, width: 2, cls: "line")
                }
                for (xv, v) in pts {
                    let px = x(xv)
                    if v.std > 0 {
                        svg.errorBar(px, y(v.mean + v.std), y(v.mean - v.std), cap: 4, stroke: c, width: 1.3)
                    }
                    svg.circle(px, y(v.mean), r: 4, fill: v.partial ? "#fff" : c, stroke: c, cls: "point",
                               title: "\(series[i]), \(xLabel) \(xv): \(label(v.mean)) ± \(label(v.std)) (n = \(v.n))")
                }
            }
        }
        svg.text(20, svg.height - 8,
                 "mean ± std over seeds; dashed: methods without a layer; hollow: seeds still to come",
                 size: 11, fill: "#555")
        return svg
    }

    // MARK: bars

    /// A metric per group (task, subgroup, …): a bar per series in each group, ± std over seeds;
    /// faded bars have seeds still to come.
    /// Mixes a `#rrggbb` colour with white (0: the colour, 1: white).
    static func lighter(_ hex: String, _ f: Double) -> String {
        let v = Int(hex.dropFirst(), radix: 16) ?? 0
        let c = [(v >> 16) & 255, (v >> 8) & 255, v & 255].map { Int((Double($0) + (255 - Double($0)) * f).rounded()) }
        return String(format: "#%02x%02x%02x", c[0], c[1], c[2])
    }

    /// `colours`: one per series (default: the palette in order).
    public static func bars(title: String, metric: String, groups: [String], series: [String],
                            values: [[Value?]], colours: [String]? = nil) -> SVG {
        let colour = { (i: Int) in colours?[i] ?? Charts.colour(i) }
        let barW = 16.0, gap = 22.0
        let groupW = Double(series.count) * barW + gap
        let plotW = max(360, Double(groups.count) * groupW)
        let left = 70.0, top = 50.0, h = 220.0
        let width = left + plotW + 30
        var probe = SVG(width: width, height: 10)
        let items = series.indices.map { (series[$0], colour($0), false) }
        let legendH = legend(&probe, items, x: 20, y: 0, width: width - 40)
        var svg = SVG(width: width, height: top + h + 48 + legendH + 22)
        svg.text(20, 22, title, size: 15, bold: true)
        let ticks = yRange(values.flatMap { $0.compactMap { $0 } })
        let y = yAxis(&svg, ticks: ticks, left: left, top: top, width: plotW, height: h, title: metric)
        let zero = y(max(ticks.first!, min(0, ticks.last!)))
        for (g, name) in groups.enumerated() {
            let gx = left + gap / 2 + Double(g) * (plotW / Double(groups.count))
            let inner = (plotW / Double(groups.count) - Double(series.count) * barW) / 2 - gap / 2
            for s in series.indices {
                guard let v = values[g][s] else { continue }
                let bx = gx + inner + Double(s) * barW
                let c = colour(s)
                svg.rect(bx + 1, min(zero, y(v.mean)), barW - 2, abs(zero - y(v.mean)), fill: c, cls: "bar",
                         stroke: v.partial ? "#222" : nil, opacity: v.partial ? 0.35 : 1,
                         title: "\(name), \(series[s]): \(label(v.mean)) ± \(label(v.std)) (n = \(v.n))")
                if v.std > 0 {
                    svg.errorBar(bx + barW / 2, y(v.mean + v.std), y(v.mean - v.std), cap: 3, stroke: "#222", width: 1)
                }
            }
            svg.text(gx + (plotW / Double(groups.count) - gap) / 2, top + h + 18, name, size: 12, anchor: .middle)
        }
        _ = legend(&svg, items, x: 20, y: top + h + 44, width: width - 40)
        svg.text(20, svg.height - 8, "mean ± std over seeds; faded and outlined: seeds still to come", size: 11,
                 fill: "#555")
        return svg
    }

    // MARK: Figure 2

    /// One Δ as heads × dimensions.
    public struct HeatPanel: Sendable {
        public var title: String
        public var heads: Int
        public var headDim: Int
        /// heads · headDim values, head-major.
        public var values: [Float]
        public init(title: String, heads: Int, headDim: Int, values: [Float]) {
            self.title = title; self.heads = heads; self.headDim = headDim; self.values = values
        }
    }

    /// Sequential colour for t in (0, 1]: pale yellow → teal → deep purple.
    static func heat(_ t: Double) -> String {
        let stops: [(Double, Double, Double)] = [(253, 231, 37), (33, 145, 140), (68, 1, 84)]
        let u = min(1, max(0, t)) * Double(stops.count - 1)
        let i = min(Int(u), stops.count - 2), f = u - Double(i)
        let c = (0..<3).map { k -> Int in
            let a = [stops[i].0, stops[i].1, stops[i].2][k], b = [stops[i + 1].0, stops[i + 1].1, stops[i + 1].2][k]
            return Int((a + (b - a) * f).rounded())
        }
        return String(format: "#%02x%02x%02x", c[0], c[1], c[2])
    }

    /// |Δ| per head (rows) and dimension (columns), the panels side by side on one colour scale;
    /// exact zeros are light grey, and heads that are zero throughout are marked.
    public static func heatmap(title: String, panels: [HeatPanel]) -> SVG {
        let maxDim = panels.map(\.headDim).max() ?? 1
        let cw = max(3, min(10, 520 / Double(maxDim))), ch = 14.0
        let titleW = Double(panels.map(\.title.count).max() ?? 0) * 7.5
        let panelW = max(44 + Double(maxDim) * cw + 60, titleW + 50)
        let maxHeads = panels.map(\.heads).max() ?? 1
        // two panels to a row, so a figure stays readable at a page's width
        let cols = max(1, min(2, panels.count)), rows = (panels.count + cols - 1) / cols
        let panelH = 64 + Double(maxHeads) * ch + 28
        let width = 20 + Double(cols) * panelW
        let peak = Double(panels.flatMap { $0.values.map { abs($0) } }.max() ?? 0)
        let scaleNote = "|Δ| per head (rows) and dimension (columns); grey: exactly 0"
        var svg = SVG(width: max(width, 54 + 24 * 8 + 12 + Double(scaleNote.count) * 6.2 + 20),
                      height: 10 + Double(rows) * panelH + 50)
        svg.text(20, 22, title, size: 15, bold: true)
        for (p, panel) in panels.enumerated() {
            let ox = 20 + Double(p % cols) * panelW + 34
            let top = 10 + Double(p / cols) * panelH + 54
            let nz = panel.values.filter { $0 != 0 }.count
            var zeroHeads = 0
            svg.text(ox, top - 24, panel.title, size: 12, bold: true)
            svg.text(ox, top - 8, "\(nz) of \(panel.values.count) non-zero", size: 11, fill: "#555")
            for h in 0..<panel.heads {
                let row = panel.values[(h * panel.headDim)..<((h + 1) * panel.headDim)]
                let y = top + Double(h) * ch
                svg.text(ox - 6, y + ch - 3, "h\(h)", size: 10, anchor: .end, fill: "#555")
                for (d, v) in row.enumerated() {
                    let a = Double(abs(v))
                    svg.rect(ox + Double(d) * cw, y, cw, ch - 1, fill: a == 0 || peak == 0 ? "#ededed" : heat(a / peak),
                             cls: "cell")
                }
                if row.allSatisfy({ $0 == 0 }) {
                    zeroHeads += 1
                    svg.text(ox + Double(panel.headDim) * cw + 4, y + ch - 3, "all 0", size: 10, fill: "#c8283c",
                             cls: "zero-head")
                }
            }
            svg.text(ox, top + Double(panel.heads) * ch + 16,
                     "\(zeroHeads) of \(panel.heads) heads zero throughout", size: 11, fill: "#555")
        }
        // colour scale
        let sy = 10 + Double(rows) * panelH + 8, sx = 54.0, steps = 24
        for i in 0..<steps {
            svg.rect(sx + Double(i) * 8, sy, 8, 10, fill: heat(Double(i + 1) / Double(steps)), cls: "scale")
        }
        svg.rect(sx - 18, sy, 10, 10, fill: "#ededed", cls: "scale")
        svg.text(sx - 13, sy + 24, "0", size: 10, anchor: .middle, fill: "#555")
        svg.text(sx + 4, sy + 24, "small", size: 10, anchor: .start, fill: "#555")
        svg.text(sx + Double(steps) * 8, sy + 24, "|Δ| = " + String(format: "%.3g", peak), size: 10, anchor: .end,
                 fill: "#555")
        svg.text(sx + Double(steps) * 8 + 12, sy + 9, scaleNote, size: 11, fill: "#555")
        return svg
    }
}
