import Foundation

/// Picks the next token from logits: the most likely one at temperature 0
/// (greedy), otherwise a draw from softmax(logits / temperature) restricted
/// to the top-p nucleus (the fewest most likely tokens whose probabilities
/// sum to at least p, Holtzman et al. 2019), as transformers' sampling does
/// in that order. Draws come from a seeded generator, so a seed fixes the
/// whole generation.
public struct Sampler: Sendable {
    public let temperature: Float
    public let topP: Float
    public let seed: UInt64
    private var generator: SplitMix64

    /// - Throws: `GenerationError.invalidSampling` for a negative or
    ///   non-finite temperature or top-p outside (0, 1].
    public init(temperature: Float = 0, topP: Float = 1, seed: UInt64 = 0) throws {
        guard temperature >= 0, temperature.isFinite else {
            throw GenerationError.invalidSampling("temperature \(temperature) must be a finite number ≥ 0 (0 = greedy)")
        }
        guard topP > 0, topP <= 1 else { throw GenerationError.invalidSampling("top-p \(topP) must be in (0, 1]") }
        self.temperature = temperature
        self.topP = topP
        self.seed = seed
        generator = SplitMix64(seed: seed)
    }

    public var isGreedy: Bool { temperature == 0 }

    /// The next token for logits [V].
    public mutating func sample(_ logits: [Float]) -> Int32 {
        logits.withUnsafeBufferPointer { sample($0) }
    }

    public mutating func sample(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
        var best = 0
        for i in logits.indices where logits[i] > logits[best] { best = i }
        guard !isGreedy else { return Int32(best) }
        // Weights relative to the largest logit, in double so the nucleus sum is exact enough.
        let top = logits[best], inverse = 1 / Double(temperature)
        let weights = logits.map { Foundation.exp(Double($0 - top) * inverse) }
        let total = weights.reduce(0, +)
        var candidates = Array(weights.indices)
        var mass = total
        if topP < 1 {
            // Most likely first; equal weights by id, so the order never depends on the sort.
            candidates.sort { weights[$0] > weights[$1] || (weights[$0] == weights[$1] && $0 < $1) }
            var kept = 0
            mass = 0
            while kept < candidates.count && mass < Double(topP) * total {
                mass += weights[candidates[kept]]
                kept += 1
            }
            candidates.removeSubrange(kept...)
        }
        var u = generator.nextUniform() * mass
        for i in candidates {
            u -= weights[i]
            if u < 0 { return Int32(i) }
        }
        return Int32(candidates.last!) // rounding left u ≥ 0 past the last candidate
    }
}
