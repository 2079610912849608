import Foundation
import QLoRAKit
import Testing

/// The rotary frequency rescalings LlamaConfiguration accepts.
@Suite struct RoPEScalingTests {
    let plain = RotaryEmbedding(headDimension: 128, theta: 500_000)

    @Test func linearDividesEveryFrequency() {
        let linear = RotaryEmbedding(headDimension: 128, theta: 500_000, scaling: RoPEScaling(type: "linear", factor: 4))
        #expect(linear.inverseFrequencies == plain.inverseFrequencies.map { $0 / 4 })
    }

    @Test func llama3RescalesOnlyLongWavelengths() {
        // Llama 3.1's published settings.
        let scaling = RoPEScaling(type: "llama3", factor: 8, lowFrequencyFactor: 1, highFrequencyFactor: 4,
                                  originalMaxPositionEmbeddings: 8192)
        let llama3 = RotaryEmbedding(headDimension: 128, theta: 500_000, scaling: scaling)
        var kept = 0, divided = 0, blended = 0
        for (f, g) in zip(plain.inverseFrequencies, llama3.inverseFrequencies) {
            let wavelength = 2 * Float.pi / f
            if wavelength < 8192 / 4 {
                #expect(g == f)
                kept += 1
            } else if wavelength > 8192 {
                #expect(g == f / 8)
                divided += 1
            } else {
                #expect(g < f && g > f / 8)
                blended += 1
            }
        }
        // All three bands occur at these settings.
        #expect(kept > 0 && divided > 0 && blended > 0)
    }
}
