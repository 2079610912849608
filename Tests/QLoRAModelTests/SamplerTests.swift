import Foundation
import QLoRAKit
import Testing

@Suite struct SamplerTests {
    /// Logits with probabilities 1/7, 2/7, 4/7 at temperature 1.
    let logits: [Float] = [0, Float(log(2.0)), Float(log(4.0))]

    func frequencies(_ sampler: inout Sampler, draws: Int = 70_000) -> [Double] {
        var counts = [0, 0, 0]
        for _ in 0..<draws { counts[Int(sampler.sample(logits))] += 1 }
        return counts.map { Double($0) / Double(draws) }
    }

    @Test func rejectsSettingsOutOfRange() {
        #expect(throws: GenerationError.self) { try Sampler(temperature: -1) }
        #expect(throws: GenerationError.self) { try Sampler(temperature: .nan) }
        #expect(throws: GenerationError.self) { try Sampler(topP: 0) }
        #expect(throws: GenerationError.self) { try Sampler(topP: 1.5) }
    }

    @Test func temperatureZeroTakesTheFirstLargest() throws {
        var sampler = try Sampler(temperature: 0, seed: 3)
        #expect(sampler.sample([1, 5, 2, 5]) == 1)
    }

    /// Seeded draws, so the frequencies are fixed numbers, not a flaky statistic.
    @Test func drawsFollowTheSoftmaxAtTheTemperature() throws {
        var plain = try Sampler(temperature: 1, seed: 11)
        for (f, p) in zip(frequencies(&plain), [1.0 / 7, 2.0 / 7, 4.0 / 7]) { #expect(abs(f - p) < 0.01) }
        // Temperature 2 flattens to weights 1 : √2 : 2.
        var hot = try Sampler(temperature: 2, seed: 12)
        let weights = [1, 2.0.squareRoot(), 2], total = weights.reduce(0, +)
        for (f, w) in zip(frequencies(&hot), weights) { #expect(abs(f - w / total) < 0.01) }
    }

    @Test func topPKeepsTheSmallestNucleus() throws {
        // 4/7 ≥ 0.5: only the top token is left.
        var narrow = try Sampler(temperature: 1, topP: 0.5, seed: 13)
        #expect(frequencies(&narrow, draws: 1000) == [0, 0, 1])
        // 4/7 < 0.6 ≤ 6/7: the top two, renormalized to 1/3 and 2/3.
        var wider = try Sampler(temperature: 1, topP: 0.6, seed: 14)
        let f = frequencies(&wider)
        #expect(f[0] == 0 && abs(f[1] - 1.0 / 3) < 0.01 && abs(f[2] - 2.0 / 3) < 0.01)
    }

    @Test func aSeedFixesTheDraws() throws {
        var a = try Sampler(temperature: 1, seed: 5), b = try Sampler(temperature: 1, seed: 5), c = try Sampler(temperature: 1, seed: 6)
        let first = (0..<64).map { _ in a.sample(logits) }
        #expect((0..<64).map { _ in b.sample(logits) } == first)
        #expect((0..<64).map { _ in c.sample(logits) } != first)
    }
}
