// Drawing a Chart as SVG.
//
// Layout, in CSS pixels: the plot area is the chart minus margins for the title,
// tick labels and axis labels. Series are clipped to the plot area (plus a marker's
// width); point labels and the legend are not. Every series is one <g class="series" data-name="...">
// so tools (and the tests) can find it. Text is escaped for XML; coordinates are
// written with two decimals.

import Foundation

struct SVGRenderer {
    let chart: Chart

    private static let fontSize = 12.0
    private static let ink = "#333333", gridColor = "#e5e5e5", legendFrame = "#999999"
    /// Average glyph width of a sans-serif font at `fontSize`, for sizing the legend box.
    private static let glyphWidth = 7.0

    func render() throws -> String {
        guard chart.width >= 200, chart.height >= 150 else { throw ChartError.invalidSize(width: chart.width, height: chart.height) }
        var xs: [Double] = [], ys: [Double] = []
        for s in chart.series {
            for p in s.points where p.x.isFinite && p.y.isFinite {
                if chart.xAxis.scale == .log10, p.x <= 0 { throw ChartError.nonPositiveOnLogAxis(series: s.name, axis: "x", value: p.x) }
                if chart.yAxis.scale == .log10, p.y <= 0 { throw ChartError.nonPositiveOnLogAxis(series: s.name, axis: "y", value: p.y) }
                xs.append(p.x)
                ys.append(p.y)
            }
        }
        guard !xs.isEmpty else { throw ChartError.noData }
        let xLayout = try AxisLayout.make(chart.xAxis, name: "x", values: xs)
        let yLayout = try AxisLayout.make(chart.yAxis, name: "y", values: ys)

        let longestYLabel = Double(yLayout.labels.map(\.count).max() ?? 1)
        let left = 16 + longestYLabel * Self.glyphWidth + (chart.yAxis.label == nil ? 0 : 22)
        let right = 24.0
        let top = chart.title == nil ? 20.0 : 44.0
        let bottom = 36.0 + (chart.xAxis.label == nil ? 0 : 22)
        let plot = (x: left, y: top, width: chart.width - left - right, height: chart.height - top - bottom)
        func px(_ x: Double) -> Double { plot.x + xLayout.fraction(x) * plot.width }
        func py(_ y: Double) -> Double { plot.y + (1 - yLayout.fraction(y)) * plot.height }

        var out = #"<?xml version="1.0" encoding="UTF-8"?>"# + "\n"
        out += #"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="\#(n(chart.width))" height="\#(n(chart.height))" viewBox="0 0 \#(n(chart.width)) \#(n(chart.height))" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="\#(n(Self.fontSize))">"# + "\n"
        if let title = chart.title {
            out += "<title>\(escape(title))</title>\n"
        }
        out += #"<rect width="100%" height="100%" fill="white"/>"# + "\n"
        // The clip reaches a marker's size past the frame, so markers on the edge show whole.
        let m = 6.0
        out += #"<defs><clipPath id="plot-area"><rect x="\#(n(plot.x - m))" y="\#(n(plot.y - m))" width="\#(n(plot.width + 2 * m))" height="\#(n(plot.height + 2 * m))"/></clipPath></defs>"# + "\n"

        // Grid and ticks.
        out += #"<g class="grid" stroke="\#(Self.gridColor)" stroke-width="1">"# + "\n"
        for t in xLayout.ticks { out += #"<line x1="\#(n(px(t)))" y1="\#(n(plot.y))" x2="\#(n(px(t)))" y2="\#(n(plot.y + plot.height))"/>"# + "\n" }
        for t in yLayout.ticks { out += #"<line x1="\#(n(plot.x))" y1="\#(n(py(t)))" x2="\#(n(plot.x + plot.width))" y2="\#(n(py(t)))"/>"# + "\n" }
        out += "</g>\n"
        out += #"<rect class="frame" x="\#(n(plot.x))" y="\#(n(plot.y))" width="\#(n(plot.width))" height="\#(n(plot.height))" fill="none" stroke="\#(Self.ink)" stroke-width="1"/>"# + "\n"
        out += #"<g class="x-axis" text-anchor="middle" fill="\#(Self.ink)">"# + "\n"
        for (t, label) in zip(xLayout.ticks, xLayout.labels) {
            out += #"<line x1="\#(n(px(t)))" y1="\#(n(plot.y + plot.height))" x2="\#(n(px(t)))" y2="\#(n(plot.y + plot.height + 5))" stroke="\#(Self.ink)"/>"#
            out += #"<text x="\#(n(px(t)))" y="\#(n(plot.y + plot.height + 19))">\#(escape(label))</text>"# + "\n"
        }
        out += "</g>\n"
        out += #"<g class="y-axis" text-anchor="end" fill="\#(Self.ink)">"# + "\n"
        for (t, label) in zip(yLayout.ticks, yLayout.labels) {
            out += #"<line x1="\#(n(plot.x - 5))" y1="\#(n(py(t)))" x2="\#(n(plot.x))" y2="\#(n(py(t)))" stroke="\#(Self.ink)"/>"#
            out += #"<text x="\#(n(plot.x - 8))" y="\#(n(py(t) + 4))">\#(escape(label))</text>"# + "\n"
        }
        out += "</g>\n"

        // Title and axis labels.
        if let title = chart.title {
            out += #"<text class="title" x="\#(n(chart.width / 2))" y="28" text-anchor="middle" font-size="16" font-weight="bold">\#(escape(title))</text>"# + "\n"
        }
        if let label = chart.xAxis.label {
            out += #"<text class="x-label" x="\#(n(plot.x + plot.width / 2))" y="\#(n(chart.height - 10))" text-anchor="middle">\#(escape(label))</text>"# + "\n"
        }
        if let label = chart.yAxis.label {
            let x = 16.0, y = plot.y + plot.height / 2
            out += #"<text class="y-label" x="\#(n(x))" y="\#(n(y))" text-anchor="middle" transform="rotate(-90 \#(n(x)) \#(n(y)))">\#(escape(label))</text>"# + "\n"
        }

        // Series.
        let colors = chart.series.enumerated().map { $1.color ?? Chart.palette[$0 % Chart.palette.count] }
        for (s, color) in zip(chart.series, colors) {
            out += #"<g class="series" data-name="\#(escape(s.name))" fill="none" stroke="\#(escape(color))">"# + "\n"
            out += #"<g clip-path="url(#plot-area)">"# + "\n"
            if s.style != .markers {
                for run in Self.finiteRuns(s.points) where run.count > 1 {
                    let coordinates = run.map { "\(n(px($0.x))),\(n(py($0.y)))" }.joined(separator: " ")
                    out += #"<polyline points="\#(coordinates)" stroke-width="2" stroke-linejoin="round"\#(s.dashed ? #" stroke-dasharray="6 4""# : "")/>"# + "\n"
                }
            }
            if s.style != .line {
                for p in s.points where p.x.isFinite && p.y.isFinite {
                    out += marker(s.marker, x: px(p.x), y: py(p.y), color: color) + "\n"
                }
            }
            out += "</g>\n"
            for p in s.points where p.x.isFinite && p.y.isFinite {
                if let label = p.label {
                    out += #"<text class="point-label" x="\#(n(px(p.x) + 7))" y="\#(n(py(p.y) - 7))" fill="\#(Self.ink)" stroke="none" font-size="11">\#(escape(label))</text>"# + "\n"
                }
            }
            out += "</g>\n"
        }

        if chart.legend != .none, !chart.series.isEmpty {
            out += legend(colors: colors, plot: plot)
        }
        out += "</svg>\n"
        return out
    }

    // MARK: - Pieces

    private func legend(colors: [String], plot: (x: Double, y: Double, width: Double, height: Double)) -> String {
        let rowHeight = 18.0, sample = 28.0
        let width = 12 + sample + 8 + Double(chart.series.map(\.name.count).max() ?? 0) * Self.glyphWidth + 10
        let height = 8 + Double(chart.series.count) * rowHeight
        let x: Double, y: Double
        switch chart.legend {
        case .topLeft, .bottomLeft: x = plot.x + 10
        default: x = plot.x + plot.width - width - 10
        }
        switch chart.legend {
        case .bottomLeft, .bottomRight: y = plot.y + plot.height - height - 10
        default: y = plot.y + 10
        }
        var out = #"<g class="legend">"# + "\n"
        out += #"<rect x="\#(n(x))" y="\#(n(y))" width="\#(n(width))" height="\#(n(height))" fill="white" fill-opacity="0.9" stroke="\#(Self.legendFrame)"/>"# + "\n"
        for (i, (s, color)) in zip(chart.series, colors).enumerated() {
            let cy = y + 4 + rowHeight * (Double(i) + 0.5)
            let x0 = x + 12
            if s.style != .markers {
                out += #"<line x1="\#(n(x0))" y1="\#(n(cy))" x2="\#(n(x0 + sample))" y2="\#(n(cy))" stroke="\#(escape(color))" stroke-width="2"\#(s.dashed ? #" stroke-dasharray="6 4""# : "")/>"#
            }
            if s.style != .line { out += marker(s.marker, x: x0 + sample / 2, y: cy, color: color) }
            out += #"<text x="\#(n(x0 + sample + 8))" y="\#(n(cy + 4))" fill="\#(Self.ink)">\#(escape(s.name))</text>"# + "\n"
        }
        return out + "</g>\n"
    }

    private func marker(_ shape: ChartMarker, x: Double, y: Double, color: String) -> String {
        let r = 4.0, c = escape(color)
        switch shape {
        case .circle:
            return #"<circle cx="\#(n(x))" cy="\#(n(y))" r="\#(n(r))" fill="\#(c)" stroke="white" stroke-width="1"/>"#
        case .square:
            return #"<rect x="\#(n(x - r))" y="\#(n(y - r))" width="\#(n(2 * r))" height="\#(n(2 * r))" fill="\#(c)" stroke="white" stroke-width="1"/>"#
        case .triangle:
            return #"<polygon points="\#(n(x)),\#(n(y - r - 1)) \#(n(x + r + 1)),\#(n(y + r)) \#(n(x - r - 1)),\#(n(y + r))" fill="\#(c)" stroke="white" stroke-width="1"/>"#
        case .diamond:
            return #"<polygon points="\#(n(x)),\#(n(y - r - 1)) \#(n(x + r + 1)),\#(n(y)) \#(n(x)),\#(n(y + r + 1)) \#(n(x - r - 1)),\#(n(y))" fill="\#(c)" stroke="white" stroke-width="1"/>"#
        case .cross:
            return #"<path d="M\#(n(x - r)),\#(n(y - r))L\#(n(x + r)),\#(n(y + r))M\#(n(x - r)),\#(n(y + r))L\#(n(x + r)),\#(n(y - r))" stroke="\#(c)" stroke-width="2"/>"#
        }
    }

    /// Maximal runs of consecutive finite points.
    private static func finiteRuns(_ points: [ChartPoint]) -> [[ChartPoint]] {
        var runs: [[ChartPoint]] = [[]]
        for p in points {
            if p.x.isFinite && p.y.isFinite {
                runs[runs.count - 1].append(p)
            } else if !runs[runs.count - 1].isEmpty {
                runs.append([])
            }
        }
        return runs
    }

    /// A coordinate with at most two decimals ("12.5", "3", "-0.25"). Points far off a
    /// fixed axis range are pulled in to ±1e6 px: clipped either way, and printable.
    private func n(_ v: Double) -> String {
        let r = (min(max(v, -1e6), 1e6) * 100).rounded() / 100
        return r == r.rounded() ? String(Int(r)) : String(format: "%.2f", r).replacingOccurrences(of: #"0$"#, with: "", options: .regularExpression)
    }

    private func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            // XML 1.0 allows no other control characters.
            case _ where c.value < 0x20 && c != "\t" && c != "\n" && c != "\r": out += " "
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}
