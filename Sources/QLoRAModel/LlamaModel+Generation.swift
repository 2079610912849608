extension LlamaModel {
    /// Greedy decoding: appends the most likely next token up to `count`
    /// times, stopping after a token in `stopTokens`. Returns the new tokens.
    /// Each step reruns the whole sequence (there is no KV cache yet).
    public func generateGreedy(prompt: [Int32], count: Int, stopTokens: Set<Int32> = []) throws -> [Int32] {
        guard !prompt.isEmpty else { throw ModelError.invalidBatch(reason: "the prompt is empty") }
        reserve(batch: 1, length: prompt.count + count)
        var sequence = prompt
        let v = vocabularySize
        for _ in 0..<count {
            try forward(TokenBatch(sequences: [sequence], nextTokenTargets: false))
            let last = logits().suffix(v)
            var best = last.startIndex
            for i in last.indices where last[i] > last[best] { best = i }
            let next = Int32(best - last.startIndex)
            sequence.append(next)
            if stopTokens.contains(next) { break }
        }
        return Array(sequence[prompt.count...])
    }
}
