import Foundation
import QLoRACompute

/// Splits `count` independent work items into at most one contiguous chunk
/// per core and runs the chunks concurrently. `body(chunk, items)` gets the
/// chunk's index in 0..<chunkCount(for:grain:) so it can use per-chunk scratch.
enum Parallel {
    static let cores = ComputePool.shared.threadCount

    /// Chunks for `count` items when each chunk should get at least `grain`
    /// items (below that, dispatching costs more than it saves).
    static func chunkCount(for count: Int, grain: Int = 1) -> Int { max(1, min(cores, count / max(grain, 1))) }

    /// Runs on the shared compute pool's threads, the ones the products use
    /// (creating the pool also keeps OpenBLAS calls inside the chunks
    /// single-threaded). A second set of threads, such as libdispatch's,
    /// would share the cores with the pool's workers while these still spin
    /// after a product, and every elementwise pass would wait for its
    /// slowest chunk.
    static func forEachChunk(_ count: Int, grain: Int = 1, _ body: (Int, Range<Int>) -> Void) {
        let chunks = chunkCount(for: count, grain: grain)
        if chunks == 1 {
            body(0, 0..<count)
            return
        }
        // One chunk per slice: the pool cuts 0..<chunks into `chunks` slices of one.
        ComputePool.shared.run(extent: chunks, grain: 1, scratchFloats: 0) { slice, _ in
            for c in slice { body(c, (count * c / chunks)..<(count * (c + 1) / chunks)) }
        }
    }
}
