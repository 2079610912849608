import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// Reference data under Tests/Fixtures/model (see its README for sources).
enum Reference {
    static let tinyLlama = Fixtures.url("model/tiny-llama")

    /// expected.json: token ids, losses (fp32, LoRA, QLoRA) and the stories260K greedy ids.
    struct Expected: Decodable {
        struct Greedy: Decodable {
            var prompt_ids: [Int32]
            var continuation_ids: [Int32]
        }
        var seq1: [Int32]
        var seq2: [Int32]
        var loss: [String: Double]
        var lora_loss: [String: Double]
        var qlora_loss: [String: Double]
        var stories260K_greedy: Greedy
    }

    static let expected: Expected = try! JSONDecoder().decode(
        Expected.self, from: Data(contentsOf: Fixtures.url("model/expected.json")))

    static func tensors(_ file: String) throws -> SafetensorsFile {
        try SafetensorsFile(url: tinyLlama.appendingPathComponent(file))
    }

    static func sequence(_ name: String) -> [Int32] { name == "seq1" ? expected.seq1 : expected.seq2 }
}

/// Expects every adapter gradient within `relative` × its largest element of
/// peft's in `file`, whose keys carry the adapter name: ….lora_A.default.weight.
/// Returns the worst ratio of error to largest element.
@discardableResult
func expectGradients(_ parameters: TrainableParameters, match file: SafetensorsFile, relative: Float = 1e-4,
                     sourceLocation: SourceLocation = #_sourceLocation) throws -> Float {
    var worst: Float = 0
    for entry in parameters.entries {
        let key = "base_model.model." + entry.name.replacingOccurrences(of: ".weight", with: ".default.weight")
        let expected = try file.floats(key)
        let scale = expected.map(abs).max()!
        let error = maxAbsDifference(Array(parameters.gradients(of: entry)), expected)
        worst = max(worst, error / scale)
        #expect(error <= relative * scale, "\(entry.name): max |error| \(error), largest gradient \(scale)", sourceLocation: sourceLocation)
    }
    return worst
}

func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "compared arrays differ in length: \(a.count) vs \(b.count)")
    return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

/// [heads, T, hd] (transformers' head-major layout) from our [T, heads·hd].
func headMajor(_ x: [Float], length t: Int, heads: Int, headDimension hd: Int) -> [Float] {
    var out = [Float](repeating: 0, count: x.count)
    for h in 0..<heads {
        for i in 0..<t {
            for d in 0..<hd { out[(h * t + i) * hd + d] = x[i * heads * hd + h * hd + d] }
        }
    }
    return out
}
