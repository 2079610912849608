import Foundation
import QLoRACompute
import QLoRAStorage

extension LlamaModel {
    /// Loads a Hugging Face Llama folder (config.json, model.safetensors) in
    /// fp32, every projection as a `DenseLinear`.
    public convenience init(directory: URL) throws {
        let configuration = try ModelConfiguration(contentsOf: directory.appendingPathComponent("config.json"))
        let file = try SafetensorsFile(url: directory.appendingPathComponent("model.safetensors"))
        func tensor(_ name: String, _ shape: [Int]) throws -> [Float] {
            let info = try file.info(name)
            guard TensorDType.floatWeightTypes.contains(info.dtype) else {
                throw ModelError.unsupportedDType(file.url, tensor: name, dtype: info.dtype.rawValue)
            }
            guard info.shape == shape else {
                throw ModelError.shapeMismatch(file.url, tensor: name, expected: shape, found: info.shape)
            }
            return try file.floats(name)
        }
        try self.init(configuration: configuration, tensor: tensor) { module, out, inFeatures in
            DenseLinear(weight: try tensor(module + ".weight", [out, inFeatures]), outFeatures: out, inFeatures: inFeatures)
        }
    }

    /// Builds the model from tensors fetched by name with their expected
    /// shape (embeddings, norms) and linears fetched by module name with
    /// (out, in), which is where a packed base plugs in.
    convenience init(configuration c: ModelConfiguration,
                     tensor: (_ name: String, _ shape: [Int]) throws -> [Float],
                     linear: (_ module: String, _ outFeatures: Int, _ inFeatures: Int) throws -> any FrozenLinear) throws {
        let q = c.attentionHeads * c.headDimension, kv = c.kvHeads * c.headDimension
        let table = try tensor("model.embed_tokens.weight", [c.vocabularySize, c.hiddenSize])
        let embedding = Embedding(table: table, vocabularySize: c.vocabularySize, dimension: c.hiddenSize)
        let rope = RotaryEmbedding(headDimension: c.headDimension, theta: c.ropeTheta)
        let attention = GroupedQueryAttention(heads: c.attentionHeads, kvHeads: c.kvHeads, headDimension: c.headDimension)
        func norm(_ name: String) throws -> RMSNorm {
            RMSNorm(weight: try tensor(name + ".weight", [c.hiddenSize]), epsilon: c.rmsNormEpsilon)
        }
        func projection(_ module: String, _ out: Int, _ inFeatures: Int) throws -> Projection {
            Projection(name: module, base: try linear(module, out, inFeatures))
        }
        let layers = try (0..<c.layerCount).map { l in
            let p = "model.layers.\(l)."
            return DecoderLayer(
                inputNorm: try norm(p + "input_layernorm"),
                query: try projection(p + "self_attn.q_proj", q, c.hiddenSize),
                key: try projection(p + "self_attn.k_proj", kv, c.hiddenSize),
                value: try projection(p + "self_attn.v_proj", kv, c.hiddenSize),
                output: try projection(p + "self_attn.o_proj", c.hiddenSize, q),
                postAttentionNorm: try norm(p + "post_attention_layernorm"),
                gate: try projection(p + "mlp.gate_proj", c.intermediateSize, c.hiddenSize),
                up: try projection(p + "mlp.up_proj", c.intermediateSize, c.hiddenSize),
                down: try projection(p + "mlp.down_proj", c.hiddenSize, c.intermediateSize),
                attention: attention, rope: rope)
        }
        let lmHead = c.tieWordEmbeddings
            ? Projection(name: "lm_head", base: DenseLinear(weight: table, outFeatures: c.vocabularySize, inFeatures: c.hiddenSize))
            : try projection("lm_head", c.vocabularySize, c.hiddenSize)
        self.init(configuration: c, embedding: embedding, layers: layers, finalNorm: try norm("model.norm"),
                  lmHead: lmHead, rope: rope)
    }
}
