import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// LoRA dropout's semantics (PEFT's lora_dropout: nn.Dropout on the adapter
/// input), layers_to_transform, Gaussian initialization, and what the saved
/// adapter_config.json records.
@Suite struct LoRAOptionsTests {
    /// With A = B = I, s = 1 and W0 = 0 the adapter's output is drop(x) itself:
    /// each element is 0 or x/(1 − p), zeros at rate p.
    static func droppedInput(p: Float, generator: Xoshiro256?, x: [Float], width: Int) -> [Float] {
        let parameters = TrainableParameters(tensors: [("a", [width, width]), ("b", [width, width])])
        for entry in parameters.entries {
            let values = parameters.values(of: entry)
            for i in 0..<width { values[i * width + i] = 1 }
        }
        let adapter = LoRAAdapter(parameters: parameters, a: parameters.entries[0], b: parameters.entries[1], scaling: 1, dropout: p)
        adapter.dropoutGenerator = generator
        var y = [Float](repeating: 0, count: x.count)
        let zero = DenseLinear(weight: [Float](repeating: 0, count: width * width), outFeatures: width, inFeatures: width)
        adapter.forward(base: zero, x, rows: x.count / width, into: &y)
        return y
    }

    @Test func dropoutZeroesAtRatePAndScalesTheRest() {
        var random = SeededGenerator(seed: 1)
        let width = 16, p: Float = 0.3
        let x = (0..<(256 * width)).map { _ in Float.random(in: 0.5...2, using: &random) }
        let y = Self.droppedInput(p: p, generator: Xoshiro256(seed: 9), x: x, width: width)
        var zeros = 0
        for (xi, yi) in zip(x, y) {
            if yi == 0 { zeros += 1 } else { #expect(abs(yi - xi / (1 - p)) <= 1e-6 * yi) }
        }
        let n = Double(x.count), expected = Double(p) * n, sigma = (Double(p * (1 - p)) * n).squareRoot()
        #expect(abs(Double(zeros) - expected) <= 4 * sigma, "\(zeros) of \(x.count) dropped, expected about \(expected)")
        // The same generator draws the same mask; another seed another one; none is the identity.
        #expect(Self.droppedInput(p: p, generator: Xoshiro256(seed: 9), x: x, width: width) == y)
        #expect(Self.droppedInput(p: p, generator: Xoshiro256(seed: 10), x: x, width: width) != y)
        #expect(Self.droppedInput(p: p, generator: nil, x: x, width: width) == x)
    }

    /// Dropout on a whole model: gradient checkpointing reruns each layer's
    /// forward with the same masks, so the gradients are bitwise those of a
    /// plain backward; turning dropout off gives the undropped loss.
    @Test func dropoutMasksSurviveGradientCheckpointing() throws {
        let model = try LlamaModel(directory: Reference.tinyLlama)
        var generator = SeededGenerator(seed: 4)
        let parameters = try model.attachLoRA(LoRAConfiguration(rank: 4, alpha: 8, dropout: 0.25), using: &generator)
        for entry in parameters.entries where entry.name.hasSuffix("lora_B.weight") {
            _ = parameters.values(of: entry).update(fromContentsOf: generator.gaussian(count: entry.count, std: 0.05))
        }
        func gradients(checkpointing: Bool, seed: UInt64?) throws -> (Float, [Float]) {
            model.gradientCheckpointing = checkpointing
            model.setLoRADropout(seed: seed)
            parameters.zeroGradients()
            let loss = try #require(try model.forward(TokenBatch(sequences: [Reference.expected.seq2])))
            try model.backward()
            return (loss.mean, parameters.gradients.array())
        }
        let plain = try gradients(checkpointing: false, seed: 11)
        let recomputed = try gradients(checkpointing: true, seed: 11)
        #expect(plain.0 == recomputed.0 && plain.1 == recomputed.1)
        let off = try gradients(checkpointing: false, seed: nil)
        let otherMask = try gradients(checkpointing: false, seed: 12)
        #expect(off.0 != plain.0 && otherMask.0 != plain.0)
        model.detachAdapters()
        try model.attachLoRA(LoRAConfiguration(rank: 4, alpha: 8), using: &generator)
        _ = model.trainableParameters!.values.pointer.update(from: parameters.values.pointer, count: parameters.count)
        let undropped = try #require(try model.forward(TokenBatch(sequences: [Reference.expected.seq2])))
        #expect(undropped.mean == off.0)
    }

    @Test func layersToTransformLimitsTheAdapters() throws {
        let model = try LlamaModel(directory: Reference.tinyLlama)
        var generator = SeededGenerator(seed: 2)
        try model.attachLoRA(LoRAConfiguration(targetModules: ["q_proj", "down_proj"], layers: [1]), using: &generator)
        #expect(model.projections.filter { $0.adapter != nil }.map(\.name) == ["model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"])
        #expect(throws: ModelError.invalidAdapter(nil, reason: "layer 2 does not exist (the model has layers 0...1)")) {
            try model.attachLoRA(LoRAConfiguration(layers: [2]), using: &generator)
        }
    }

    @Test func gaussianInitializationHasStandardDeviationOneOverRank() throws {
        let model = try LlamaModel(directory: Reference.tinyLlama)
        var generator = Xoshiro256(seed: 5)
        let parameters = try model.attachLoRA(LoRAConfiguration(rank: 8, initialization: .gaussian), using: &generator)
        let a = parameters.entries.filter { $0.name.hasSuffix("lora_A.weight") }.flatMap { Array(parameters.values(of: $0)) }
        let mean = a.reduce(0) { $0 + Double($1) } / Double(a.count)
        let std = (a.reduce(0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(a.count)).squareRoot()
        #expect(abs(mean) < 0.005 && abs(std - 0.125) < 0.005, "mean \(mean), std \(std) over \(a.count) values")
        #expect(parameters.entries.filter { $0.name.hasSuffix("lora_B.weight") }.allSatisfy { parameters.values(of: $0).allSatisfy { $0 == 0 } })
    }

    @Test func savedConfigurationRecordsTheOptions() throws {
        let model = try LlamaModel(directory: Reference.tinyLlama)
        var generator = SeededGenerator(seed: 3)
        let configuration = LoRAConfiguration(rank: 4, alpha: 8, targetModules: ["up_proj", "v_proj"], useRSLoRA: true, dropout: 0.1,
                                              layers: [0], initialization: .gaussian)
        try model.attachLoRA(configuration, using: &generator)
        let folder = try TemporaryDirectory("lora-options")
        defer { folder.remove() }
        try model.saveLoRA(directory: folder.url)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appending("adapter_config.json"))) as! [String: Any]
        #expect(json["layers_to_transform"] as? [Int] == [0] && json["init_lora_weights"] as? String == "gaussian")
        #expect((json["lora_dropout"] as? NSNumber)?.floatValue == 0.1 && json["use_rslora"] as? Bool == true)
        let reloaded = try LlamaModel(directory: Reference.tinyLlama)
        var loaded = try reloaded.loadLoRA(directory: folder.url)
        loaded.initialization = .gaussian // how A started does not matter once it is trained
        #expect(loaded == configuration)
    }
}
