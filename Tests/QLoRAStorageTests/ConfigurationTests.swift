// config.json: real files, defaults, other Llama-shaped families, and what is refused.

import Foundation
import QLoRAStorage
import Testing
import _TestSupport

@Suite struct ConfigurationTests {
    private static let source = URL(fileURLWithPath: "/models/example/config.json")

    /// stories260K's config.json with `edit` applied, decoded.
    private static func variant(_ edit: (inout [String: Any]) -> Void) throws -> LlamaConfiguration {
        let data = try Data(contentsOf: Fixtures.url("configs/stories260K.json"))
        var object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        edit(&object)
        return try LlamaConfiguration(jsonData: JSONSerialization.data(withJSONObject: object), source: source)
    }

    private static func failure(_ edit: (inout [String: Any]) -> Void) -> LlamaConfigurationError? {
        SafetensorsScratch.error(LlamaConfigurationError.self) { _ = try variant(edit) }
    }

    @Test func tinyLlamaParses() throws {
        // rope_theta appears only inside transformers 5's rope_parameters here.
        let c = try LlamaConfiguration(contentsOf: Fixtures.url("configs/tiny-llama.json"))
        #expect(c.modelType == "llama" && c.architectures == ["LlamaForCausalLM"])
        #expect(c.hiddenSize == 128 && c.intermediateSize == 352 && c.hiddenLayers == 2)
        #expect(c.attentionHeads == 4 && c.kvHeads == 2 && c.headDimensions == 32)
        #expect(c.vocabularySize == 384 && c.maxPositionEmbeddings == 256)
        #expect(c.ropeTheta == 10000 && c.ropeScaling == nil && c.rmsNormEps == 1e-5)
        #expect(!c.tieWordEmbeddings && !c.attentionBias && !c.mlpBias)
        #expect(c.bosTokenID == 0 && c.eosTokenIDs == [1] && c.padTokenID == 3)
    }

    @Test func stories260KParses() throws {
        let c = try LlamaConfiguration(contentsOf: Fixtures.url("configs/stories260K.json"))
        #expect(c.hiddenSize == 64 && c.intermediateSize == 172 && c.hiddenLayers == 5)
        #expect(c.attentionHeads == 8 && c.kvHeads == 4 && c.headDimensions == 8 && c.vocabularySize == 512)
        #expect(c.tieWordEmbeddings && c.ropeTheta == 10000 && c.eosTokenIDs == [2])
    }

    @Test func ropeThetaFromEitherPlaceOrDefault() throws {
        let nested = try Self.variant {
            $0["rope_theta"] = nil
            $0["rope_parameters"] = ["rope_type": "default", "rope_theta": 500000.0]
        }
        #expect(nested.ropeTheta == 500000)
        let topLevel = try Self.variant {
            $0["rope_parameters"] = nil
            $0["rope_theta"] = 1e6
        }
        #expect(topLevel.ropeTheta == 1e6)
        let neither = try Self.variant {
            $0["rope_parameters"] = nil
            $0["rope_theta"] = nil
        }
        #expect(neither.ropeTheta == 10000)
    }

    @Test func defaultsForOptionalKeys() throws {
        let c = try Self.variant {
            for key in ["num_key_value_heads", "head_dim", "tie_word_embeddings", "rms_norm_eps", "eos_token_id",
                        "attention_bias", "max_position_embeddings", "hidden_act", "model_type"] { $0[key] = nil }
        }
        #expect(c.modelType == "llama") // from architectures
        #expect(c.kvHeads == 8 && c.headDimensions == 8 && !c.tieWordEmbeddings)
        #expect(c.rmsNormEps == 1e-6 && c.eosTokenIDs.isEmpty && c.maxPositionEmbeddings == 2048)
    }

    @Test func eosMayBeAList() throws {
        #expect(try Self.variant { $0["eos_token_id"] = [2, 7] }.eosTokenIDs == [2, 7])
        #expect(try Self.variant { $0["eos_token_id"] = NSNull() }.eosTokenIDs == [])
        #expect(Self.failure { $0["eos_token_id"] = "2" }
            == .invalidValue(Self.source, key: "eos_token_id", reason: "must be an integer or a list of integers"))
    }

    @Test func qwen2HasQKVBiasesButNoOutputBias() throws {
        let c = try Self.variant {
            $0["model_type"] = "qwen2"
            $0["architectures"] = ["Qwen2ForCausalLM"]
            $0["attention_bias"] = nil
            $0["use_sliding_window"] = false
            $0["sliding_window"] = 4096
        }
        #expect(c.attentionBias && !c.outputProjectionBias && c.slidingWindow == nil)
        let biases = c.tensorInventory.filter(\.kind.isBias).filter { $0.layer == 0 }
        #expect(biases.map(\.name) == ["model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.k_proj.bias",
                                       "model.layers.0.self_attn.v_proj.bias"])
        #expect(biases.map(\.shape) == [[64], [32], [32]])
        let mistral = try Self.variant {
            $0["model_type"] = "mistral"
            $0["architectures"] = ["MistralForCausalLM"]
            $0["sliding_window"] = 4096
        }
        #expect(mistral.slidingWindow == 4096 && !mistral.attentionBias)
    }

    @Test func missingRequiredKeyIsNamed() throws {
        let error = Self.failure { $0["hidden_size"] = nil }
        #expect(error == .missingKey(Self.source, key: "hidden_size"))
        let message = error?.localizedDescription ?? ""
        #expect(message.contains("/models/example/config.json") && message.contains("hidden_size"))
        #expect(Self.failure {
            $0["rope_parameters"] = ["rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192]
        } == .missingKey(Self.source, key: "rope_parameters.low_freq_factor"))
        #expect(Self.failure { $0["model_type"] = nil; $0["architectures"] = nil } == .missingKey(Self.source, key: "model_type"))
    }

    @Test func wrongTypesAreNamed() throws {
        #expect(Self.failure { $0["hidden_size"] = "64" } == .invalidValue(Self.source, key: "hidden_size", reason: "is not an integer"))
        #expect(Self.failure { $0["tie_word_embeddings"] = 1.5 }
            == .invalidValue(Self.source, key: "tie_word_embeddings", reason: "is not true or false"))
        let notObject = SafetensorsScratch.error(LlamaConfigurationError.self) {
            _ = try LlamaConfiguration(jsonData: Data("[1]".utf8), source: Self.source)
        }
        #expect(notObject == .notJSONObject(Self.source))
    }

    @Test func otherArchitecturesAreRefused() throws {
        let gpt2 = Self.failure {
            $0["model_type"] = "gpt2"
            $0["architectures"] = ["GPT2LMHeadModel"]
        }
        #expect(gpt2 == .unsupportedModel(Self.source, modelType: "gpt2", architectures: ["GPT2LMHeadModel"]))
        #expect(gpt2?.localizedDescription.contains("LlamaForCausalLM") == true)
        #expect(Self.failure { $0["architectures"] = ["LlamaForSequenceClassification"] }
            == .unsupportedModel(Self.source, modelType: "llama", architectures: ["LlamaForSequenceClassification"]))
        #expect(Self.failure { $0["hidden_act"] = "gelu" } == .unsupportedActivation(Self.source, "gelu"))
        #expect(Self.failure { $0["rope_parameters"] = ["rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0] }
            == .unsupportedRoPE(Self.source, "yarn"))
    }

    @Test func impossibleSizesAreRefused() throws {
        #expect(Self.failure { $0["num_key_value_heads"] = 3 } == .headsNotDivisible(Self.source, heads: 8, kvHeads: 3))
        #expect(Self.failure { $0["num_hidden_layers"] = 0 }
            == .outOfRange(Self.source, key: "num_hidden_layers", value: 0, allowed: 1...LlamaConfiguration.maxDimension))
        #expect(Self.failure { $0["vocab_size"] = 1 << 40 }
            == .outOfRange(Self.source, key: "vocab_size", value: 1 << 40, allowed: 1...LlamaConfiguration.maxDimension))
        #expect(Self.failure { $0["rms_norm_eps"] = -1.0 }
            == .invalidValue(Self.source, key: "rms_norm_eps", reason: "must be a positive number, not -1.0"))
        let invertedBand = Self.failure {
            $0["rope_parameters"] = ["rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 4.0,
                                     "high_freq_factor": 1.0, "original_max_position_embeddings": 8192]
        }
        guard case .invalidValue(_, "rope_scaling", _)? = invertedBand else {
            Issue.record("expected invalidValue for rope_scaling, got \(String(describing: invertedBand))")
            return
        }
        let undetermined = Self.failure {
            $0["head_dim"] = nil
            $0["num_attention_heads"] = 6
            $0["num_key_value_heads"] = 6
        }
        guard case .invalidValue(_, "head_dim", _)? = undetermined else {
            Issue.record("expected invalidValue for head_dim, got \(String(describing: undetermined))")
            return
        }
    }

    @Test func encodingRoundTrips() throws {
        let configurations = try [
            LlamaConfiguration(contentsOf: Fixtures.url("configs/tiny-llama.json")),
            LlamaConfiguration(contentsOf: Fixtures.url("configs/stories260K.json")),
            LlamaConfiguration(
                modelType: "qwen2", hiddenSize: 96, intermediateSize: 200, hiddenLayers: 3, attentionHeads: 6, kvHeads: 2,
                vocabularySize: 1000, ropeScaling: RoPEScaling(type: "llama3", factor: 8, lowFrequencyFactor: 1,
                                                               highFrequencyFactor: 4, originalMaxPositionEmbeddings: 8192),
                slidingWindow: 512, bosTokenID: 5, eosTokenIDs: [6, 7]),
        ]
        for c in configurations {
            let json = try JSONEncoder().encode(c)
            #expect(try LlamaConfiguration(jsonData: json, source: Self.source) == c)
        }
    }
}
