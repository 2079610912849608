import Foundation

/// A fixed-size, 64-byte aligned fp32 buffer: the storage of activations,
/// caches and gradients. A class rather than an array so layers can hand out
/// raw pointers into it without copy-on-write or exclusivity checks in the
/// hot loops. Its contents start zeroed.
public final class FloatBuffer {
    public let count: Int
    public let pointer: UnsafeMutablePointer<Float>

    public init(count: Int) {
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }

    deinit { UnsafeMutableRawPointer(pointer).deallocate() }

    public subscript(i: Int) -> Float {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }

    /// The first `n` values as an array (for tests and inspection).
    public func array(count n: Int? = nil) -> [Float] {
        Array(UnsafeBufferPointer(start: pointer, count: n ?? count))
    }

    public func zero(count n: Int? = nil) {
        pointer.update(repeating: 0, count: n ?? count)
    }
}
