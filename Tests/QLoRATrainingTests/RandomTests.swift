// Xoshiro256 against an independent implementation of the published algorithm
// (reference.json), and the properties shuffling and resuming rely on.

import Foundation
import QLoRATraining
import Testing

@Suite struct RandomTests {
    @Test func matchesTheReferenceAlgorithm() throws {
        for c in try TrainingReference.load().xoshiro {
            var rng: Xoshiro256
            if let seed = c.seed {
                rng = Xoshiro256(seed: seed, stream: c.stream ?? 0)
            } else {
                rng = try Xoshiro256(state: c.initial_state_hex.map { UInt64($0, radix: 16)! })
            }
            #expect(rng.state.map { String($0, radix: 16) } == c.initial_state_hex)
            #expect((0..<c.outputs_hex.count).map { _ in String(rng.next(), radix: 16) } == c.outputs_hex)
        }
    }

    @Test func savedStateContinuesTheSameSequence() throws {
        var a = Xoshiro256(seed: 99)
        for _ in 0..<10 { _ = a.next() }
        let saved = try JSONEncoder().encode(a)
        var b = try JSONDecoder().decode(Xoshiro256.self, from: saved)
        #expect((0..<5).map { _ in a.next() } == (0..<5).map { _ in b.next() })
        #expect(throws: RandomStateError.invalid([0, 0, 0, 0])) { try Xoshiro256(state: [0, 0, 0, 0]) }
        #expect(throws: RandomStateError.self) { try JSONDecoder().decode(Xoshiro256.self, from: Data(#"["xyz","1","2","3"]"#.utf8)) }
    }

    @Test func boundedValuesAndPermutations() {
        var rng = Xoshiro256(seed: 5)
        var counts = [Int](repeating: 0, count: 3)
        for _ in 0..<3000 { counts[rng.next(below: 3)] += 1 }
        // Each bucket expects 1000; 5 standard deviations is about ±130.
        #expect(counts.allSatisfy { abs($0 - 1000) < 130 }, "\(counts)")
        for _ in 0..<100 {
            let f = rng.nextFloat()
            #expect(f >= 0 && f < 1)
        }
        let p = rng.permutation(count: 50)
        #expect(p.sorted() == Array(0..<50))
        #expect(p != Array(0..<50))
        #expect(Xoshiro256(seed: 5, stream: 1) != Xoshiro256(seed: 5, stream: 2))
    }
}
