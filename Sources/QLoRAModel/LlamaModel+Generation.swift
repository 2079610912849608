extension LlamaModel {
    /// Greedy decoding: appends the most likely next token up to `count`
    /// times, stopping after a token in `stopTokens`. Returns the new tokens.
    /// Each step reruns the whole sequence (there is no KV cache yet).
    public func generateGreedy(prompt: [Int32], count: Int, stopTokens: Set<Int32> = []) throws -> [Int32] {
        guard !prompt.isEmpty, count >= 0 else {
            throw ModelError.invalidBatch(reason: prompt.isEmpty ? "the prompt is empty" : "cannot generate \(count) tokens")
        }
        reserve(batch: 1, length: prompt.count + count)
        var sequence = prompt
        for _ in 0..<count {
            try forward(TokenBatch(sequences: [sequence], nextTokenTargets: false))
            let last = logits(row: sequence.count - 1)
            var best = 0
            for i in last.indices where last[i] > last[best] { best = i }
            let next = Int32(best)
            sequence.append(next)
            if stopTokens.contains(next) { break }
        }
        return Array(sequence[prompt.count...])
    }
}
