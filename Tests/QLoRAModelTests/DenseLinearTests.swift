import QLoRAKit
import Testing
import _TestSupport

/// DenseLinear against the definition, at sizes no BLAS kernel tiles evenly.
@Test func denseLinearMatchesNaiveProducts() {
    var random = SeededGenerator(seed: 3)
    let n = 7, inFeatures = 13, outFeatures = 5
    let w = random.gaussian(count: outFeatures * inFeatures), x = random.gaussian(count: n * inFeatures)
    let dy = random.gaussian(count: n * outFeatures)
    let linear = DenseLinear(weight: w, outFeatures: outFeatures, inFeatures: inFeatures)
    var y = [Float](repeating: 0, count: n * outFeatures)
    linear.forward(x, rows: n, into: &y)
    var expectedY = [Float](repeating: 0, count: n * outFeatures)
    var expectedDx = [Float](repeating: 0, count: n * inFeatures)
    for r in 0..<n {
        for o in 0..<outFeatures {
            for i in 0..<inFeatures {
                expectedY[r * outFeatures + o] += x[r * inFeatures + i] * w[o * inFeatures + i]
                expectedDx[r * inFeatures + i] += dy[r * outFeatures + o] * w[o * inFeatures + i]
            }
        }
    }
    #expect(maxAbsDifference(y, expectedY) <= 1e-5)
    var dx = [Float](repeating: 0, count: n * inFeatures)
    linear.backwardInput(dy, rows: n, into: &dx, accumulate: false)
    #expect(maxAbsDifference(dx, expectedDx) <= 1e-5)
    linear.backwardInput(dy, rows: n, into: &dx, accumulate: true)
    #expect(maxAbsDifference(dx, expectedDx.map { 2 * $0 }) <= 1e-5)
}
