import Foundation

/// Paths of the reference data committed under Tests/Fixtures.
public enum Fixtures {
    /// Tests/Fixtures, found from this source file so tests run from any directory.
    public static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures", isDirectory: true)

    public static func url(_ relative: String) -> URL { root.appendingPathComponent(relative) }
}

/// A small deterministic generator (SplitMix64) so random tests are reproducible.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Approximately normal values (sum of uniforms), fine for weight-like data.
    public mutating func gaussian(count: Int, std: Float = 1) -> [Float] {
        (0..<count).map { _ in
            var s: Float = 0
            for _ in 0..<4 { s += Float.random(in: -1...1, using: &self) }
            return s * std * 0.866
        }
    }
}
