import QLoRAKit
import Testing
import _TestSupport

/// A random tiny model using what no reference checkpoint here has (q/k/v/o
/// and MLP biases, a sliding window, tied embeddings with an adapter on the
/// tied lm_head), checked end to end by finite differences.
@Suite struct SyntheticModelTests {
    static let configuration = LlamaConfiguration(
        hiddenSize: 16, intermediateSize: 24, hiddenLayers: 2, attentionHeads: 4, kvHeads: 2, vocabularySize: 23,
        rmsNormEps: 1e-5, tieWordEmbeddings: true, attentionBias: true, mlpBias: true, slidingWindow: 3)

    static func model(seed: UInt64) throws -> LlamaModel {
        var random = SeededGenerator(seed: seed)
        return try LlamaModel(configuration: configuration, tensor: { name, shape in
            let count = shape.reduce(1, *)
            return name.hasSuffix("norm.weight") ? random.gaussian(count: count, std: 0.1).map { 1 + $0 }
                : random.gaussian(count: count, std: name.hasSuffix(".bias") ? 0.1 : 0.5)
        }) { _, out, inFeatures in
            DenseLinear(weight: random.gaussian(count: out * inFeatures, std: 0.5), outFeatures: out, inFeatures: inFeatures)
        }
    }

    @Test func adapterGradientsMatchFiniteDifferences() throws {
        let model = try Self.model(seed: 1)
        var random = SeededGenerator(seed: 2)
        let parameters = try model.attachLoRA(
            LoRAConfiguration(rank: 2, alpha: 4, targetModules: LoRAConfiguration.allLlamaProjections + ["lm_head"]),
            using: &random)
        #expect(model.projections.allSatisfy { $0.adapter != nil })
        // Non-zero B so that A gets gradients too.
        for entry in parameters.entries where entry.name.hasSuffix("lora_B.weight") {
            _ = parameters.values(of: entry).update(fromContentsOf: random.gaussian(count: entry.count, std: 0.3))
        }
        let batch = TokenBatch(sequences: [[1, 5, 9, 2, 7, 7, 3], [4, 22, 0, 11]], padding: .left, padToken: 0)
        let loss = try #require(try model.forward(batch))
        #expect(loss.count == 6 + 3)
        try model.backward()
        let analytic = parameters.gradients.array()
        func meanLoss() throws -> Double { try model.forward(batch)!.sum / Double(loss.count) }
        // Central differences on the parameters with the largest gradients in each tensor.
        let h: Float = 1e-2
        var checked = 0
        for entry in parameters.entries {
            let gradient = parameters.gradients(of: entry)
            let i = entry.offset + gradient.indices.max { abs(gradient[$0]) < abs(gradient[$1]) }!
            let value = parameters.values[i]
            parameters.values[i] = value + h
            let plus = try meanLoss()
            parameters.values[i] = value - h
            let minus = try meanLoss()
            parameters.values[i] = value
            let numeric = Float((plus - minus) / Double(2 * h))
            #expect(abs(numeric - analytic[i]) <= 2e-3 * max(1, abs(numeric)), "\(entry.name): \(analytic[i]) vs \(numeric)")
            if abs(numeric) > 1e-3 { checked += 1 }
        }
        #expect(checked >= parameters.entries.count / 2)
    }

    @Test func checkpointingChangesNoGradient() throws {
        var gradients: [[Float]] = []
        for checkpointing in [false, true] {
            let model = try Self.model(seed: 3)
            model.gradientCheckpointing = checkpointing
            var random = SeededGenerator(seed: 4)
            let parameters = try model.attachLoRA(LoRAConfiguration(rank: 2, alpha: 2), using: &random)
            for entry in parameters.entries where entry.name.hasSuffix("lora_B.weight") {
                _ = parameters.values(of: entry).update(fromContentsOf: random.gaussian(count: entry.count, std: 0.3))
            }
            try model.forward(TokenBatch(sequences: [[1, 2, 3, 4, 5, 6], [7, 8, 9]]))
            try model.backward()
            gradients.append(parameters.gradients.array())
        }
        #expect(maxAbsDifference(gradients[0], gradients[1]) <= 1e-6)
    }

    @Test func biasIsAddedToEveryRow() {
        let base = DenseLinear(weight: [1, 0, 0, 1, 1, 1], outFeatures: 3, inFeatures: 2)
        let projection = Projection(name: "p", base: base, bias: [10, 20, 30])
        var y = [Float](repeating: 0, count: 6)
        projection.forward([1, 2, 3, 4], rows: 2, into: &y)
        #expect(y == [11, 22, 33, 13, 24, 37])
    }
}

/// A Hugging Face folder with a NaN or ±Inf weight: refused while loading, naming the file,
/// the tensor and the element, instead of a model that silently computes NaN.
@Suite struct NonFiniteWeightTests {
    @Test(arguments: [("model.layers.0.self_attn.q_proj.weight", 2 * 128 + 10, Float.nan),
                      ("model.norm.weight", 3, -Float.infinity)])
    func refusedByName(tensor: String, index: Int, value: Float) throws {
        let directory = try TemporaryDirectory("nonfinite")
        defer { directory.remove() }
        _ = try writeSyntheticModel(to: directory.url) { name, values in
            if name == tensor { values[index] = value }
        }
        let error = #expect(throws: SafetensorsError.self) { try LlamaModel(directory: directory.url) }
        guard case let .nonFinite(url, name, at, found)? = error else {
            Issue.record("expected a non-finite error, got \(String(describing: error))")
            return
        }
        #expect(url.lastPathComponent == "model.safetensors" && name == tensor && at == index)
        #expect(found.isNaN == value.isNaN && (found.isNaN || found == value))
        #expect(error?.localizedDescription.contains("model.safetensors: tensor \"\(tensor)\"") == true)
    }
}
