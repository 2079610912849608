import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// Models loaded from packed checkpoints written by the quantizer.
@Suite struct PackedModelTests {
    /// Quantizes `folder` into a temporary packed file and opens it. The file
    /// is deleted at once: the model's views keep the mapping alive.
    static func packed(_ folder: URL, _ options: QuantizeOptions) throws -> LoadedModel {
        let directory = try TemporaryDirectory("packed")
        defer { directory.remove() }
        let url = directory.appending("model.qlora")
        _ = try Quantizer.quantize(modelDirectory: folder, output: url, options: options)
        return try LoadedModel(contentsOf: url)
    }

    static let nf4 = QuantizeOptions(spec: QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8))

    /// bitsandbytes computes with exactly our dequantized weights (README
    /// section 6), so the logits agree to fp32 rounding.
    @Test(arguments: ["seq1", "seq2"])
    func nf4LogitsMatchBitsandbytes(sequence: String) throws {
        let loaded = try Self.packed(Reference.tinyLlama, Self.nf4)
        let model = loaded.model, reference = try Reference.tensors("qlora_reference.safetensors")
        #expect(loaded.format == .packed)
        #expect(model.layers.flatMap(\.projections).allSatisfy { $0.base is PackedLinear })
        #expect(model.lmHead.base is MappedLinear) // F32 in the file, viewed in place
        let ids = Reference.sequence(sequence)
        try model.forward(TokenBatch(sequences: [ids], nextTokenTargets: false))
        let base = maxAbsDifference(model.logits(), try reference.floats("\(sequence).base_logits"))
        try model.loadLoRA(directory: Reference.tinyLlama.appendingPathComponent("adapter"))
        try model.forward(TokenBatch(sequences: [ids], nextTokenTargets: false))
        let adapted = maxAbsDifference(model.logits(), try reference.floats("\(sequence).logits"))
        print("[PackedModelTests] \(sequence): max |logits − bitsandbytes| \(base) base, \(adapted) with the adapter")
        #expect(base <= 1e-4)
        #expect(adapted <= 1e-4)
        // Inference through the KV cache gives the same numbers.
        let cached = try model.forward(ids, cache: KVCache(model: model, capacity: ids.count), logits: .all)
        #expect(maxAbsDifference(cached, try reference.floats("\(sequence).logits")) <= 1e-4)
    }

    /// A quantized embedding dequantizes rows on gather (rows start inside
    /// blocks of 128 when C = 64) and a tied lm_head runs packed over the same
    /// blocks: the logits equal a dense model built from the dequantized tensors.
    @Test func quantizedEmbeddingAndTiedHeadEqualTheirDequantizedWeights() throws {
        let options = QuantizeOptions(spec: QuantSpec(type: .nf4, blockSize: 128, scaleKind: .f16), quantizeEmbeddings: true)
        let loaded = try Self.packed(EmbeddedModel.directory, options)
        let model = loaded.model, checkpoint = try #require(loaded.checkpoint)
        #expect(model.configuration.tieWordEmbeddings && !checkpoint.contains("lm_head.weight"))
        #expect(model.embedding.isQuantized && model.lmHead.base is PackedLinear)
        let dense = try LlamaModel(configuration: model.configuration, tensor: { name, _ in try checkpoint.floats(name).array }) { module, out, inFeatures in
            DenseLinear(weight: try checkpoint.floats(module + ".weight").array, outFeatures: out, inFeatures: inFeatures)
        }
        let ids = Reference.expected.stories260K_greedy.prompt_ids + Reference.expected.stories260K_greedy.continuation_ids
        try model.forward(TokenBatch(sequences: [ids], nextTokenTargets: false))
        try dense.forward(TokenBatch(sequences: [ids], nextTokenTargets: false))
        #expect(maxAbsDifference(model.logits(), dense.logits()) <= 1e-4)
        #expect(model.hiddenState(0) == dense.hiddenState(0)) // the gathered rows are the dequantized ones exactly
    }

    @Test func tokenizerComesFromTheEmbeddedFiles() throws {
        let loaded = try Self.packed(EmbeddedModel.directory, Self.nf4)
        let tokenizer = try loaded.tokenizer(), folder = try Tokenizer(directory: EmbeddedModel.directory)
        #expect(tokenizer.encode("Once upon a time") == Reference.expected.stories260K_greedy.prompt_ids.map(Int.init))
        #expect(tokenizer.eosTokenIDs == folder.eosTokenIDs && tokenizer.bosTokenID == folder.bosTokenID)
        // tiny-llama's folder has no tokenizer, so neither has its packed file.
        let bare = try Self.packed(Reference.tinyLlama, Self.nf4)
        let error = #expect(throws: TokenizerError.self) { try bare.tokenizer() }
        #expect(error?.localizedDescription.contains(bare.url.path) == true)
    }

    /// zstd-compressed tensors load into memory instead of being mapped, with the same numbers.
    @Test func compressedCheckpointsGiveTheSameLogits() throws {
        var options = Self.nf4
        let plain = try Self.packed(EmbeddedModel.directory, options).model
        options.compress = true
        let compressed = try Self.packed(EmbeddedModel.directory, options).model
        let ids = Reference.expected.stories260K_greedy.prompt_ids
        try plain.forward(TokenBatch(sequences: [ids], nextTokenTargets: false))
        try compressed.forward(TokenBatch(sequences: [ids], nextTokenTargets: false))
        #expect(plain.logits() == compressed.logits())
    }

    @Test func openingByPathTellsFoldersFromPackedFiles() throws {
        let folder = try LoadedModel(contentsOf: EmbeddedModel.directory)
        #expect(folder.format == .huggingFace && folder.checkpoint == nil)
        let missing = URL(fileURLWithPath: "/nonexistent/model.qlora")
        #expect(throws: LoadedModelError.notFound(missing)) { try LoadedModel(contentsOf: missing) }
        // A file that is not a packed checkpoint is refused by the packed reader, naming it.
        let notPacked = EmbeddedModel.directory.appendingPathComponent("config.json")
        let error = #expect(throws: PackedCheckpointError.self) { try LoadedModel(contentsOf: notPacked) }
        #expect(error?.localizedDescription.contains(notPacked.path) == true)
    }
}
