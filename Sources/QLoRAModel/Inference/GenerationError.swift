import Foundation

/// What stops inference, generation or evaluation before it starts. Messages
/// give the numbers involved and what to change.
public enum GenerationError: Error, LocalizedError, Equatable {
    /// A KV cache size that is not positive or exceeds the model's context.
    case invalidCapacity(capacity: Int, chunkSize: Int, context: Int)
    /// The cache was made for a model of another shape.
    case cacheMismatch
    /// The tokens do not fit in what is left of the cache.
    case contextFull(capacity: Int, held: Int, adding: Int)
    case emptyPrompt
    /// A prompt longer than the context the generation runs in.
    case promptTooLong(tokens: Int, context: Int)
    /// A token id outside the model's vocabulary.
    case tokenOutOfVocabulary(token: Int32, index: Int, vocabularySize: Int)
    /// Sampling parameters outside their ranges.
    case invalidSampling(String)
    /// Evaluation settings or data that cannot give a result.
    case invalidEvaluation(String)

    public var errorDescription: String? {
        switch self {
        case let .invalidCapacity(capacity, chunkSize, context):
            "a KV cache of \(capacity) tokens in chunks of \(chunkSize) is not possible: both must be positive and the capacity at most the model's context of \(context) tokens (max_position_embeddings)"
        case .cacheMismatch:
            "the KV cache was made for a model of another configuration"
        case let .contextFull(capacity, held, adding):
            "the context is full: the KV cache holds \(held) of its \(capacity) tokens and cannot take \(adding) more"
        case .emptyPrompt:
            "the prompt is empty (it must hold at least one token)"
        case let .promptTooLong(tokens, context):
            "the prompt has \(tokens) tokens, more than the context of \(context) tokens; shorten it, or truncate it explicitly (qlora generate --truncate-prompt keeps its last tokens)"
        case let .tokenOutOfVocabulary(token, index, vocabularySize):
            "token id \(token) at index \(index) is outside the vocabulary 0..<\(vocabularySize)"
        case let .invalidSampling(reason):
            "invalid sampling settings: \(reason)"
        case let .invalidEvaluation(reason):
            "cannot evaluate: \(reason)"
        }
    }
}
