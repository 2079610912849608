// The memory estimate: a worked example by hand, monotonicity in every setting, and
// the refusal that names the change that fits.

import Foundation
import QLoRAStorage
import QLoRATraining
import Testing

@Suite struct MemoryEstimateTests {
    /// H 8, I 16, 2 layers, 2 heads of 4, 1 kv head, vocabulary 32, untied.
    let tiny = LlamaConfiguration(hiddenSize: 8, intermediateSize: 16, hiddenLayers: 2, attentionHeads: 2, kvHeads: 1, vocabularySize: 32)

    private func plan(_ c: LlamaConfiguration? = nil, base: TrainingMemoryPlan.BaseWeights = .fp32, batch: Int = 2, length: Int = 4,
                      rank: Int = 2, targets: [LlamaTensor.Kind] = [.qProj, .vProj], layers: [Int]? = nil, dropout: Bool = false,
                      checkpointing: Bool = false) -> TrainingMemoryPlan {
        TrainingMemoryPlan(configuration: c ?? tiny, base: base, batchSize: batch, sequenceLength: length, loraRank: rank,
                           loraTargets: targets, loraLayers: layers, loraDropout: dropout, gradientCheckpointing: checkpointing,
                           threads: 2)
    }

    @Test func workedExample() {
        let e = plan().estimate()
        // Projections per layer: q 8·8, k 4·8, v 4·8, o 8·8, gate/up 16·8, down 8·16 = 576; 2 layers, 4 bytes.
        #expect(e.baseWeights == 576 * 2 * 4)
        // Embedding and lm_head 32·8 each, norms (2·2 + 1)·8.
        #expect(e.embeddingsAndNorms == (256 + 256 + 40) * 4)
        // q: 2·(8 + 8), v: 2·(8 + 4) per layer; weights, grads, m, v in fp32.
        #expect(e.adapterParameters == 2 * (32 + 24))
        #expect(e.adapter == 112 * 16)
        // N = 8 tokens. Per token: the block input 8; the cache 3·8 + 2 + 2·8 + 2·4 + 2 heads + 2·16 = 84;
        // the adapters' A·x and its gradient, 2·2 for q and for v.
        let layer = 4 * 8 * (8 + 84 + 8)
        #expect(e.activationsPerLayer == layer)
        #expect(e.activations == 2 * layer + 4 * 8 * 8)
        #expect(e.logits == 4 * 8 * (8 + 2 + 32))
        // Layer gradients 8 + 2·8 + 2·4 + 2·16, residual gradient 8, RoPE 4; attention 2 threads · 2·4·4; ids 16·8.
        #expect(e.scratch == 4 * 8 * (16 + 16 + 8 + 32 + 4) + 4 * 2 * 2 * 4 * 4 + 16 * 8)
        #expect(e.total == 4608 + 2208 + 6656 + 1344 + 1792 + 2816)

        let checkpointed = plan(checkpointing: true).estimate()
        #expect(checkpointed.activations == 2 * 4 * 8 * (8 + 8) + 4 * 8 * 84 + 4 * 8 * 8)
        // Dropout adds a mask bit per input of q and of v (8/32 floats each) and drop(x) for the widest (8).
        let dropped = plan(dropout: true).estimate()
        #expect(dropped.activationsPerLayer == 4 * 8 * (8 + 84 + 8) + 4 * 8 * 2 * 8 / 32)
        #expect(dropped.scratch == e.scratch + 4 * 8 * 8)

        // Adapters on layer 1 only: half the adapter, and layer 0 keeps no cache of its own (backward
        // stops at layer 1), so its block input and one shared cache remain.
        let upper = plan(layers: [1]).estimate()
        #expect(upper.adapterParameters == 32 + 24)
        #expect(upper.activations == 4 * 8 * (2 * 8 + 2 * 84 + 8 + 8))
        // On layer 0 only, every layer keeps its cache; layer 1 has no adapters.
        #expect(plan(layers: [0]).estimate().activations == 2 * layer + 4 * 8 * 8 - 4 * 8 * 8)
        #expect(plan(layers: [1], checkpointing: true).estimate().activations == 2 * 4 * 8 * 8 + 4 * 8 * 8 + 4 * 8 * 84 + 4 * 8 * 8)
    }

    @Test func packedBaseUsesThePackedLayout() {
        let spec = QuantSpec(type: .nf4, blockSize: 64, scaleKind: .f32)
        let e = plan(base: .packed(spec)).estimate()
        let perLayer = [64, 32, 32, 64, 128, 128, 128].reduce(0) { $0 + PackedLayout(spec: spec, count: $1).totalBytes }
        #expect(e.baseWeights == 2 * perLayer)
        #expect(plan(base: .bytes(12345)).estimate().baseWeights == 12345)
    }

    @Test func realisticSevenBillionModel() {
        // Llama-2-7B's shape, NF4 with double quantization: the QLoRA paper's setting.
        let llama = LlamaConfiguration(hiddenSize: 4096, intermediateSize: 11008, hiddenLayers: 32, attentionHeads: 32, vocabularySize: 32000)
        let e = plan(llama, base: .packed(QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8)), batch: 1, length: 512, rank: 16,
                     checkpointing: true).estimate()
        let gib = Double(1 << 30)
        // 6.48e9 projection weights at about 4.13 bits.
        #expect(Double(e.baseWeights) / gib > 3.0 && Double(e.baseWeights) / gib < 3.3)
        #expect(e.adapterParameters == 32 * 16 * (8192 + 8192))
        #expect(Double(e.total) / gib > 4 && Double(e.total) / gib < 8, "\(e)")
    }

    @Test func growsWithEverySetting() {
        let base = plan(batch: 2, length: 8, rank: 4).estimate().total
        #expect(plan(batch: 3, length: 8, rank: 4).estimate().total > base)
        #expect(plan(batch: 2, length: 9, rank: 4).estimate().total > base)
        #expect(plan(batch: 2, length: 8, rank: 5).estimate().total > base)
        #expect(plan(batch: 2, length: 8, rank: 4, targets: [.qProj, .vProj, .downProj]).estimate().total > base)
        #expect(plan(batch: 2, length: 8, rank: 4, dropout: true).estimate().total > base)
        #expect(plan(batch: 2, length: 8, rank: 4, checkpointing: true).estimate().total < base)
        var deeper = tiny
        deeper.hiddenLayers = 3
        #expect(plan(deeper, batch: 2, length: 8, rank: 4).estimate().total > base)
    }

    @Test func refusalNamesEachChangeThatFits() throws {
        let p = plan(batch: 8, length: 64, rank: 8)
        let total = p.estimate().total
        let limit = total * 4 / 5
        do {
            try p.check(limit: limit)
            Issue.record("no refusal at 4/5 of the estimate")
        } catch let error as MemoryLimitError {
            #expect(!error.fixes.isEmpty)
            for fix in error.fixes {
                #expect(fix.total <= limit)
                var changed = p, larger = p
                switch fix.knob {
                case .batchSize: changed.batchSize = fix.value!; larger.batchSize = fix.value! + 1
                case .sequenceLength: changed.sequenceLength = fix.value!; larger.sequenceLength = fix.value! + 1
                case .loraRank: changed.loraRank = fix.value!; larger.loraRank = fix.value! + 1
                case .gradientCheckpointing: changed.gradientCheckpointing = true
                }
                #expect(changed.estimate().total == fix.total)
                // Each value is the largest that fits.
                if fix.value != nil { #expect(larger.estimate().total > limit, "\(fix)") }
            }
            let message = error.localizedDescription
            #expect(message.contains("--batch-size") && message.contains("--grad-checkpoint") && message.contains("--max-seq-len"))
            #expect(message.contains("over the"))
        }
        try p.check(limit: total)
    }

    @Test func refusalWhenNothingFits() {
        let p = plan(batch: 4, length: 16)
        let frozen = p.estimate().baseWeights + p.estimate().embeddingsAndNorms
        do {
            try p.check(limit: frozen / 2)
            Issue.record("no refusal below the frozen weights")
        } catch let error as MemoryLimitError {
            #expect(error.fixes.isEmpty)
            #expect(error.localizedDescription.contains("even with --batch-size 1 --grad-checkpoint --rank 1"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }
}
