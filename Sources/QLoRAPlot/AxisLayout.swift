// Axis ends, tick values and tick labels.
//
// Linear axes use Heckbert's "nice numbers" (Graphics Gems, 1990): the tick step is
// 1, 2 or 5 × 10ᵏ, chosen for about six ticks, and a fitted axis is widened to the
// ticks around the data. Log axes span whole decades; they tick at 1, 2, 5 × 10ᵏ
// when there are at most two decades, at every decade up to eight, and at every
// n-th decade beyond. Labels use as few decimals as the step needs, and exponent
// notation ("2e-5", "1e6") only for very small or very large values.

import Foundation

struct AxisLayout {
    let scale: ChartAxis.Scale
    let lower: Double
    let upper: Double
    let ticks: [Double]
    let labels: [String]

    /// The layout of `axis` ("x" or "y") for the finite `values` of its series.
    static func make(_ axis: ChartAxis, name: String, values: [Double]) throws -> AxisLayout {
        if let range = axis.range {
            guard range.lowerBound.isFinite, range.upperBound.isFinite, range.lowerBound < range.upperBound,
                  axis.scale == .linear || range.lowerBound > 0
            else { throw ChartError.invalidRange(axis: name, range) }
        }
        switch axis.scale {
        case .linear: return linear(values: values, fixed: axis.range)
        case .log10: return logarithmic(values: values, fixed: axis.range)
        }
    }

    /// Where `value` falls between the ends, 0...1 (outside for values off the axis).
    func fraction(_ value: Double) -> Double {
        switch scale {
        case .linear: (value - lower) / (upper - lower)
        case .log10: (log10(value) - log10(lower)) / (log10(upper) - log10(lower))
        }
    }

    // MARK: - Linear

    private static func linear(values: [Double], fixed: ClosedRange<Double>?) -> AxisLayout {
        var lo = fixed?.lowerBound ?? values.min() ?? 0
        var hi = fixed?.upperBound ?? values.max() ?? 1
        if lo == hi {
            let pad = lo == 0 ? 1 : abs(lo) * 0.1
            lo -= pad
            hi += pad
        }
        let step = niceNumber(niceNumber(hi - lo, round: false) / 5, round: true)
        if fixed == nil {
            lo = (lo / step).rounded(.down) * step
            hi = (hi / step).rounded(.up) * step
        }
        var ticks: [Double] = []
        var k = (lo / step).rounded(.up)
        while k * step <= hi + step * 1e-9 {
            ticks.append(k * step)
            k += 1
        }
        let decimals = max(0, -Int(log10(step).rounded(.down)))
        let magnitude = max(abs(lo), abs(hi))
        let labels = ticks.map { v in
            magnitude >= 1e6 || step < 1e-4 ? exponentLabel(v) : fixedLabel(v, decimals: decimals)
        }
        return AxisLayout(scale: .linear, lower: lo, upper: hi, ticks: ticks, labels: labels)
    }

    /// 1, 2, 5 or 10 × 10ᵏ near `x`: rounded to the nearest, or the next one up.
    static func niceNumber(_ x: Double, round: Bool) -> Double {
        let exponent = log10(x).rounded(.down)
        let power = pow(10, exponent)
        let f = x / power
        let nice: Double
        if round {
            nice = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10
        } else {
            nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10
        }
        return nice * power
    }

    // MARK: - Logarithmic

    private static func logarithmic(values: [Double], fixed: ClosedRange<Double>?) -> AxisLayout {
        var lo = fixed?.lowerBound ?? values.min() ?? 1
        var hi = fixed?.upperBound ?? values.max() ?? 10
        if fixed == nil {
            lo = pow(10, log10(lo).rounded(.down))
            hi = pow(10, log10(hi).rounded(.up))
            if lo == hi { hi = lo * 10 }
        }
        let firstDecade = Int(log10(lo).rounded(.down)), lastDecade = Int(log10(hi).rounded(.up))
        let decades = log10(hi) - log10(lo)
        let multiples: [Double] = decades <= 2 ? [1, 2, 5] : [1]
        let every = decades <= 8 ? 1 : Int((decades / 8).rounded(.up))
        var ticks: [Double] = []
        for d in firstDecade...lastDecade where (d - firstDecade) % every == 0 {
            for m in multiples {
                let v = m * pow(10, Double(d))
                if v >= lo * (1 - 1e-12) && v <= hi * (1 + 1e-12) { ticks.append(v) }
            }
        }
        let labels = ticks.map { v in
            let e = log10(v).rounded(.down)
            return e < -4 || e >= 6 ? exponentLabel(v) : fixedLabel(v, decimals: max(0, -Int(e)))
        }
        return AxisLayout(scale: .log10, lower: lo, upper: hi, ticks: ticks, labels: labels)
    }

    // MARK: - Labels

    private static func fixedLabel(_ v: Double, decimals: Int) -> String {
        let s = String(format: "%.\(decimals)f", v)
        return Double(s) == 0 ? "0" : s
    }

    /// "2e-05" → "2e-5", "1e+06" → "1e6".
    private static func exponentLabel(_ v: Double) -> String {
        guard v != 0 else { return "0" }
        let s = String(format: "%g", v)
        guard let e = s.firstIndex(of: "e") else { return s }
        let mantissa = s[..<e]
        var exponent = s[s.index(after: e)...]
        let negative = exponent.first == "-"
        exponent = exponent.drop { $0 == "+" || $0 == "-" }
        exponent = exponent.drop { $0 == "0" }
        return "\(mantissa)e\(negative ? "-" : "")\(exponent.isEmpty ? "0" : exponent)"
    }
}
