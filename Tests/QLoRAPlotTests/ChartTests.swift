// SVG charts: the output is well-formed XML with the expected series, legend and
// ticks; axes pick nice values; bad input is refused.

import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import QLoRAPlot
import Testing
import _TestSupport

/// Elements of an SVG document in document order, each with its parent's index.
final class SVGElements: NSObject, XMLParserDelegate {
    struct Element {
        var name: String
        var attributes: [String: String]
        var parent: Int?
        var text = ""
    }

    private(set) var elements: [Element] = []
    private var open: [Int] = []

    /// Parses `svg`; nil when it is not well-formed XML.
    static func parse(_ svg: String) -> [Element]? {
        let parser = XMLParser(data: Data(svg.utf8))
        let delegate = SVGElements()
        parser.delegate = delegate
        return parser.parse() ? delegate.elements : nil
    }

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                attributes: [String: String] = [:]) {
        elements.append(Element(name: name, attributes: attributes, parent: open.last))
        open.append(elements.count - 1)
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        if let i = open.last { elements[i].text += string }
    }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        open.removeLast()
    }
}

@Suite struct ChartTests {
    private func texts(_ elements: [SVGElements.Element]) -> [String] {
        elements.filter { $0.name == "text" }.map(\.text)
    }

    @Test func lossCurvesAreValidSVGWithBothSeries() throws {
        let train = (1...50).map { (step: $0 * 10, loss: 3.0 * exp(-Double($0) / 20) + 1) }
        let valid = stride(from: 100, through: 500, by: 100).map { (step: $0, loss: 3.0 * exp(-Double($0) / 200) + 1.1) }
        var chart = Chart.lossCurves(title: "stories260K <QLoRA & NF4>", train: train, valid: valid)
        chart.xAxis.label = "optimizer step"
        let svg = try chart.svg()
        let elements = try #require(SVGElements.parse(svg))
        #expect(elements.first?.name == "svg")
        #expect(elements.first?.attributes["xmlns"] == "http://www.w3.org/2000/svg")
        let series = elements.filter { $0.attributes["class"] == "series" }
        #expect(series.map { $0.attributes["data-name"] } == ["train", "valid"])
        let polylines = elements.filter { $0.name == "polyline" }
        #expect(polylines.count == 2)
        #expect(polylines[0].attributes["points"]!.split(separator: " ").count == 50)
        #expect(elements.filter { $0.name == "circle" }.count == 5 + 1)  // valid's markers and its legend sample
        let text = texts(elements)
        #expect(text.contains("stories260K <QLoRA & NF4>") && text.contains("optimizer step") && text.contains("loss"))
        #expect(text.contains("train") && text.contains("valid"))
        // Steps 10...500 give ticks 0, 100, ..., 500.
        #expect(["0", "100", "200", "300", "400", "500"].allSatisfy(text.contains))
    }

    @Test func scatterWithLogAxesAndPointLabels() throws {
        let points = [("nf4/64", 3.6e9, 5.91), ("int8/64", 7.1e9, 5.80), ("fp4/64", 3.6e9, 6.05), ("fp32", 27e9, 5.78)]
        let chart = Chart(title: "Memory vs perplexity", xAxis: ChartAxis(label: "bytes", scale: .log10),
                          yAxis: ChartAxis(label: "perplexity"),
                          series: [ChartSeries(name: "formats", points: points.map { ChartPoint(x: $0.1, y: $0.2, label: $0.0) },
                                               style: .markers, marker: .diamond)])
        let elements = try #require(SVGElements.parse(try chart.svg()))
        #expect(elements.filter { $0.attributes["class"] == "point-label" }.map(\.text) == points.map(\.0))
        #expect(elements.filter { $0.name == "polyline" }.isEmpty)
        #expect(elements.filter { $0.name == "polygon" }.count == 4 + 1)
        // 3.6e9 ... 2.7e10 spans the decades 1e9 ... 1e11, ticked at 1, 2, 5 × 10ᵏ.
        let text = texts(elements)
        #expect(["1e9", "2e9", "5e9", "1e10", "2e10", "5e10", "1e11"].allSatisfy(text.contains), "\(text)")
    }

    @Test func lineBreaksAtNonFinitePoints() throws {
        let chart = Chart(series: [ChartSeries(name: "loss", x: [1, 2, 3, 4, 5, 6], y: [3, 2.5, .nan, 2, 1.8, 1.7])])
        let elements = try #require(SVGElements.parse(try chart.svg()))
        #expect(elements.filter { $0.name == "polyline" }.map { $0.attributes["points"]!.split(separator: " ").count } == [2, 3])
    }

    @Test func niceTicks() throws {
        func yTicks(_ ys: [Double], scale: ChartAxis.Scale = .linear, range: ClosedRange<Double>? = nil) throws -> [String] {
            let chart = Chart(yAxis: ChartAxis(scale: scale, range: range), series: [ChartSeries(name: "s", x: ys.indices.map(Double.init), y: ys)],
                              legend: .none)
            let elements = try #require(SVGElements.parse(try chart.svg()))
            let axis = elements.firstIndex { $0.attributes["class"] == "y-axis" }
            return elements.filter { $0.name == "text" && $0.parent == axis }.map(\.text)
        }
        #expect(try yTicks([1.23, 2.87]) == ["1.0", "1.5", "2.0", "2.5", "3.0"])
        #expect(try yTicks([0, 97]) == ["0", "20", "40", "60", "80", "100"])
        #expect(try yTicks([-0.003, 0.004]) == ["-0.004", "-0.002", "0", "0.002", "0.004"])
        // One value: widened by 10 % each way, then to the ticks around it.
        #expect(try yTicks([5, 5]) == ["4.4", "4.6", "4.8", "5.0", "5.2", "5.4", "5.6"])
        #expect(try yTicks([0.5, 3], scale: .log10) == ["0.1", "0.2", "0.5", "1", "2", "5", "10"])
        // Nine decades: every second one.
        #expect(try yTicks([2e-5, 3e3], scale: .log10) == ["1e-5", "0.001", "0.1", "10", "1000"])
        #expect(try yTicks([1, 2], range: 0...10) == ["0", "2", "4", "6", "8", "10"])
    }

    @Test func badInputIsRefused() {
        #expect(throws: ChartError.noData) { try Chart(series: [ChartSeries(name: "s", x: [.nan], y: [1])]).svg() }
        #expect(throws: ChartError.noData) { try Chart().svg() }
        #expect(throws: ChartError.nonPositiveOnLogAxis(series: "s", axis: "y", value: 0)) {
            try Chart(yAxis: ChartAxis(scale: .log10), series: [ChartSeries(name: "s", x: [1, 2], y: [1, 0])]).svg()
        }
        #expect(throws: ChartError.invalidRange(axis: "x", 3...3)) {
            try Chart(xAxis: ChartAxis(range: 3...3), series: [ChartSeries(name: "s", x: [1], y: [1])]).svg()
        }
        #expect(throws: ChartError.invalidSize(width: 10, height: 10)) {
            try Chart(series: [ChartSeries(name: "s", x: [1], y: [1])], width: 10, height: 10).svg()
        }
    }

    @Test func writesAFile() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let url = dir.appending("loss.svg")
        try Chart.lossCurves(train: [(1, 2.0), (2, 1.5)]).write(to: url)
        #expect(SVGElements.parse(try String(contentsOf: url, encoding: .utf8)) != nil)
    }
}
