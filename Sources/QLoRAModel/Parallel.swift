import Dispatch
import Foundation

/// Splits `count` independent work items into at most one contiguous chunk
/// per core and runs the chunks concurrently. `body(chunk, items)` gets the
/// chunk's index in 0..<chunkCount(for:) so it can use per-chunk scratch.
enum Parallel {
    static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)

    static func chunkCount(for count: Int) -> Int { max(1, min(cores, count)) }

    static func forEachChunk(_ count: Int, _ body: (Int, Range<Int>) -> Void) {
        let chunks = chunkCount(for: count)
        if chunks == 1 {
            body(0, 0..<count)
            return
        }
        // Chunks write disjoint parts of the buffers the body points into,
        // which Sendable checking cannot see; the box states that.
        withoutActuallyEscaping(body) { body in
            let work = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                work.value(c, (count * c / chunks)..<(count * (c + 1) / chunks))
            }
        }
    }
}

private struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
