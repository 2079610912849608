/// B token sequences of one length T, padded, with what the loss counts.
/// Every array is [B, T] row-major.
public struct TokenBatch: Sendable, Equatable {
    /// B
    public var batchSize: Int
    /// T
    public var length: Int
    /// Token ids [B, T].
    public var tokens: [Int32]
    /// [B, T]: 1 = real token, 0 = padding (never attended to). nil = no padding.
    public var attentionMask: [UInt8]?
    /// RoPE positions [B, T].
    public var positions: [Int32]
    /// [B, T]: which sequence of its row each token belongs to, for rows that
    /// pack several sequences end to end (each sequence's tokens contiguous,
    /// 0 = padding). A token attends only to earlier tokens with its own id,
    /// so each sequence is computed as if it were alone (give positions that
    /// restart at 0 with each sequence). nil = one sequence per row.
    public var sequenceIDs: [Int32]?
    /// [B, T]: the id that the logits at (b, t) should predict; negative
    /// (−100) = not counted in the loss. nil = forward only, no loss.
    public var targets: [Int32]?

    /// A batch from its arrays; positions default to 0..<T in every row.
    /// The model checks sizes and ranges when it runs the batch.
    public init(tokens: [Int32], batchSize: Int, length: Int, attentionMask: [UInt8]? = nil,
                positions: [Int32]? = nil, targets: [Int32]? = nil, sequenceIDs: [Int32]? = nil) {
        self.tokens = tokens
        self.batchSize = batchSize
        self.length = length
        self.attentionMask = attentionMask
        self.positions = positions ?? (0..<batchSize).flatMap { _ in (0..<Int32(length)).map { $0 } }
        self.targets = targets
        self.sequenceIDs = sequenceIDs
    }

    public enum Padding: Sendable { case right, left }

    /// Pads sequences to the longest one. Real tokens get positions 0, 1, …
    /// whichever side the padding is on (as transformers' generate does), and,
    /// with `nextTokenTargets`, each real token but the last predicts the next
    /// one, the convention of `labels = input_ids` in transformers.
    public init(sequences: [[Int32]], padding: Padding = .right, padToken: Int32 = 0, nextTokenTargets: Bool = true) {
        let t = sequences.map(\.count).max() ?? 0
        var tokens = [Int32](repeating: padToken, count: sequences.count * t)
        var mask = [UInt8](repeating: 0, count: sequences.count * t)
        var positions = [Int32](repeating: 0, count: sequences.count * t)
        var targets = [Int32](repeating: -100, count: sequences.count * t)
        for (b, sequence) in sequences.enumerated() {
            let start = b * t + (padding == .left ? t - sequence.count : 0)
            for (i, id) in sequence.enumerated() {
                tokens[start + i] = id
                mask[start + i] = 1
                positions[start + i] = Int32(i)
                if i + 1 < sequence.count { targets[start + i] = sequence[i + 1] }
            }
        }
        let padded = sequences.contains { $0.count != t }
        self.init(tokens: tokens, batchSize: sequences.count, length: t, attentionMask: padded ? mask : nil,
                  positions: positions, targets: nextTokenTargets ? targets : nil)
    }

    /// Targets from transformers-style labels [B, T] (−100 = ignore): the
    /// logits at t predict labels[t + 1], and the last position predicts nothing.
    public static func targets(fromLabels labels: [Int32], batchSize: Int, length: Int) -> [Int32] {
        var targets = [Int32](repeating: -100, count: batchSize * length)
        for b in 0..<batchSize {
            for t in 0..<max(0, length - 1) { targets[b * length + t] = labels[b * length + t + 1] }
        }
        return targets
    }
}
