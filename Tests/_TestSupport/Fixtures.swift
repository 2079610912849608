import Foundation
import QLoRAModel

/// Paths of the reference data committed under Tests/Fixtures.
public enum Fixtures {
    /// Tests/Fixtures, found from this source file so tests run from any directory.
    public static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures", isDirectory: true)

    public static func url(_ relative: String) -> URL { root.appendingPathComponent(relative) }
}

/// The deterministic generator of the tests: the library's SplitMix64, so random tests are reproducible.
public typealias SeededGenerator = SplitMix64

extension SplitMix64 {
    /// Approximately normal values (sum of uniforms), fine for weight-like data.
    public mutating func gaussian(count: Int, std: Float = 1) -> [Float] {
        (0..<count).map { _ in
            var s: Float = 0
            for _ in 0..<4 { s += Float.random(in: -1...1, using: &self) }
            return s * std * 0.866
        }
    }
}
