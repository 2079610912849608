/// Cuts streamed text at the first stop string (a chat template's end-of-turn marker
/// written as text, "<|im_end|>" for ChatML), holding back the end of a chunk that may be
/// the start of one, so that no part of a stop string is ever shown.
///
/// ```swift
/// var stop = StopText(["<|im_end|>"])
/// print(stop.append("Hello<|im_"), stop.append("end|>\n"), stop.isStopped)  // "Hello", "", true
/// ```
public struct StopText: Sendable {
    public let stops: [String]
    /// Text that may be the start of a stop string.
    private var pending = ""
    /// A stop string has appeared; everything after it is dropped.
    public private(set) var isStopped = false

    /// - Parameter stops: the stop strings; empty ones are ignored.
    public init(_ stops: [String]) {
        self.stops = stops.filter { !$0.isEmpty }
    }

    /// Adds a chunk of the stream and returns the text that can be shown now: everything
    /// before a stop string, less any ending that could still grow into one.
    public mutating func append(_ text: String) -> String {
        guard !isStopped else { return "" }
        pending += text
        if let cut = stops.compactMap({ pending.range(of: $0)?.lowerBound }).min() {
            isStopped = true
            defer { pending = "" }
            return String(pending[..<cut])
        }
        // The longest ending of the text that a stop string starts with.
        var held = 0
        for stop in stops {
            for k in stride(from: min(stop.count - 1, pending.count), to: held, by: -1) where pending.hasSuffix(stop.prefix(k)) {
                held = k
                break
            }
        }
        let cut = pending.index(pending.endIndex, offsetBy: -held)
        defer { pending = String(pending[cut...]) }
        return String(pending[..<cut])
    }

    /// Ends the stream: the text held back (none after a stop).
    public mutating func finish() -> String {
        defer { pending = "" }
        return isStopped ? "" : pending
    }
}
