import Foundation

/// What an evaluation measured. Encoded with snake_case keys (`jsonData()`).
public struct EvaluationResult: Sendable, Codable, Equatable {
    /// Mean next-token cross-entropy (natural log) over the evaluated tokens.
    public var loss: Double
    /// exp(loss).
    public var perplexity: Double
    /// Tokens predicted and scored.
    public var tokens: Int
    /// Wall time of the evaluation (both models when there is a reference).
    public var seconds: Double
    public var tokensPerSecond: Double
    /// Mean KL(reference ‖ model) of the next-token distributions, in nats;
    /// only with a reference model.
    public var klDivergence: Double?
    /// Fraction of tokens where both models' most likely next token agree;
    /// only with a reference model.
    public var top1Agreement: Double?

    /// One JSON object with snake_case keys (loss, perplexity, tokens, …).
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(self)
    }
}

/// Scores a model on token sequences: mean next-token cross-entropy and
/// perplexity, and with a reference model the KL divergence from the
/// reference's next-token distributions and how often their top tokens agree
/// (what llama.cpp's perplexity --kl-divergence reports against a saved base).
///
/// Windows: a sequence longer than the context is cut into windows of
/// `context` tokens that overlap by one token — window k starts at token
/// k·(context − 1) — and each runs on its own from an empty cache. Every
/// token after a sequence's first is thus predicted exactly once, from
/// between 1 and context − 1 tokens of its own window; a sequence that fits
/// is one window, the usual "each text on its own" protocol. Sequences are
/// never joined.
///
/// Each window goes through inference (`forward(_:cache:logits:)`) in chunks,
/// so memory stays at the KV cache plus one chunk's activations and logits.
public final class Evaluator {
    public let model: LlamaModel
    public let reference: LlamaModel?
    /// Tokens per window.
    public let context: Int
    private let cache: KVCache
    private let referenceCache: KVCache?

    /// - Parameters:
    ///   - context: tokens per window, 2 ... max_position_embeddings (of both
    ///     models); defaults to the model's max_position_embeddings, capped at 2048.
    ///   - reference: the model to compare against; it must share the vocabulary.
    /// - Throws: `GenerationError.invalidEvaluation` for a context out of range
    ///   or a reference with another vocabulary.
    public init(model: LlamaModel, reference: LlamaModel? = nil, context: Int? = nil) throws {
        let limit = min(model.configuration.maxPositionEmbeddings, reference?.configuration.maxPositionEmbeddings ?? .max)
        let context = context ?? min(limit, 2048)
        guard context >= 2, context <= limit else {
            throw GenerationError.invalidEvaluation("context \(context) must be between 2 and \(limit) tokens (max_position_embeddings)")
        }
        if let reference, reference.configuration.vocabularySize != model.configuration.vocabularySize {
            throw GenerationError.invalidEvaluation("the reference model's vocabulary has \(reference.configuration.vocabularySize) tokens, the model's \(model.configuration.vocabularySize)")
        }
        self.model = model
        self.reference = reference
        self.context = context
        cache = try KVCache(model: model, capacity: context)
        referenceCache = try reference.map { try KVCache(model: $0, capacity: context) }
    }

    /// The windows `evaluate` cuts a sequence of `count` tokens into (see the type's notes).
    public static func windows(count: Int, context: Int) -> [Range<Int>] {
        guard count >= 2 else { return [] }
        return stride(from: 0, to: count - 1, by: context - 1).map { $0..<min(count, $0 + context) }
    }

    /// Scores every token of every sequence after its first, or with `scored`
    /// only the tokens it marks (a completion's, an assistant's turns: what
    /// training's validation loss counts); windows with none are skipped.
    /// - Parameter scored: per sequence, one flag per token (the first token's is ignored).
    /// - Throws: `GenerationError.invalidEvaluation` when no token is left to
    ///   score or a mask does not match its sequence, `.tokenOutOfVocabulary`
    ///   for an id outside the vocabulary.
    public func evaluate(_ sequences: [[Int32]], scored: [[Bool]]? = nil) throws -> EvaluationResult {
        let v = model.configuration.vocabularySize
        for sequence in sequences {
            if let i = sequence.firstIndex(where: { $0 < 0 || Int($0) >= v }) {
                throw GenerationError.tokenOutOfVocabulary(token: sequence[i], index: i, vocabularySize: v)
            }
        }
        if let scored, scored.count != sequences.count || zip(scored, sequences).contains(where: { $0.count != $1.count }) {
            throw GenerationError.invalidEvaluation("the scoring masks do not match the sequences (one flag per token)")
        }
        let available = sequences.indices.reduce(0) { total, s in
            total + (scored.map { $0[s].dropFirst().filter { $0 }.count } ?? max(0, sequences[s].count - 1))
        }
        guard available > 0 else {
            throw GenerationError.invalidEvaluation(scored == nil
                ? "the data holds \(sequences.reduce(0) { $0 + $1.count }) tokens in \(sequences.count) sequences; at least one sequence needs 2 tokens (one to predict from, one to predict)"
                : "no token after a sequence's first is marked to be scored")
        }
        let started = ContinuousClock.now
        var totals = Totals()
        for (s, sequence) in sequences.enumerated() {
            for window in Self.windows(count: sequence.count, context: context) {
                guard let flags = scored?[s][window] else {
                    try score(Array(sequence[window]), scored: nil, into: &totals)
                    continue
                }
                // Causal: the tokens after the last scored one change nothing before it.
                guard let last = flags.dropFirst().lastIndex(of: true) else { continue }
                try score(Array(sequence[window.lowerBound...last]), scored: Array(flags[...last]), into: &totals)
            }
        }
        let seconds = (ContinuousClock.now - started) / .seconds(1)
        let n = Double(totals.tokens)
        return EvaluationResult(loss: totals.loss / n, perplexity: Foundation.exp(totals.loss / n), tokens: totals.tokens,
                                seconds: seconds, tokensPerSecond: n / seconds,
                                klDivergence: reference == nil ? nil : totals.kl / n,
                                top1Agreement: reference == nil ? nil : Double(totals.agreements) / n)
    }

    private struct Totals {
        var loss = 0.0
        var kl = 0.0
        var agreements = 0
        var tokens = 0
    }

    /// Runs one window chunk by chunk; row r's logits predict token r + 1,
    /// counted when `scored` (if any) marks that token.
    private func score(_ window: [Int32], scored: [Bool]?, into totals: inout Totals) throws {
        cache.reset()
        referenceCache?.reset()
        let v = model.configuration.vocabularySize
        for start in stride(from: 0, to: window.count - 1, by: cache.chunkSize) {
            let chunk = Array(window[start..<min(window.count - 1, start + cache.chunkSize)])
            let logits = try model.forward(chunk, cache: cache, logits: .all)
            let referenceLogits = try reference.map { try $0.forward(chunk, cache: referenceCache!, logits: .all) }
            var rows = [Row](repeating: Row(), count: chunk.count)
            logits.withUnsafeBufferPointer { l in
                rows.withUnsafeMutableBufferPointer { out in
                    Parallel.forEachChunk(chunk.count) { _, range in
                        for r in range where scored?[start + r + 1] ?? true {
                            let target = Int(window[start + r + 1])
                            out[r] = Self.row(l.baseAddress! + r * v, target: target, reference: referenceLogits, at: r * v, count: v)
                        }
                    }
                }
            }
            for (r, row) in rows.enumerated() where scored?[start + r + 1] ?? true {
                totals.loss += row.loss
                totals.kl += row.kl
                totals.agreements += row.agrees ? 1 : 0
                totals.tokens += 1
            }
        }
    }

    private struct Row {
        var loss = 0.0
        var kl = 0.0
        var agrees = false
    }

    /// Cross-entropy of one row, and against the reference row at `offset`:
    /// KL(p_ref ‖ p) = Σ p_ref · (log p_ref − log p), and top-1 agreement.
    private static func row(_ l: UnsafePointer<Float>, target: Int, reference: [Float]?, at offset: Int, count v: Int) -> Row {
        let (lse, top) = logSumExp(l, count: v)
        var row = Row(loss: lse - Double(l[target]))
        guard let reference else { return row }
        reference.withUnsafeBufferPointer { rb in
            let r = rb.baseAddress! + offset
            let (referenceLSE, referenceTop) = logSumExp(r, count: v)
            var kl = 0.0
            for j in 0..<v {
                let logQ = Double(r[j]) - referenceLSE, logP = Double(l[j]) - lse
                kl += Foundation.exp(logQ) * (logQ - logP)
            }
            row.kl = kl
            row.agrees = top == referenceTop
        }
        return row
    }

    /// log Σ exp(x) in double, and the index of the first largest x.
    private static func logSumExp(_ x: UnsafePointer<Float>, count v: Int) -> (Double, Int) {
        var top = 0
        for j in 1..<v where x[j] > x[top] { top = j }
        let m = Double(x[top])
        var sum = 0.0
        for j in 0..<v { sum += Foundation.exp(Double(x[j]) - m) }
        return (m + Foundation.log(sum), top)
    }
}
