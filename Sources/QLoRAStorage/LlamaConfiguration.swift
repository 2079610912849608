// config.json of a Llama-shaped Hugging Face model.
//
// Llama, Mistral and Qwen2 share one layout: RMSNorm, rotary attention with
// grouped key/value heads, a SwiGLU MLP, the same tensor names. They differ only in
// details this type records: Qwen2 puts biases on q/k/v, Mistral may limit
// attention to a sliding window. Anything else (another activation, a rotary
// scaling this engine does not know, another architecture) is refused by name.
//
// Swift names are spelled out; `CodingKeys` map them to Hugging Face's snake_case.
// Missing optional keys take transformers' LlamaConfig defaults. The size keys have
// no default: a shape nobody wrote down is a shape nobody can check.

import Foundation

/// The hyperparameters of a Llama-shaped model, read from (and written back to) config.json.
public struct LlamaConfiguration: Codable, Hashable, Sendable {
    /// `model_type` values whose tensors and math follow Llama.
    public static let supportedModelTypes = ["llama", "mistral", "qwen2"]
    /// `architectures` entries accepted, one per model type.
    public static let supportedArchitectures = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]
    /// Rotary variants a model built from this configuration must implement:
    /// plain, "linear" (positions divided by `factor`) and Llama 3's frequency-band scaling.
    public static let supportedRoPETypes = ["default", "linear", "llama3"]
    /// Upper bound on every size, so products of two sizes cannot overflow.
    public static let maxDimension = 1 << 24

    /// As written, e.g. ["LlamaForCausalLM"]; may be empty.
    public var architectures: [String]
    /// "llama", "mistral" or "qwen2".
    public var modelType: String
    /// Width of the residual stream (e.g. 4096).
    public var hiddenSize: Int
    /// Width of the MLP's gate/up projections (e.g. 11008).
    public var intermediateSize: Int
    /// Number of transformer blocks.
    public var hiddenLayers: Int
    /// Query heads per layer.
    public var attentionHeads: Int
    /// Key/value heads per layer (grouped-query attention); defaults to `attentionHeads`.
    public var kvHeads: Int
    /// Width of one head; defaults to hiddenSize / attentionHeads.
    public var headDimensions: Int
    public var vocabularySize: Int
    public var maxPositionEmbeddings: Int
    public var rmsNormEps: Double
    /// Rotary base frequency (top-level `rope_theta`, or `rope_parameters.rope_theta`).
    public var ropeTheta: Double
    /// Rotary scaling; nil for plain RoPE.
    public var ropeScaling: RoPEScaling?
    /// The MLP activation; only "silu" is supported.
    public var hiddenActivation: String
    /// Whether the output head reuses the embedding matrix.
    public var tieWordEmbeddings: Bool
    /// Biases on q/k/v (and, except in Qwen2, on o_proj). Qwen2 defaults to true.
    public var attentionBias: Bool
    /// Biases on gate/up/down.
    public var mlpBias: Bool
    /// Mistral's attention window, nil when attention is unrestricted.
    public var slidingWindow: Int?
    public var bosTokenID: Int?
    /// `eos_token_id` as a list (config.json may hold one id or several).
    public var eosTokenIDs: [Int]
    public var padTokenID: Int?

    /// A configuration built in code (tests, synthetic models). Defaults follow
    /// transformers; `headDimensions` defaults to hiddenSize / attentionHeads.
    public init(
        modelType: String = "llama", hiddenSize: Int, intermediateSize: Int, hiddenLayers: Int,
        attentionHeads: Int, kvHeads: Int? = nil, headDimensions: Int? = nil, vocabularySize: Int,
        maxPositionEmbeddings: Int = 2048, rmsNormEps: Double = 1e-6, ropeTheta: Double = 10000,
        ropeScaling: RoPEScaling? = nil, tieWordEmbeddings: Bool = false, attentionBias: Bool? = nil,
        mlpBias: Bool = false, slidingWindow: Int? = nil, bosTokenID: Int? = nil, eosTokenIDs: [Int] = [],
        padTokenID: Int? = nil
    ) {
        precondition(headDimensions != nil || (attentionHeads > 0 && hiddenSize % attentionHeads == 0),
                     "[LlamaConfiguration] give headDimensions when hiddenSize is not a multiple of attentionHeads")
        architectures = Self.architecture(of: modelType).map { [$0] } ?? []
        self.modelType = modelType
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.hiddenLayers = hiddenLayers
        self.attentionHeads = attentionHeads
        self.kvHeads = kvHeads ?? attentionHeads
        self.headDimensions = headDimensions ?? hiddenSize / attentionHeads
        self.vocabularySize = vocabularySize
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.ropeScaling = ropeScaling
        hiddenActivation = "silu"
        self.tieWordEmbeddings = tieWordEmbeddings
        self.attentionBias = attentionBias ?? (modelType == "qwen2")
        self.mlpBias = mlpBias
        self.slidingWindow = slidingWindow
        self.bosTokenID = bosTokenID
        self.eosTokenIDs = eosTokenIDs
        self.padTokenID = padTokenID
    }

    /// Reads and validates config.json at `url`.
    /// - Throws: `FileError` if it cannot be read, `LlamaConfigurationError` naming the file and key otherwise.
    public init(contentsOf url: URL) throws {
        try self.init(jsonData: MappedFile.contents(of: url), source: url)
    }

    /// Decodes and validates config.json text; `source` names it in errors (the file,
    /// or a packed checkpoint that embeds it).
    public init(jsonData: Data, source: URL) throws {
        do {
            self = try JSONDecoder().decode(Self.self, from: jsonData)
        } catch let error as DecodingError {
            throw LlamaConfigurationError(error, source: source)
        }
        try validate(source: source)
    }

    /// Whether o_proj carries a bias (Llama's attention_bias covers it, Qwen2's q/k/v biases do not).
    public var outputProjectionBias: Bool { attentionBias && modelType != "qwen2" }

    /// Checks the values make a model: supported family, positive sizes, heads grouped evenly.
    public func validate(source: URL) throws {
        guard Self.supportedModelTypes.contains(modelType),
              architectures.allSatisfy(Self.supportedArchitectures.contains)
        else { throw LlamaConfigurationError.unsupportedModel(source, modelType: modelType, architectures: architectures) }
        guard hiddenActivation == "silu" else { throw LlamaConfigurationError.unsupportedActivation(source, hiddenActivation) }
        if let ropeScaling, !Self.supportedRoPETypes.contains(ropeScaling.type) {
            throw LlamaConfigurationError.unsupportedRoPE(source, ropeScaling.type)
        }
        let sizes: [(String, Int)] = [
            ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize), ("num_hidden_layers", hiddenLayers),
            ("num_attention_heads", attentionHeads), ("num_key_value_heads", kvHeads), ("head_dim", headDimensions),
            ("vocab_size", vocabularySize), ("max_position_embeddings", maxPositionEmbeddings),
        ] + (slidingWindow.map { [("sliding_window", $0)] } ?? [])
        for (key, value) in sizes where !(1...Self.maxDimension).contains(value) {
            throw LlamaConfigurationError.outOfRange(source, key: key, value: value, allowed: 1...Self.maxDimension)
        }
        guard attentionHeads % kvHeads == 0 else {
            throw LlamaConfigurationError.headsNotDivisible(source, heads: attentionHeads, kvHeads: kvHeads)
        }
        for (key, value) in [("rms_norm_eps", rmsNormEps), ("rope_theta", ropeTheta)] + (ropeScaling.map { [("rope_scaling.factor", $0.factor)] } ?? [])
        where !(value.isFinite && value > 0) {
            throw LlamaConfigurationError.invalidValue(source, key: key, reason: "must be a positive number, not \(value)")
        }
        // Llama 3 blends between the two bands: an empty or inverted band would divide by zero.
        if let s = ropeScaling, s.type == "llama3" {
            let low = s.lowFrequencyFactor ?? 0, high = s.highFrequencyFactor ?? 0
            guard low > 0, high > low, (s.originalMaxPositionEmbeddings ?? 0) > 0 else {
                throw LlamaConfigurationError.invalidValue(
                    source, key: "rope_scaling",
                    reason: "needs 0 < low_freq_factor < high_freq_factor and a positive original_max_position_embeddings")
            }
        }
    }

    static func architecture(of modelType: String) -> String? {
        Self.supportedModelTypes.firstIndex(of: modelType).map { Self.supportedArchitectures[$0] }
    }

    // MARK: - Coding

    enum CodingKeys: String, CodingKey {
        case architectures
        case modelType = "model_type"
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case hiddenLayers = "num_hidden_layers"
        case attentionHeads = "num_attention_heads"
        case kvHeads = "num_key_value_heads"
        case headDimensions = "head_dim"
        case vocabularySize = "vocab_size"
        case maxPositionEmbeddings = "max_position_embeddings"
        case rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case ropeParameters = "rope_parameters"
        case ropeScaling = "rope_scaling"
        case hiddenActivation = "hidden_act"
        case tieWordEmbeddings = "tie_word_embeddings"
        case attentionBias = "attention_bias"
        case mlpBias = "mlp_bias"
        case slidingWindow = "sliding_window"
        case useSlidingWindow = "use_sliding_window"
        case bosTokenID = "bos_token_id"
        case eosTokenID = "eos_token_id"
        case padTokenID = "pad_token_id"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        architectures = try c.decodeIfPresent([String].self, forKey: .architectures) ?? []
        // Old configs may omit model_type; the architecture then says it.
        if let type = try c.decodeIfPresent(String.self, forKey: .modelType) {
            modelType = type
        } else if let i = architectures.lazy.compactMap({ Self.supportedArchitectures.firstIndex(of: $0) }).first {
            modelType = Self.supportedModelTypes[i]
        } else {
            throw DecodingError.keyNotFound(CodingKeys.modelType, .init(codingPath: [], debugDescription: "no model_type"))
        }
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        hiddenLayers = try c.decode(Int.self, forKey: .hiddenLayers)
        attentionHeads = try c.decode(Int.self, forKey: .attentionHeads)
        vocabularySize = try c.decode(Int.self, forKey: .vocabularySize)
        kvHeads = try c.decodeIfPresent(Int.self, forKey: .kvHeads) ?? attentionHeads
        if let h = try c.decodeIfPresent(Int.self, forKey: .headDimensions) {
            headDimensions = h
        } else if attentionHeads > 0, hiddenSize % attentionHeads == 0 {
            headDimensions = hiddenSize / attentionHeads
        } else {
            throw DecodingError.dataCorruptedError(
                forKey: .headDimensions, in: c,
                debugDescription: "is missing and hidden_size \(hiddenSize) is not a multiple of num_attention_heads \(attentionHeads)")
        }
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 2048
        rmsNormEps = try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6
        // transformers 5 keeps theta and scaling in rope_parameters; 4 used rope_theta and rope_scaling.
        let parameters = try c.decodeIfPresent(RoPEFields.self, forKey: .ropeParameters)
        let legacy = try c.decodeIfPresent(RoPEFields.self, forKey: .ropeScaling)
        ropeTheta = try parameters?.theta ?? c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? 10000
        ropeScaling = (parameters ?? legacy)?.scaling
        hiddenActivation = try c.decodeIfPresent(String.self, forKey: .hiddenActivation) ?? "silu"
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? (modelType == "qwen2")
        mlpBias = try c.decodeIfPresent(Bool.self, forKey: .mlpBias) ?? false
        let windowed = try c.decodeIfPresent(Bool.self, forKey: .useSlidingWindow) ?? true
        slidingWindow = windowed ? try c.decodeIfPresent(Int.self, forKey: .slidingWindow) : nil
        bosTokenID = try c.decodeIfPresent(Int.self, forKey: .bosTokenID)
        padTokenID = try c.decodeIfPresent(Int.self, forKey: .padTokenID)
        if try !c.contains(.eosTokenID) || c.decodeNil(forKey: .eosTokenID) {
            eosTokenIDs = []
        } else if let one = try? c.decode(Int.self, forKey: .eosTokenID) {
            eosTokenIDs = [one]
        } else if let many = try? c.decode([Int].self, forKey: .eosTokenID) {
            eosTokenIDs = many
        } else {
            throw DecodingError.dataCorruptedError(
                forKey: .eosTokenID, in: c, debugDescription: "must be an integer or a list of integers")
        }
    }

    /// Writes transformers-5 style JSON that decodes back to an equal value.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(architectures, forKey: .architectures)
        try c.encode(modelType, forKey: .modelType)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(hiddenLayers, forKey: .hiddenLayers)
        try c.encode(attentionHeads, forKey: .attentionHeads)
        try c.encode(kvHeads, forKey: .kvHeads)
        try c.encode(headDimensions, forKey: .headDimensions)
        try c.encode(vocabularySize, forKey: .vocabularySize)
        try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encode(rmsNormEps, forKey: .rmsNormEps)
        try c.encode(RoPEFields(theta: ropeTheta, scaling: ropeScaling), forKey: .ropeParameters)
        try c.encode(hiddenActivation, forKey: .hiddenActivation)
        try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
        try c.encode(attentionBias, forKey: .attentionBias)
        try c.encode(mlpBias, forKey: .mlpBias)
        try c.encodeIfPresent(slidingWindow, forKey: .slidingWindow)
        try c.encodeIfPresent(bosTokenID, forKey: .bosTokenID)
        if eosTokenIDs.count == 1 {
            try c.encode(eosTokenIDs[0], forKey: .eosTokenID)
        } else if !eosTokenIDs.isEmpty {
            try c.encode(eosTokenIDs, forKey: .eosTokenID)
        }
        try c.encodeIfPresent(padTokenID, forKey: .padTokenID)
    }
}

/// Rotary embedding scaling (config.json `rope_scaling`, or `rope_parameters` in transformers 5).
public struct RoPEScaling: Codable, Hashable, Sendable {
    /// "linear" or "llama3" (others are refused by validation).
    public var type: String
    /// Context extension factor.
    public var factor: Double
    /// Llama 3: wavelengths longer than originalMaxPositionEmbeddings / lowFrequencyFactor are divided by `factor`;
    public var lowFrequencyFactor: Double?
    /// those shorter than originalMaxPositionEmbeddings / highFrequencyFactor are kept; the band between is blended.
    public var highFrequencyFactor: Double?
    /// Llama 3: the context length the model was pretrained with.
    public var originalMaxPositionEmbeddings: Int?

    public init(type: String, factor: Double, lowFrequencyFactor: Double? = nil, highFrequencyFactor: Double? = nil,
                originalMaxPositionEmbeddings: Int? = nil) {
        self.type = type
        self.factor = factor
        self.lowFrequencyFactor = lowFrequencyFactor
        self.highFrequencyFactor = highFrequencyFactor
        self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
    }
}

/// The rope object as stored in JSON: theta (transformers 5 only) plus scaling fields.
private struct RoPEFields: Codable {
    var theta: Double?
    var scaling: RoPEScaling?

    enum CodingKeys: String, CodingKey {
        case type = "rope_type", legacyType = "type", theta = "rope_theta", factor
        case lowFrequencyFactor = "low_freq_factor", highFrequencyFactor = "high_freq_factor"
        case originalMaxPositionEmbeddings = "original_max_position_embeddings"
    }

    init(theta: Double?, scaling: RoPEScaling?) {
        self.theta = theta
        self.scaling = scaling
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        theta = try c.decodeIfPresent(Double.self, forKey: .theta)
        let type = try c.decodeIfPresent(String.self, forKey: .type)
            ?? c.decodeIfPresent(String.self, forKey: .legacyType) ?? "default"
        guard type != "default" else { return }
        // Llama 3 scaling is meaningless without its band limits, so they are required.
        let llama3 = type == "llama3"
        func band<T: Decodable>(_ key: CodingKeys, _: T.Type) throws -> T? {
            llama3 ? try c.decode(T.self, forKey: key) : try c.decodeIfPresent(T.self, forKey: key)
        }
        scaling = RoPEScaling(
            // Types validation will refuse need no factor to be refused by name.
            type: type, factor: LlamaConfiguration.supportedRoPETypes.contains(type)
                ? try c.decode(Double.self, forKey: .factor) : try c.decodeIfPresent(Double.self, forKey: .factor) ?? 1,
            lowFrequencyFactor: try band(.lowFrequencyFactor, Double.self),
            highFrequencyFactor: try band(.highFrequencyFactor, Double.self),
            originalMaxPositionEmbeddings: try band(.originalMaxPositionEmbeddings, Int.self))
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(scaling?.type ?? "default", forKey: .type)
        try c.encodeIfPresent(theta, forKey: .theta)
        try c.encodeIfPresent(scaling?.factor, forKey: .factor)
        try c.encodeIfPresent(scaling?.lowFrequencyFactor, forKey: .lowFrequencyFactor)
        try c.encodeIfPresent(scaling?.highFrequencyFactor, forKey: .highFrequencyFactor)
        try c.encodeIfPresent(scaling?.originalMaxPositionEmbeddings, forKey: .originalMaxPositionEmbeddings)
    }
}

/// What is wrong with a config.json; every message names the file (or the packed
/// checkpoint embedding it) and the key.
public enum LlamaConfigurationError: Error, LocalizedError, Equatable {
    /// The text is not JSON, or not a JSON object.
    case notJSONObject(URL)
    /// A required key is absent (nested keys are dotted, e.g. "rope_scaling.factor").
    case missingKey(URL, key: String)
    /// A key holds the wrong type or an impossible value.
    case invalidValue(URL, key: String, reason: String)
    /// model_type or an architecture is not Llama-shaped.
    case unsupportedModel(URL, modelType: String, architectures: [String])
    /// hidden_act is not "silu".
    case unsupportedActivation(URL, String)
    /// The rotary scaling type is not in `LlamaConfiguration.supportedRoPETypes`.
    case unsupportedRoPE(URL, String)
    /// A size is zero, negative or absurdly large.
    case outOfRange(URL, key: String, value: Int, allowed: ClosedRange<Int>)
    /// Query heads cannot be split evenly over the key/value heads.
    case headsNotDivisible(URL, heads: Int, kvHeads: Int)

    init(_ error: DecodingError, source: URL) {
        func path(_ keys: [any CodingKey]) -> String { keys.map(\.stringValue).joined(separator: ".") }
        switch error {
        case let .keyNotFound(key, context):
            self = .missingKey(source, key: path(context.codingPath + [key]))
        case let .valueNotFound(_, context):
            self = .invalidValue(source, key: path(context.codingPath), reason: "is null")
        case let .typeMismatch(type, context):
            self = context.codingPath.isEmpty
                ? .notJSONObject(source)
                : .invalidValue(source, key: path(context.codingPath), reason: "is not \(Self.jsonName(of: type))")
        case let .dataCorrupted(context):
            self = context.codingPath.isEmpty
                ? .notJSONObject(source)
                : .invalidValue(source, key: path(context.codingPath), reason: context.debugDescription)
        @unknown default:
            self = .notJSONObject(source)
        }
    }

    private static func jsonName(of type: Any.Type) -> String {
        switch type {
        case is Int.Type: "an integer"
        case is Double.Type: "a number"
        case is String.Type: "a string"
        case is Bool.Type: "true or false"
        case is [String].Type, is [Int].Type: "a list"
        default: "of the expected type"
        }
    }

    public var errorDescription: String? {
        switch self {
        case let .notJSONObject(url):
            "\(url.path): not a JSON object"
        case let .missingKey(url, key):
            "\(url.path): required key \"\(key)\" is missing"
        case let .invalidValue(url, key, reason):
            "\(url.path): \"\(key)\" \(reason)"
        case let .unsupportedModel(url, modelType, architectures):
            "\(url.path): model_type \"\(modelType)\" / architectures \(architectures) is not a Llama-shaped causal LM (supported: \(LlamaConfiguration.supportedModelTypes.joined(separator: ", ")); \(LlamaConfiguration.supportedArchitectures.joined(separator: ", ")))"
        case let .unsupportedActivation(url, name):
            "\(url.path): hidden_act \"\(name)\" is not supported (only silu)"
        case let .unsupportedRoPE(url, name):
            "\(url.path): rope type \"\(name)\" is not supported (supported: \(LlamaConfiguration.supportedRoPETypes.joined(separator: ", ")))"
        case let .outOfRange(url, key, value, allowed):
            "\(url.path): \"\(key)\" is \(value), outside \(allowed.lowerBound)...\(allowed.upperBound)"
        case let .headsNotDivisible(url, heads, kvHeads):
            "\(url.path): num_attention_heads \(heads) is not a multiple of num_key_value_heads \(kvHeads)"
        }
    }
}
