// The training run's random numbers: xoshiro256** (Blackman & Vigna), seeded through
// SplitMix64.
//
// Its whole state is four 64-bit words, so a checkpoint stores it and a resumed run
// draws the same dropout masks as an uninterrupted one would. The algorithms are
// fixed here, not delegated to the standard library (whose shuffle and bounded
// integers may change between toolchains), so a seed means the same data order on
// every platform and Swift version.

import Foundation

/// A seedable, serializable random number generator (xoshiro256**).
public struct Xoshiro256: RandomNumberGenerator, Hashable, Sendable, Codable {
    private var s0, s1, s2, s3: UInt64

    /// The four state words; never all zero.
    public var state: [UInt64] { [s0, s1, s2, s3] }

    /// The generator for `seed`, optionally an independent `stream` of it (for
    /// example one per epoch for shuffling), expanded with SplitMix64 as the
    /// xoshiro authors recommend.
    public init(seed: UInt64, stream: UInt64 = 0) {
        var s = seed ^ (stream &* 0xD1B5_4A32_D192_ED03)
        var words: [UInt64] = []
        for _ in 0..<4 {
            s &+= 0x9E37_79B9_7F4A_7C15
            var z = s
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            words.append(z ^ (z >> 31))
        }
        (s0, s1, s2, s3) = (words[0], words[1], words[2], words[3])
    }

    /// A generator continuing from saved `state`.
    /// - Throws: `RandomStateError` unless it is four words, not all zero.
    public init(state: [UInt64]) throws {
        guard state.count == 4, state.contains(where: { $0 != 0 }) else { throw RandomStateError.invalid(state) }
        (s0, s1, s2, s3) = (state[0], state[1], state[2], state[3])
    }

    public mutating func next() -> UInt64 {
        let result = rotl(s1 &* 5, 7) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = rotl(s3, 45)
        return result
    }

    /// Uniform in [0, 1) with 24 random bits (every Float step there is equally likely).
    public mutating func nextFloat() -> Float {
        Float(next() >> 40) * 0x1p-24
    }

    /// Uniform in 0..<bound without modulo bias (Lemire's multiply-and-reject).
    public mutating func next(below bound: Int) -> Int {
        precondition(bound > 0, "[Xoshiro256] bound must be positive")
        let b = UInt64(bound)
        var product = next().multipliedFullWidth(by: b)
        if product.low < b {
            let threshold = (0 &- b) % b
            while product.low < threshold { product = next().multipliedFullWidth(by: b) }
        }
        return Int(product.high)
    }

    /// A uniformly random permutation of 0..<count (Fisher–Yates).
    public mutating func permutation(count: Int) -> [Int] {
        var order = Array(0..<count)
        var i = count - 1
        while i > 0 {
            order.swapAt(i, next(below: i + 1))
            i -= 1
        }
        return order
    }

    // Stored as hex strings: JSON numbers above 2^53 do not survive every reader.
    public init(from decoder: any Decoder) throws {
        let words = try decoder.singleValueContainer().decode([String].self)
        let parsed = words.compactMap { UInt64($0, radix: 16) }
        guard parsed.count == words.count else { throw RandomStateError.notHex(words) }
        try self.init(state: parsed)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(state.map { String($0, radix: 16) })
    }

    private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }
}

/// Saved random state that cannot be restored.
public enum RandomStateError: Error, LocalizedError, Equatable {
    case invalid([UInt64])
    case notHex([String])

    public var errorDescription: String? {
        switch self {
        case let .invalid(words): "random state must be 4 words, not all zero; found \(words.count) words \(words)"
        case let .notHex(words): "random state words must be hexadecimal; found \(words)"
        }
    }
}
