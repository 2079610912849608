import COpenBLAS
import Dispatch
import Foundation

/// Splits `count` independent work items into at most one contiguous chunk
/// per core and runs the chunks concurrently. `body(chunk, items)` gets the
/// chunk's index in 0..<chunkCount(for:grain:) so it can use per-chunk scratch.
enum Parallel {
    static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Chunks for `count` items when each chunk should get at least `grain`
    /// items (below that, dispatching costs more than it saves).
    static func chunkCount(for count: Int, grain: Int = 1) -> Int { max(1, min(cores, count / max(grain, 1))) }

    static func forEachChunk(_ count: Int, grain: Int = 1, _ body: (Int, Range<Int>) -> Void) {
        let chunks = chunkCount(for: count, grain: grain)
        if chunks == 1 {
            body(0, 0..<count)
            return
        }
        // The cores are ours for the duration: OpenBLAS calls made inside the
        // chunks must not start their own threads, which would oversubscribe
        // the cores (measured: attention 4–6× slower than single-threaded BLAS).
        let blasThreads = openblas_get_num_threads()
        if blasThreads > 1 { openblas_set_num_threads(1) }
        defer { if blasThreads > 1 { openblas_set_num_threads(blasThreads) } }
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
