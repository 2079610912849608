import Dispatch
import Foundation

/// Splits a kernel's work across threads and owns the scratch memory each
/// thread's share needs, so the C kernels never allocate.
///
/// A range `0..<extent` (rows or columns of a weight) is cut into one slice
/// per thread, each starting at a multiple of the kernel's grain. The cut
/// depends only on `threadCount`, `extent` and `grain`, so for a fixed thread
/// count every run performs the same floating-point operations in the same
/// order: results are bitwise reproducible.
///
/// One call runs at a time (a lock guards the scratch), and a call already
/// uses every thread, so concurrent callers simply queue. The body of a call
/// must not call back into the same pool.
public final class ComputePool: @unchecked Sendable {
    /// The pool used when none is given: one thread per online CPU.
    public static let shared = ComputePool()

    /// Threads one call is split across.
    public let threadCount: Int

    private let lock = NSLock()
    private var scratch: [UnsafeMutablePointer<Float>] = []
    private var scratchFloats = 0

    /// - Parameter threadCount: threads per call; defaults to the CPUs this
    ///   process may run on. Values below 1 are treated as 1.
    public init(threadCount: Int = ProcessInfo.processInfo.activeProcessorCount) {
        self.threadCount = max(1, threadCount)
    }

    deinit {
        for p in scratch { p.deallocate() }
    }

    /// Bytes of scratch currently held (grows to the largest request seen).
    public var scratchBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return scratch.count * scratchFloats * MemoryLayout<Float>.stride
    }

    /// Slice `t` of `threads` slices of `0..<extent`, boundaries on multiples of `grain`.
    public static func slice(_ t: Int, of threads: Int, extent: Int, grain: Int) -> Range<Int> {
        let units = (extent + grain - 1) / grain
        let lo = min(extent, units * t / threads * grain)
        let hi = min(extent, units * (t + 1) / threads * grain)
        return lo..<hi
    }

    /// Runs `body` once per slice of `0..<extent`, in parallel, each with its
    /// own 64-byte aligned scratch of at least `scratchFloats` floats.
    public func run(
        extent: Int, grain: Int, scratchFloats need: Int,
        _ body: (Range<Int>, UnsafeMutablePointer<Float>) -> Void
    ) {
        guard extent > 0 else { return }
        lock.lock()
        defer { lock.unlock() }
        let slices = min(threadCount, (extent + grain - 1) / grain)
        reserve(slices: slices, floats: need)
        if slices == 1 {
            body(0..<extent, scratch[0])
            return
        }
        let buffers = UncheckedSendable(scratch)
        withoutActuallyEscaping(body) { body in
            let work = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: slices) { t in
                work.value(Self.slice(t, of: slices, extent: extent, grain: grain), buffers.value[t])
            }
        }
    }

    /// Grows the per-thread scratch; called with the lock held, outside any kernel.
    private func reserve(slices: Int, floats: Int) {
        if floats > scratchFloats {
            for p in scratch { p.deallocate() }
            scratch.removeAll()
            scratchFloats = floats
        }
        while scratch.count < slices {
            let raw = UnsafeMutableRawPointer.allocate(
                byteCount: max(scratchFloats, 1) * MemoryLayout<Float>.stride, alignment: 64)
            scratch.append(raw.bindMemory(to: Float.self, capacity: max(scratchFloats, 1)))
        }
    }
}

/// Carries a non-Sendable value (a closure over raw pointers) into the
/// threads of one synchronous parallel call that outlives none of them.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
