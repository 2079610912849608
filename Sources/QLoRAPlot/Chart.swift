// Small charts as standalone SVG: training loss curves (train and valid series) and
// the memory-vs-accuracy scatter of the quantization sweep.
//
// A chart is data plus a few choices: series drawn as lines, markers or both; linear
// or log10 axes with "nice" tick values (1, 2, 5 × 10ᵏ); an optional title, axis
// labels and legend. The output is one self-contained SVG 1.1 document (no scripts,
// no external fonts or styles), which browsers, rsvg-convert and ImageMagick render
// alike. Nothing here depends on the rest of the engine.

import Foundation

/// A point of a series; `label` is written beside it (scatter charts).
public struct ChartPoint: Hashable, Sendable {
    public var x: Double
    public var y: Double
    public var label: String?

    public init(x: Double, y: Double, label: String? = nil) {
        self.x = x
        self.y = y
        self.label = label
    }
}

/// A marker shape.
public enum ChartMarker: String, CaseIterable, Hashable, Sendable {
    case circle, square, triangle, diamond, cross
}

/// One named set of points.
public struct ChartSeries: Hashable, Sendable {
    public enum Style: Hashable, Sendable {
        case line, markers, lineAndMarkers
    }

    public var name: String
    /// Drawn in this order; a NaN or ±Inf coordinate breaks the line there.
    public var points: [ChartPoint]
    public var style: Style
    public var marker: ChartMarker
    /// A CSS colour; nil takes the next colour of the palette.
    public var color: String?
    public var dashed: Bool

    public init(name: String, points: [ChartPoint], style: Style = .line, marker: ChartMarker = .circle,
                color: String? = nil, dashed: Bool = false) {
        self.name = name
        self.points = points
        self.style = style
        self.marker = marker
        self.color = color
        self.dashed = dashed
    }

    /// A series from parallel x and y values.
    public init(name: String, x: [Double], y: [Double], style: Style = .line, marker: ChartMarker = .circle,
                color: String? = nil, dashed: Bool = false) {
        precondition(x.count == y.count, "[ChartSeries] \(x.count) x values but \(y.count) y values")
        self.init(name: name, points: zip(x, y).map { ChartPoint(x: $0, y: $1) }, style: style, marker: marker,
                  color: color, dashed: dashed)
    }
}

/// One axis of a chart.
public struct ChartAxis: Hashable, Sendable {
    public enum Scale: Hashable, Sendable {
        case linear, log10
    }

    public var label: String?
    public var scale: Scale
    /// Fixed ends; nil fits the data and widens to tick values.
    public var range: ClosedRange<Double>?

    public init(label: String? = nil, scale: Scale = .linear, range: ClosedRange<Double>? = nil) {
        self.label = label
        self.scale = scale
        self.range = range
    }
}

/// A chart: series on two axes, with a title and a legend.
public struct Chart: Hashable, Sendable {
    public enum LegendPosition: Hashable, Sendable {
        case none, topRight, topLeft, bottomRight, bottomLeft
    }

    /// matplotlib's default colour cycle ("tab10"), widely recognised and readable.
    public static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    public var title: String?
    public var xAxis: ChartAxis
    public var yAxis: ChartAxis
    public var series: [ChartSeries]
    public var legend: LegendPosition
    /// Size in CSS pixels.
    public var width: Double
    public var height: Double

    public init(title: String? = nil, xAxis: ChartAxis = .init(), yAxis: ChartAxis = .init(), series: [ChartSeries] = [],
                legend: LegendPosition = .topRight, width: Double = 720, height: Double = 440) {
        self.title = title
        self.xAxis = xAxis
        self.yAxis = yAxis
        self.series = series
        self.legend = legend
        self.width = width
        self.height = height
    }

    /// A loss-curve chart: training loss as a line, validation loss as a line with
    /// markers (it is measured less often), against the optimizer step.
    public static func lossCurves(title: String? = "Training loss", train: [(step: Int, loss: Double)],
                                  valid: [(step: Int, loss: Double)] = [], logScale: Bool = false) -> Chart {
        var series = [ChartSeries(name: "train", x: train.map { Double($0.step) }, y: train.map(\.loss))]
        if !valid.isEmpty {
            series.append(ChartSeries(name: "valid", x: valid.map { Double($0.step) }, y: valid.map(\.loss), style: .lineAndMarkers))
        }
        return Chart(title: title, xAxis: ChartAxis(label: "step"),
                     yAxis: ChartAxis(label: "loss", scale: logScale ? .log10 : .linear), series: series)
    }

    /// The chart as an SVG document.
    /// - Throws: `ChartError` when there is nothing to draw, a value cannot go on a log
    ///   axis, or a fixed range is empty.
    public func svg() throws -> String {
        try SVGRenderer(chart: self).render()
    }

    /// Writes `svg()` to `url`, replacing any file there atomically.
    public func write(to url: URL) throws {
        let text = try svg()
        do {
            try Data(text.utf8).write(to: url, options: .atomic)
        } catch {
            throw ChartError.cannotWrite(url, (error as NSError).localizedDescription)
        }
    }
}

/// A chart that cannot be drawn.
public enum ChartError: Error, LocalizedError, Equatable {
    /// No series has a finite point.
    case noData
    /// A value ≤ 0 on a log axis; `axis` is "x" or "y".
    case nonPositiveOnLogAxis(series: String, axis: String, value: Double)
    /// A fixed axis range that is empty, not finite, or not positive on a log axis.
    case invalidRange(axis: String, ClosedRange<Double>)
    case invalidSize(width: Double, height: Double)
    case cannotWrite(URL, String)

    public var errorDescription: String? {
        switch self {
        case .noData: "chart: no series has a finite point to draw"
        case let .nonPositiveOnLogAxis(series, axis, value):
            "chart: series \"\(series)\" has \(axis) = \(value), which a log-scale \(axis) axis cannot show; use a linear axis or drop the point"
        case let .invalidRange(axis, range): "chart: the \(axis) axis range \(range) is empty, not finite, or not positive on a log scale"
        case let .invalidSize(width, height): "chart: size \(width) × \(height) is too small (at least 200 × 150)"
        case let .cannotWrite(url, reason): "\(url.path): cannot write the chart (\(reason))"
        }
    }
}
