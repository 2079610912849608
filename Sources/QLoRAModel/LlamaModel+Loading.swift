import Foundation
import QLoRACompute
import QLoRAStorage

extension LlamaModel {
    /// Loads a Hugging Face model folder (config.json and model.safetensors,
    /// or shards) in fp32, every projection as a `DenseLinear`.
    /// - Throws: what `HFCheckpoint` throws for a missing, inconsistent or
    ///   malformed folder, naming the file.
    public convenience init(directory: URL) throws {
        try self.init(checkpoint: HFCheckpoint(directory: directory))
    }

    /// Builds the model from an opened checkpoint after validating it:
    /// embeddings, norms and biases in fp32, projections as `DenseLinear`.
    /// A NaN or ±Inf weight is refused by name (`SafetensorsError.nonFinite`).
    public convenience init(checkpoint: HFCheckpoint) throws {
        try checkpoint.validate()
        try self.init(configuration: checkpoint.configuration, tensor: { name, _ in try checkpoint.finiteFloats(name) }) { module, out, inFeatures in
            DenseLinear(weight: try checkpoint.finiteFloats(module + ".weight"), outFeatures: out, inFeatures: inFeatures)
        }
    }

    /// Builds the model from tensors fetched by name (embedding, norms,
    /// biases: `tensor(name, shape)`) and frozen linears fetched by module
    /// name (`linear(module, out, in)`, e.g. "model.layers.0.mlp.up_proj"),
    /// which is where a packed base plugs in. lm_head is fetched as module
    /// "lm_head" unless the configuration ties it to the embedding.
    /// - Throws: `ModelError.wrongSize` when a provider returns another size
    ///   than asked for, and whatever the providers throw.
    public convenience init(configuration c: LlamaConfiguration,
                            tensor: (_ name: String, _ shape: [Int]) throws -> [Float],
                            linear: (_ module: String, _ outFeatures: Int, _ inFeatures: Int) throws -> any FrozenLinear) throws {
        let shape = [c.vocabularySize, c.hiddenSize]
        let table = try tensor("model.embed_tokens.weight", shape)
        guard table.count == shape.reduce(1, *) else {
            throw ModelError.wrongSize(tensor: "model.embed_tokens.weight", expected: shape, found: [table.count])
        }
        try self.init(configuration: c, embedding: Embedding(table: table, vocabularySize: c.vocabularySize, dimension: c.hiddenSize),
                      tensor: tensor, linear: linear)
    }

    /// The same with the embedding given whole (a packed one, or a view into
    /// a mapped file); a tied lm_head shares its storage (`Embedding.tiedHead`).
    public convenience init(configuration c: LlamaConfiguration, embedding: Embedding,
                            tensor: (_ name: String, _ shape: [Int]) throws -> [Float],
                            linear: (_ module: String, _ outFeatures: Int, _ inFeatures: Int) throws -> any FrozenLinear) throws {
        guard embedding.vocabularySize == c.vocabularySize, embedding.dimension == c.hiddenSize else {
            throw ModelError.wrongSize(tensor: "model.embed_tokens.weight", expected: [c.vocabularySize, c.hiddenSize],
                                       found: [embedding.vocabularySize, embedding.dimension])
        }
        let q = c.attentionHeads * c.headDimensions, kv = c.kvHeads * c.headDimensions
        func checked(_ name: String, _ shape: [Int]) throws -> [Float] {
            let values = try tensor(name, shape)
            guard values.count == shape.reduce(1, *) else {
                throw ModelError.wrongSize(tensor: name, expected: shape, found: [values.count])
            }
            return values
        }
        func projection(_ module: String, _ out: Int, _ inFeatures: Int, bias: Bool = false) throws -> Projection {
            let base = try linear(module, out, inFeatures)
            guard base.outFeatures == out, base.inFeatures == inFeatures else {
                throw ModelError.wrongSize(tensor: module, expected: [out, inFeatures], found: [base.outFeatures, base.inFeatures])
            }
            return Projection(name: module, base: base, bias: bias ? try checked(module + ".bias", [out]) : nil)
        }
        func norm(_ name: String) throws -> RMSNorm {
            RMSNorm(weight: try checked(name + ".weight", [c.hiddenSize]), epsilon: Float(c.rmsNormEps))
        }
        let rope = RotaryEmbedding(headDimension: c.headDimensions, theta: c.ropeTheta, scaling: c.ropeScaling)
        let attention = GroupedQueryAttention(heads: c.attentionHeads, kvHeads: c.kvHeads, headDimension: c.headDimensions,
                                              window: c.slidingWindow)
        let layers = try (0..<c.hiddenLayers).map { l in
            let p = "model.layers.\(l)."
            return DecoderLayer(
                inputNorm: try norm(p + "input_layernorm"),
                query: try projection(p + "self_attn.q_proj", q, c.hiddenSize, bias: c.attentionBias),
                key: try projection(p + "self_attn.k_proj", kv, c.hiddenSize, bias: c.attentionBias),
                value: try projection(p + "self_attn.v_proj", kv, c.hiddenSize, bias: c.attentionBias),
                output: try projection(p + "self_attn.o_proj", c.hiddenSize, q, bias: c.outputProjectionBias),
                postAttentionNorm: try norm(p + "post_attention_layernorm"),
                gate: try projection(p + "mlp.gate_proj", c.intermediateSize, c.hiddenSize, bias: c.mlpBias),
                up: try projection(p + "mlp.up_proj", c.intermediateSize, c.hiddenSize, bias: c.mlpBias),
                down: try projection(p + "mlp.down_proj", c.hiddenSize, c.intermediateSize, bias: c.mlpBias),
                attention: attention, rope: rope)
        }
        let lmHead = c.tieWordEmbeddings
            ? Projection(name: "lm_head", base: try embedding.tiedHead())
            : try projection("lm_head", c.vocabularySize, c.hiddenSize)
        self.init(configuration: c, embedding: embedding, layers: layers, finalNorm: try norm("model.norm"),
                  lmHead: lmHead, rope: rope)
    }
}
