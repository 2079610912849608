import Foundation

// Stand-in until QLoRAStorage's LlamaConfiguration (checkpoint branch) is merged.
struct ModelConfiguration {
    var vocabularySize: Int
    var hiddenSize: Int
    var intermediateSize: Int
    var layerCount: Int
    var attentionHeads: Int
    var kvHeads: Int
    var headDimension: Int
    var rmsNormEpsilon: Float
    var ropeTheta: Double
    var tieWordEmbeddings: Bool

    init(contentsOf url: URL) throws {
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any] ?? [:]
        func int(_ key: String) throws -> Int {
            guard let v = object[key] as? Int else { throw ModelError.unsupportedConfiguration(url, reason: "no \(key)") }
            return v
        }
        vocabularySize = try int("vocab_size")
        hiddenSize = try int("hidden_size")
        intermediateSize = try int("intermediate_size")
        layerCount = try int("num_hidden_layers")
        attentionHeads = try int("num_attention_heads")
        kvHeads = (object["num_key_value_heads"] as? Int) ?? attentionHeads
        headDimension = (object["head_dim"] as? Int) ?? hiddenSize / attentionHeads
        rmsNormEpsilon = Float((object["rms_norm_eps"] as? Double) ?? 1e-6)
        ropeTheta = (object["rope_theta"] as? Double) ?? ((object["rope_parameters"] as? [String: Any])?["rope_theta"] as? Double) ?? 10000
        tieWordEmbeddings = (object["tie_word_embeddings"] as? Bool) ?? false
    }
}
