import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// Backward ends at the lowest decoder layer that has an adapter, and that
/// layer stops as soon as its own adapters have their gradients (nothing
/// below trains, so its input gradient would be thrown away). Reference: the
/// same adapters with one more layer below them trainable, through adapters
/// whose B is zero — the forward pass is unchanged, and every layer above
/// runs its backward in full. The gradients of the shared adapters must be
/// the same bits.
@Suite struct FrozenLayersTests {
    static let targetSets: [[String]] = [
        ["q_proj"], ["k_proj", "v_proj"], ["o_proj"], ["gate_proj"], ["up_proj"], ["down_proj"],
        LoRAConfiguration.allLlamaProjections,
    ]

    @Test(arguments: targetSets, [false, true])
    func lowestTrainableLayerGivesTheSameGradients(targets: [String], checkpointing: Bool) throws {
        // tiny-llama has two layers: adapters on layer 1 only, then on both.
        let only = LoRAConfiguration(rank: 4, alpha: 8, targetModules: targets, layers: [1])
        let below = LoRAConfiguration(rank: 4, alpha: 8, targetModules: targets, layers: [0, 1])
        try expectSameGradients(only, below, checkpointing: checkpointing)
    }

    /// stories260K's five layers: adapters on layers 2 and 4 (layer 3, between them, has none but
    /// keeps its cache; layers 0 and 1 share one), against the same with layer 0 adapted too.
    @Test(arguments: [false, true])
    func layersBelowShareOneCache(checkpointing: Bool) throws {
        let only = LoRAConfiguration(rank: 4, alpha: 8, layers: [2, 4])
        let below = LoRAConfiguration(rank: 4, alpha: 8, layers: [0, 2, 4])
        try expectSameGradients(only, below, model: EmbeddedModel.directory, checkpointing: checkpointing)
    }

    @Test func onlyLMHeadSkipsEveryLayer() throws {
        let only = LoRAConfiguration(rank: 4, alpha: 8, targetModules: ["lm_head"])
        let below = LoRAConfiguration(rank: 4, alpha: 8, targetModules: ["lm_head", "q_proj"])
        try expectSameGradients(only, below, checkpointing: false)
    }

    /// stories260K: per layer q 64×64, k and v 32×64, o 64×64, gate/up/down 3 × 172×64 weights
    /// (45 312), lm_head (tied) 512×64. Every product runs forward; the input gradient from the
    /// lowest adapted layer up.
    @Test func trainingFloorCountsTheInputGradientFromTheLowestAdaptedLayer() throws {
        let layer = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 172 * 64, head = 512 * 64
        let model = try LlamaModel(directory: EmbeddedModel.directory)
        #expect(model.trainingFloorFlopsPerToken == Double(4 * (5 * layer + head)))
        var random = SeededGenerator(seed: 1)
        _ = try model.attachLoRA(LoRAConfiguration(rank: 4, alpha: 8, layers: [2, 4]), using: &random)
        #expect(model.trainingFloorFlopsPerToken == Double(2 * (5 * layer + head) + 2 * (3 * layer + head)))
    }

    private func expectSameGradients(_ only: LoRAConfiguration, _ below: LoRAConfiguration,
                                     model directory: URL = Reference.tinyLlama, checkpointing: Bool) throws {
        // Token ids below 512, within both models' vocabularies.
        let batch = TokenBatch(sequences: [Reference.expected.seq1, Array(Reference.expected.seq2.prefix(9))])
        var random = SeededGenerator(seed: 11)
        var runs: [(TrainableParameters, [Float])] = []
        var values: [String: [Float]] = [:]
        for configuration in [only, below] {
            let model = try LlamaModel(directory: directory)
            model.gradientCheckpointing = checkpointing
            let parameters = try model.attachLoRA(configuration, using: &random)
            if values.isEmpty {
                // Nonzero B, so gradients flow down through the adapters too.
                let v = random.gaussian(count: parameters.count, std: 0.05)
                parameters.values.pointer.update(from: v, count: v.count)
                for e in parameters.entries { values[e.name] = slice(parameters.values.array(), e) }
            } else {
                // The shared adapters take the same values; the extra ones keep B = 0.
                for e in parameters.entries { if let v = values[e.name] { (parameters.values.pointer + e.offset).update(from: v, count: v.count) } }
            }
            _ = try #require(try model.forward(batch))
            try model.backward()
            runs.append((parameters, parameters.gradients.array()))
        }
        let (reference, full) = (runs[1].0, runs[1].1)
        #expect(runs[0].0.entries.count < reference.entries.count)
        for e in runs[0].0.entries {
            let r = try #require(reference.entry(e.name))
            let got = slice(runs[0].1, e), want = slice(full, r)
            let nonzero = want.contains { $0 != 0 }, same = got == want
            #expect(nonzero, "\(e.name) has no gradient to compare")
            #expect(same, "\(e.name): max difference \(maxAbsDifference(got, want))")
        }
    }

    private func slice(_ all: [Float], _ e: TrainableParameters.Entry) -> [Float] {
        Array(all[e.offset ..< e.offset + e.count])
    }
}
