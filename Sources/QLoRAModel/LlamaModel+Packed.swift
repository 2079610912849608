import QLoRACompute
import QLoRAStorage

extension LlamaModel {
    /// Builds the model over a packed checkpoint without copying its weights:
    /// quantized linears become `PackedLinear`s viewing their blocks in the
    /// mapped file, an F32 lm_head a `MappedLinear` viewing its values, a
    /// quantized embedding dequantizes the rows it gathers. Norms and biases
    /// are read into arrays; F16/BF16 tensors are converted to fp32 in memory.
    /// A tied lm_head (the file omits it) is the embedding itself, packed or
    /// not. The views keep the mapped file alive, so the checkpoint object
    /// need not outlive this call. Adapters attach as to any model.
    ///
    /// - Throws: `LlamaConfigurationError` for the embedded config.json,
    ///   `ModelError.shapeMismatch` for a tensor of another shape than the
    ///   configuration implies, `PackedCheckpointError` for a missing tensor.
    public convenience init(packed checkpoint: PackedCheckpoint, pool: ComputePool = .shared) throws {
        let c = try LlamaConfiguration(jsonData: checkpoint.configJSON, source: checkpoint.url)
        func info(_ name: String, _ shape: [Int]) throws -> PackedTensorInfo {
            let info = try checkpoint.info(name)
            guard info.shape == shape else {
                throw ModelError.shapeMismatch(checkpoint.url, tensor: name, expected: shape, found: info.shape)
            }
            return info
        }
        let embeddingName = "model.embed_tokens.weight"
        let embedding = try info(embeddingName, [c.vocabularySize, c.hiddenSize]).isQuantized
            ? Embedding(quantized: try checkpoint.quantized(embeddingName))
            : Embedding(tensor: try checkpoint.floats(embeddingName))
        try self.init(configuration: c, embedding: embedding, tensor: { name, shape in
            _ = try info(name, shape)
            return try checkpoint.floats(name).array
        }, linear: { module, out, inFeatures in
            let name = module + ".weight"
            guard try info(name, [out, inFeatures]).isQuantized else { return MappedLinear(weight: try checkpoint.floats(name)) }
            let q = try checkpoint.quantized(name)
            return try PackedLinear(view: q.packed, owner: QuantizedTensorOwner(q), name: name, pool: pool)
        })
    }
}
