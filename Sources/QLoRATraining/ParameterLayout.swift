// Where each trainable tensor lives in the one flat fp32 buffer.
//
// The trainable adapter parameters sit back to back in a single buffer, with
// gradients and AdamW moments in parallel buffers of the same length, so the
// optimizer, clipping and finiteness checks are flat loops. This table maps that
// buffer back to named, shaped tensors: for saving adapters, for naming the tensor
// that went non-finite, and for choosing which tensors get weight decay.

import Foundation

/// The named tensors of a flat parameter buffer, in buffer order.
public struct ParameterLayout: Hashable, Sendable, Codable {
    /// One tensor of the buffer.
    public struct Entry: Hashable, Sendable, Codable {
        /// The tensor's name (for adapters, the PEFT name it is saved under).
        public var name: String
        /// Row-major dimensions.
        public var shape: [Int]
        /// Its elements in the flat buffer.
        public var range: Range<Int>

        public var count: Int { range.count }
    }

    /// Tensors in buffer order; each starts where the previous one ends.
    public let entries: [Entry]

    /// Lays `tensors` out back to back, in the order given.
    /// - Throws: `ParameterLayoutError` on an empty or repeated name or an invalid shape.
    public init(_ tensors: [(name: String, shape: [Int])]) throws {
        var seen = Set<String>()
        var offset = 0
        var entries: [Entry] = []
        for (name, shape) in tensors {
            guard !name.isEmpty else { throw ParameterLayoutError.emptyName }
            guard seen.insert(name).inserted else { throw ParameterLayoutError.duplicateName(name) }
            var count = 1
            for d in shape {
                let (p, overflow) = count.multipliedReportingOverflow(by: d)
                guard d >= 0, !overflow, offset <= Int.max - p else { throw ParameterLayoutError.invalidShape(name, shape) }
                count = p
            }
            entries.append(Entry(name: name, shape: shape, range: offset..<(offset + count)))
            offset += count
        }
        self.entries = entries
    }

    /// Elements in the whole buffer.
    public var count: Int { entries.last?.range.upperBound ?? 0 }

    public func entry(named name: String) -> Entry? { entries.first { $0.name == name } }

    /// The tensor holding flat element `index`, found by binary search.
    public func entry(containing index: Int) -> Entry? {
        var lo = 0, hi = entries.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if entries[mid].range.upperBound <= index { lo = mid + 1 } else { hi = mid }
        }
        return lo < entries.count && entries[lo].range.contains(index) ? entries[lo] : nil
    }

    /// The flat ranges of the tensors whose names satisfy `predicate`, adjacent ranges merged.
    public func ranges(where predicate: (String) -> Bool) -> [Range<Int>] {
        var out: [Range<Int>] = []
        for e in entries where predicate(e.name) && !e.range.isEmpty {
            if let last = out.last, last.upperBound == e.range.lowerBound {
                out[out.count - 1] = last.lowerBound..<e.range.upperBound
            } else {
                out.append(e.range)
            }
        }
        return out
    }
}

/// A parameter table that cannot describe a buffer.
public enum ParameterLayoutError: Error, LocalizedError, Equatable {
    case emptyName
    case duplicateName(String)
    /// A negative dimension, or a size that overflows.
    case invalidShape(String, [Int])

    public var errorDescription: String? {
        switch self {
        case .emptyName: "parameter layout: a tensor has an empty name"
        case let .duplicateName(name): "parameter layout: tensor \"\(name)\" appears twice"
        case let .invalidShape(name, shape): "parameter layout: tensor \"\(name)\" has invalid shape \(shape)"
        }
    }
}
