import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// The peft LoRA adapter on the fp32 tiny-llama: logits, losses and the
/// gradients of A and B against peft's.
@Suite struct LoRATests {
    let model: LlamaModel

    init() throws {
        model = try LlamaModel(directory: Reference.tinyLlama)
    }

    @Test func loadsPEFTAdapter() throws {
        let configuration = try model.loadLoRA(directory: Reference.tinyLlama.appendingPathComponent("adapter"))
        #expect(configuration == LoRAConfiguration(rank: 8, alpha: 16, targetModules: LoRAConfiguration.allLlamaProjections.sorted()))
        #expect(configuration.scaling == 2)
        let parameters = try #require(model.trainableParameters)
        #expect(parameters.entries.count == 28)
        #expect(model.projections.filter { $0.adapter != nil }.count == 14)
    }

    @Test(arguments: ["seq1", "seq2"])
    func logitsAndLossMatchPEFT(sequence: String) throws {
        try model.loadLoRA(directory: Reference.tinyLlama.appendingPathComponent("adapter"))
        let loss = try #require(try model.forward(TokenBatch(sequences: [Reference.sequence(sequence)])))
        let expected = try Reference.tensors("lora_reference.safetensors").floats("\(sequence).logits")
        #expect(maxAbsDifference(model.logits(), expected) <= 1e-4)
        #expect(abs(Double(loss.mean) - Reference.expected.lora_loss[sequence]!) <= 1e-5)
    }

    @Test(arguments: [false, true])
    func gradientsMatchPEFT(checkpointing: Bool) throws {
        try model.loadLoRA(directory: Reference.tinyLlama.appendingPathComponent("adapter"))
        model.gradientCheckpointing = checkpointing
        let parameters = try #require(model.trainableParameters)
        try model.forward(TokenBatch(sequences: [Reference.expected.seq1]))
        try model.backward()
        try expectGradients(parameters, match: Reference.tensors("lora_grads_seq1.safetensors"))
    }

    @Test func gradientsAccumulateOverBackwardPasses() throws {
        try model.loadLoRA(directory: Reference.tinyLlama.appendingPathComponent("adapter"))
        let parameters = try #require(model.trainableParameters)
        try model.forward(TokenBatch(sequences: [Reference.expected.seq1]))
        try model.backward()
        let once = parameters.gradients.array()
        try model.forward(TokenBatch(sequences: [Reference.expected.seq1]))
        try model.backward(scale: 1 / Float(Reference.expected.seq1.count - 1))
        #expect(maxAbsDifference(parameters.gradients.array(), once.map { 2 * $0 }) <= 1e-6)
        parameters.zeroGradients()
        #expect(parameters.gradients.array().allSatisfy { $0 == 0 })
    }

    @Test func freshAdapterStartsAtTheBaseModel() throws {
        var generator = SeededGenerator(seed: 7)
        let parameters = try model.attachLoRA(LoRAConfiguration(rank: 4, alpha: 8, targetModules: ["q_proj", "down_proj"]),
                                              using: &generator)
        #expect(parameters.entries.map(\.name).prefix(2) == ["model.layers.0.self_attn.q_proj.lora_A.weight",
                                                             "model.layers.0.self_attn.q_proj.lora_B.weight"])
        #expect(parameters.entries.count == 8)
        // A ~ U(±1/√in), B = 0: the logits are the base model's.
        let a = Array(parameters.values(of: parameters.entries[0]))
        #expect(a.allSatisfy { abs($0) <= 1 / Float(128).squareRoot() } && a.contains { $0 != 0 })
        #expect(parameters.values(of: parameters.entries[1]).allSatisfy { $0 == 0 })
        try model.forward(TokenBatch(sequences: [Reference.expected.seq1]))
        #expect(maxAbsDifference(model.logits(), try Reference.tensors("reference.safetensors").floats("seq1.logits")) <= 1e-4)
        // With B = 0 only B gets a gradient.
        try model.backward()
        #expect(parameters.gradients(of: parameters.entries[0]).allSatisfy { $0 == 0 })
        #expect(parameters.gradients(of: parameters.entries[1]).contains { $0 != 0 })
    }

    @Test func savedAdapterLoadsBackUnchanged() throws {
        try model.loadLoRA(directory: Reference.tinyLlama.appendingPathComponent("adapter"))
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("lora-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        try model.saveLoRA(directory: folder, baseModel: "tiny-llama")
        let reloaded = try LlamaModel(directory: Reference.tinyLlama)
        #expect(try reloaded.loadLoRA(directory: folder) == model.loraConfiguration)
        #expect(reloaded.trainableParameters?.entries == model.trainableParameters?.entries)
        #expect(reloaded.trainableParameters?.values.array() == model.trainableParameters?.values.array())
        // The same keys as peft's file.
        let original = try SafetensorsFile(url: Reference.tinyLlama.appendingPathComponent("adapter/adapter_model.safetensors"))
        let saved = try SafetensorsFile(url: folder.appendingPathComponent("adapter_model.safetensors"))
        #expect(Set(saved.tensors.map(\.name)) == Set(original.tensors.map(\.name)))
    }

    @Test func rsLoRAScalesByRootOfRank() {
        #expect(LoRAConfiguration(rank: 16, alpha: 16, useRSLoRA: true).scaling == 4)
        #expect(LoRAConfiguration(rank: 16, alpha: 16).scaling == 1)
    }

    @Test func badAdaptersThrowClearErrors() throws {
        var generator = SeededGenerator(seed: 1)
        #expect(throws: ModelError.self) {
            try model.attachLoRA(LoRAConfiguration(targetModules: ["qkv_proj"]), using: &generator)
        }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("lora-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = Reference.tinyLlama.appendingPathComponent("adapter")
        try FileManager.default.copyItem(at: source.appendingPathComponent("adapter_model.safetensors"),
                                         to: folder.appendingPathComponent("adapter_model.safetensors"))
        let config = folder.appendingPathComponent("adapter_config.json")
        try #"{"peft_type": "LORA", "r": 4, "lora_alpha": 16}"#.write(to: config, atomically: true, encoding: .utf8)
        let key = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"
        #expect(throws: ModelError.shapeMismatch(folder.appendingPathComponent("adapter_model.safetensors"),
                                                 tensor: key, expected: [4, 352], found: [8, 352])) {
            try model.loadLoRA(directory: folder)
        }
        try #"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": true}"#.write(to: config, atomically: true, encoding: .utf8)
        #expect(throws: ModelError.invalidAdapter(config, reason: "use_dora = true is not supported")) {
            try model.loadLoRA(directory: folder)
        }
        // A failed load leaves the model as it was.
        #expect(model.trainableParameters == nil)
    }
}
