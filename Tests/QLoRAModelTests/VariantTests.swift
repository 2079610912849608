import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// Tiny random models of the other shapes LlamaConfiguration accepts, against
/// transformers' logits and loss for a right-padded batch of 80 and 57 tokens
/// (longer than one attention query block). See Tests/Fixtures/model/README.md.
@Suite struct VariantTests {
    @Test(arguments: ["llama3-rope-bias-tied", "mistral-window-linear-rope", "qwen2-qkv-bias"])
    func logitsAndLossMatchTransformers(variant: String) throws {
        let folder = Fixtures.url("model/variants/\(variant)")
        let model = try LlamaModel(directory: folder)
        let reference = try SafetensorsFile(url: folder.appendingPathComponent("reference.safetensors"))
        func int64s(_ name: String) throws -> [Int64] {
            Array(try reference.bytes(name).bindMemory(to: Int64.self))
        }
        let ids = try int64s("input_ids").map(Int32.init), mask = try int64s("attention_mask").map(UInt8.init)
        let b = 2, t = ids.count / 2, v = model.configuration.vocabularySize
        let labels = zip(ids, mask).map { $1 == 0 ? -100 : $0 }
        let batch = TokenBatch(tokens: ids, batchSize: b, length: t, attentionMask: mask,
                               targets: TokenBatch.targets(fromLabels: labels, batchSize: b, length: t))
        let loss = try #require(try model.forward(batch))
        #expect(abs(loss.mean - (try reference.floats("loss"))[0]) <= 1e-5)
        // Logits at padded positions are not defined the same way; compare the real ones.
        let ours = model.logits(), theirs = try reference.floats("logits")
        var worst: Float = 0
        for row in 0..<(b * t) where mask[row] != 0 {
            for j in 0..<v { worst = max(worst, abs(ours[row * v + j] - theirs[row * v + j])) }
        }
        #expect(worst <= 1e-4)
    }
}
