// A small random Llama written as a Hugging Face folder, for tests that need
// a model whose shapes they choose (the quantizer's, the merge's).

import Foundation
import QLoRAStorage

/// A one-block Llama. With the default intermediate size its projections hold whole
/// groups of 256 blocks of 64, so NF4/64/DQ8 costs exactly QLoRA's 4 + 8/64 + 32/(64·256)
/// bits plus the offsets; 2304 makes the MLP weights span two quantizer chunks.
/// `edit` may change the fp32 values of any tensor before they are written.
public func writeSyntheticModel(to dir: URL, intermediateSize: Int = 256,
                                edit: (String, inout [Float]) -> Void = { _, _ in }) throws -> LlamaConfiguration {
    let config = LlamaConfiguration(hiddenSize: 128, intermediateSize: intermediateSize, hiddenLayers: 1, attentionHeads: 4,
                                    vocabularySize: 128)
    try JSONEncoder().encode(config).write(to: dir.appendingPathComponent("config.json"))
    var rng = SeededGenerator(seed: 5)
    var writer = SafetensorsWriter()
    for t in config.tensorInventory where t.isRequired {
        var values = t.kind.isNorm ? [Float](repeating: 1, count: t.shape.reduce(1, *)) : rng.gaussian(count: t.shape.reduce(1, *), std: 0.02)
        edit(t.name, &values)
        try writer.add(t.name, shape: t.shape, floats: values)
    }
    try writer.write(to: dir.appendingPathComponent("model.safetensors"))
    return config
}
