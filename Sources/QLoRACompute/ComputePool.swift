import COpenBLAS
import Foundation
import Synchronization

/// Splits a kernel's work across threads and owns the scratch memory each
/// thread's share needs, so the C kernels never allocate.
///
/// A range `0..<extent` (rows or columns of a weight) is cut into one slice
/// per thread, each starting at a multiple of the kernel's grain. The cut
/// depends only on `threadCount`, `extent` and `grain`, so for a fixed thread
/// count every run performs the same floating-point operations in the same
/// order: results are bitwise reproducible.
///
/// The worker threads are started once and wait between calls; a call
/// allocates nothing once the scratch has grown to its size (libdispatch's
/// concurrentPerform allocates on every call, hence threads of our own).
/// One call runs at a time (concurrent callers queue: a call already uses
/// every thread), and the body of a call must not call back into its pool.
public final class ComputePool: @unchecked Sendable {
    /// The pool used when none is given: as many threads as
    /// `setSharedThreadCount` asked for, else the environment variable
    /// QLORA_THREADS says, else one per CPU this process may run on. Created
    /// on first use.
    public static var shared: ComputePool { Shared.pool }

    /// Sets the thread count of `shared` (a CLI's --threads). Results depend
    /// on it in their last bits, so it is fixed once `shared` exists: throws
    /// `ThreadCountError` then, and for counts below 1.
    public static func setSharedThreadCount(_ count: Int) throws {
        try sharedSettings.withLock { settings in
            guard count >= 1 else { throw ThreadCountError.invalid(String(count), source: "the thread count") }
            guard !settings.created || Shared.pool.threadCount == count else {
                throw ThreadCountError.alreadyRunning(Shared.pool.threadCount)
            }
            settings.requested = count
        }
    }

    /// QLORA_THREADS's value, nil when unset; throws when it is not a positive integer.
    public static func environmentThreadCount(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Int? {
        guard let text = environment["QLORA_THREADS"] else { return nil }
        guard let count = Int(text.trimmingCharacters(in: .whitespaces)), count >= 1 else {
            throw ThreadCountError.invalid(text, source: "QLORA_THREADS")
        }
        return count
    }

    private static let sharedSettings = Mutex<(requested: Int?, created: Bool)>((nil, false))

    private enum Shared {
        static let pool: ComputePool = sharedSettings.withLock { settings in
            settings.created = true
            // A bad QLORA_THREADS falls back here; the CLI reports it before anything runs.
            return ComputePool(threadCount: settings.requested ?? (try? environmentThreadCount())
                               ?? ProcessInfo.processInfo.activeProcessorCount)
        }
    }

    /// Threads one call is split across (the caller's thread is one of them).
    public let threadCount: Int

    private let callLock = NSLock()
    private var scratch: [UnsafeMutablePointer<Float>] = []
    private var scratchFloats = 0
    private var workers: Workers?

    /// Also turns OpenBLAS's own threading off for the process: the pools
    /// own the cores, and OpenBLAS calls run single-threaded inside their
    /// slices (`sgemm`) or on the calling thread.
    ///
    /// - Parameter threadCount: threads per call; defaults to the CPUs this
    ///   process may run on. Values below 1 are treated as 1.
    public init(threadCount: Int = ProcessInfo.processInfo.activeProcessorCount) {
        self.threadCount = max(1, threadCount)
        openblas_set_num_threads(1)
    }

    deinit {
        workers?.stop()
        for p in scratch { p.deallocate() }
    }

    /// Bytes of scratch currently held (it grows to the largest request seen).
    public var scratchBytes: Int {
        callLock.lock()
        defer { callLock.unlock() }
        return scratch.count * scratchFloats * MemoryLayout<Float>.stride
    }

    /// Slice `t` of `threads` slices of `0..<extent`, boundaries on multiples of `grain`.
    public static func slice(_ t: Int, of threads: Int, extent: Int, grain: Int) -> Range<Int> {
        let units = (extent + grain - 1) / grain
        let lo = min(extent, units * t / threads * grain)
        let hi = min(extent, units * (t + 1) / threads * grain)
        return lo..<hi
    }

    /// One slice of work for the allocation-free `run`: `(context, lower, upper, scratch)`.
    public typealias Task = @convention(c) (UnsafeRawPointer, Int, Int, UnsafeMutablePointer<Float>) -> Void

    /// Runs `task` once per slice `lower..<upper` of `0..<extent`, in parallel,
    /// each with its own 64-byte aligned scratch of at least `scratchFloats`
    /// floats. `context` carries the arguments (a struct on the caller's
    /// stack); a C-convention task captures nothing, so the call allocates
    /// nothing, which the per-token kernels rely on.
    ///
    /// With `chunksPerThread` > 1 the range is cut into that many slices per
    /// thread, and threads take the next one as they finish: on a shared
    /// machine a thread that loses its core holds up the call by one small
    /// slice instead of a whole share. The cut still depends only on the
    /// thread count, so a task whose slices do not affect one another's
    /// results stays bitwise reproducible; a task that pays a fixed cost per
    /// slice (the tiled GEMM reads all of X once per slice) should keep 1.
    public func run(extent: Int, grain: Int, scratchFloats need: Int, chunksPerThread: Int = 1,
                    context: UnsafeRawPointer, task: Task) {
        guard extent > 0 else { return }
        callLock.lock()
        defer { callLock.unlock() }
        let units = (extent + grain - 1) / grain
        let slices = min(threadCount, units)
        reserve(slices: slices, floats: need)
        if slices == 1 {
            task(context, 0, extent, scratch[0])
            return
        }
        if workers == nil { workers = Workers(count: threadCount - 1) }
        workers!.run(Job(task: task, context: context, scratch: scratch, slices: slices,
                         chunks: min(units, slices * max(1, chunksPerThread)), extent: extent, grain: grain))
    }

    /// Closure form of `run` for code off the hot path (it may allocate a
    /// closure context per call).
    public func run(
        extent: Int, grain: Int, scratchFloats need: Int,
        _ body: (Range<Int>, UnsafeMutablePointer<Float>) -> Void
    ) {
        typealias Body = (Range<Int>, UnsafeMutablePointer<Float>) -> Void
        withoutActuallyEscaping(body) { body in
            withUnsafePointer(to: body) { p in
                run(extent: extent, grain: grain, scratchFloats: need, context: UnsafeRawPointer(p)) {
                    context, lower, upper, scratch in
                    context.assumingMemoryBound(to: Body.self).pointee(lower..<upper, scratch)
                }
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

/// One parallel call over `chunks` slices of the range: thread t (0 is the
/// caller) runs chunk t, then, while chunks remain, the next one not taken.
private struct Job {
    let task: ComputePool.Task
    let context: UnsafeRawPointer
    let scratch: [UnsafeMutablePointer<Float>]
    let slices: Int
    let chunks: Int
    let extent: Int
    let grain: Int

    func callAsFunction(_ t: Int, next: borrowing Atomic<Int>) {
        guard t < slices else { return }
        var c = t
        while c < chunks {
            let r = ComputePool.slice(c, of: chunks, extent: extent, grain: grain)
            task(context, r.lowerBound, r.upperBound, scratch[t])
            guard chunks > slices else { return }
            c = next.add(1, ordering: .relaxed).oldValue
        }
    }
}

/// Worker threads woken once per job. Decoding a token is a few hundred
/// short parallel calls in a row, so a futex sleep and wake-up per call
/// (tens of microseconds) would cost as much as the products themselves:
/// workers and the caller first spin for a while on atomics, and only sleep
/// on the condition when no job comes (or no worker finishes) within
/// `spinTime`. Workers hold this object, not the pool, so a pool can be
/// released (which stops them).
private final class Workers: @unchecked Sendable {
    /// Polling before sleeping. Longer than the gap between two calls of a
    /// decode step and than the time one thread waits for the other to
    /// finish its half of a product streamed from memory (measured with
    /// 50–100 µs of polling: idle cores and futex wake-ups took a third of
    /// the decode time of a 1.1B model); far shorter than a scheduler tick.
    private static let spinTime = Duration.microseconds(500)

    private let signal = NSCondition()
    private let generation = Atomic<Int>(0)
    private let pending = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    /// The next chunk of the current job not yet taken.
    private let next = Atomic<Int>(0)
    // Written by `run` before it publishes the job through `generation`
    // (release), read by workers after they observe it (acquire).
    private var job: Job?

    private let count: Int
    private var started = 0

    init(count: Int) {
        self.count = count
        for index in 1...count {
            let thread = Thread { [self] in loop(index) }
            thread.name = "qlora-compute-\(index)"
            thread.start()
        }
        // A worker that started after a job was posted would skip its slice.
        signal.lock()
        while started < count { signal.wait() }
        signal.unlock()
    }

    func run(_ job: Job) {
        self.job = job
        pending.store(count, ordering: .relaxed)
        next.store(job.slices, ordering: .relaxed)
        generation.add(1, ordering: .releasing)
        wakeSleepers()
        job(0, next: next)
        wait { self.pending.load(ordering: .acquiring) == 0 }
        self.job = nil
    }

    func stop() {
        stopping.store(true, ordering: .releasing)
        wakeSleepers()
    }

    /// Broadcasts under the lock: a thread that checked its condition before
    /// the atomic changed is then inside `wait` and gets the wake-up.
    private func wakeSleepers() {
        signal.lock()
        signal.broadcast()
        signal.unlock()
    }

    /// Returns once `done` holds: polls it for up to `spinTime`, then sleeps
    /// on the condition (every change it waits for is followed by
    /// `wakeSleepers`). Every 256 polls it reads the clock and yields the
    /// core: when other processes keep every core busy, the thread it waits
    /// for may be queued behind this one on the same core, and a poller that
    /// never yields spends whole scheduler slices there (decode ran at a
    /// tenth of its speed beside one busy process); with idle cores the
    /// yield returns at once.
    private func wait(until done: () -> Bool) {
        let clock = ContinuousClock(), deadline = clock.now + Self.spinTime
        var polls = 0
        while !done() {
            polls &+= 1
            if polls & 255 == 0 {
                if clock.now >= deadline { return sleep(until: done) }
                sched_yield()
            }
        }
    }

    private func sleep(until done: () -> Bool) {
        signal.lock()
        while !done() { signal.wait() }
        signal.unlock()
    }

    private func loop(_ index: Int) {
        signal.lock()
        started += 1
        signal.broadcast()
        signal.unlock()
        var seen = 0
        while true {
            wait { self.generation.load(ordering: .acquiring) != seen || self.stopping.load(ordering: .acquiring) }
            if stopping.load(ordering: .acquiring) { break }
            seen = generation.load(ordering: .acquiring)
            job!(index, next: next)
            if pending.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { wakeSleepers() }
        }
    }
}

/// A thread count that cannot be used.
public enum ThreadCountError: Error, LocalizedError, Equatable {
    case invalid(String, source: String)
    /// The shared pool already runs with this many threads.
    case alreadyRunning(Int)

    public var errorDescription: String? {
        switch self {
        case .invalid(let text, let source): "\(source) must be a positive integer, not \"\(text)\""
        case .alreadyRunning(let count): "the compute threads already run (\(count) of them); set the count before the first product"
        }
    }
}
