// Batches of examples, in a seeded order that a checkpoint can resume exactly.
//
// Each epoch visits every example once, in the order `Xoshiro256(seed, stream: epoch)`
// permutes them to (or in file order without shuffling). The cursor is just
// (epoch, examples of this epoch already used), so a resumed run rebuilds the same
// order and continues at the same example; a fingerprint of the examples and the
// seed catches a resume with different data.
//
// Two layouts, both [rows, columns] row-major:
//   padded  one example per row, rows padded to the longest in the batch;
//   packed  whole examples laid end to end in rows of maxSequenceLength (none is
//           split across rows), so short examples waste no compute. Attention must
//           stay inside a sequence: `sequenceIDs` numbers the sequences of a row from 1
//           (0 is padding) and `positionIDs` restart at 0 for each, so a model that
//           honours them computes exactly what it would for the examples one by one.
// `targets` are already shifted: targets[t] is the label of token t + 1 of the same
// sequence, or -100 at a sequence's last token, in padding, and where no loss is wanted.

import Foundation

/// How examples are laid out in a batch.
public enum BatchingMode: String, CaseIterable, Hashable, Sendable, Codable {
    case padded, packed
}

/// Where a loader is in its data; saved in training checkpoints.
public struct DataCursor: Hashable, Sendable, Codable {
    public var epoch: Int
    /// Examples of this epoch's order already handed out.
    public var position: Int
    /// Identifies the examples and the seed the order came from.
    public var fingerprint: String

    public init(epoch: Int, position: Int, fingerprint: String) {
        self.epoch = epoch
        self.position = position
        self.fingerprint = fingerprint
    }
}

/// One batch, [rows, columns] row-major.
public struct TrainingBatch: Hashable, Sendable {
    public let rows: Int
    public let columns: Int
    /// Token ids; padding holds the loader's pad id.
    public var inputIDs: [Int32]
    /// Label to predict at each position (the next token of the same sequence), or -100.
    public var targets: [Int32]
    /// Position within its sequence (RoPE), 0 in padding.
    public var positionIDs: [Int32]
    /// 1, 2, ... for the sequences of a row, 0 for padding; attend only within equal ids.
    public var sequenceIDs: [Int32]
    /// Examples in the batch.
    public let exampleCount: Int

    /// A batch from its arrays (a loader builds them; tests and benchmarks may too).
    public init(rows: Int, columns: Int, inputIDs: [Int32], targets: [Int32], positionIDs: [Int32], sequenceIDs: [Int32],
                exampleCount: Int) {
        precondition([inputIDs.count, targets.count, positionIDs.count, sequenceIDs.count].allSatisfy { $0 == rows * columns },
                     "[TrainingBatch] every array must hold rows × columns = \(rows * columns) values")
        self.rows = rows
        self.columns = columns
        self.inputIDs = inputIDs
        self.targets = targets
        self.positionIDs = positionIDs
        self.sequenceIDs = sequenceIDs
        self.exampleCount = exampleCount
    }

    /// 1 for real tokens, 0 for padding (Hugging Face's attention_mask).
    public var attentionMask: [UInt8] { sequenceIDs.map { $0 == 0 ? 0 : 1 } }
    /// Positions with a loss.
    public var targetCount: Int { targets.reduce(0) { $0 + ($1 == TrainingExample.ignoreIndex ? 0 : 1) } }
    /// Non-padding tokens (what tokens/s counts).
    public var tokenCount: Int { sequenceIDs.reduce(0) { $0 + ($1 == 0 ? 0 : 1) } }
}

/// Hands out batches of a prepared dataset, epoch after epoch.
public struct BatchLoader: Sendable {
    public let examples: [TrainingExample]
    public let batchSize: Int
    public let mode: BatchingMode
    public let maxSequenceLength: Int
    public let padTokenID: Int32
    public let seed: UInt64
    public let shuffle: Bool
    public private(set) var cursor: DataCursor
    private var order: [Int]

    /// - Parameters:
    ///   - batchSize: examples per batch (padded) or rows per batch (packed).
    ///   - maxSequenceLength: the row length for packing; examples longer than it are refused
    ///     (ExampleBuilder truncates to it).
    /// - Throws: `BatchLoaderError` for no examples, a size below 1 or an over-long example.
    public init(examples: [TrainingExample], batchSize: Int, mode: BatchingMode = .padded, maxSequenceLength: Int,
                padTokenID: Int32, seed: UInt64, shuffle: Bool = true) throws {
        guard !examples.isEmpty else { throw BatchLoaderError.noExamples }
        guard batchSize >= 1 else { throw BatchLoaderError.invalidSize("batch size", batchSize) }
        guard maxSequenceLength >= 1 else { throw BatchLoaderError.invalidSize("maximum sequence length", maxSequenceLength) }
        if let i = examples.firstIndex(where: { $0.inputIDs.count > maxSequenceLength || $0.inputIDs.isEmpty }) {
            throw BatchLoaderError.exampleLength(index: i, length: examples[i].inputIDs.count, maxSequenceLength: maxSequenceLength)
        }
        self.examples = examples
        self.batchSize = batchSize
        self.mode = mode
        self.maxSequenceLength = maxSequenceLength
        self.padTokenID = padTokenID
        self.seed = seed
        self.shuffle = shuffle
        let fingerprint = Self.fingerprint(examples, seed: seed, shuffle: shuffle)
        cursor = DataCursor(epoch: 0, position: 0, fingerprint: fingerprint)
        order = Self.order(count: examples.count, epoch: 0, seed: seed, shuffle: shuffle)
    }

    /// Continues from a saved cursor.
    /// - Throws: `BatchLoaderError.cursorMismatch` when it belongs to other data or
    ///   another seed, or points past the data.
    public mutating func restore(_ saved: DataCursor) throws {
        guard saved.fingerprint == cursor.fingerprint else {
            throw BatchLoaderError.cursorMismatch("it was saved for different data or a different seed (fingerprint \(saved.fingerprint), now \(cursor.fingerprint))")
        }
        guard saved.epoch >= 0, (0...examples.count).contains(saved.position) else {
            throw BatchLoaderError.cursorMismatch("epoch \(saved.epoch), position \(saved.position) is outside the \(examples.count) examples")
        }
        cursor = saved
        order = Self.order(count: examples.count, epoch: saved.epoch, seed: seed, shuffle: shuffle)
    }

    /// Epochs completed, with the fraction of the current one (for logs).
    public var progress: Double { Double(cursor.epoch) + Double(cursor.position) / Double(examples.count) }

    /// The next batch; after the last batch of an epoch comes the first of the next.
    public mutating func next() -> TrainingBatch {
        if cursor.position == examples.count {
            cursor.epoch += 1
            cursor.position = 0
            order = Self.order(count: examples.count, epoch: cursor.epoch, seed: seed, shuffle: shuffle)
        }
        let (batch, used) = makeBatch(order: order, from: cursor.position)
        cursor.position += used
        return batch
    }

    /// Batches in epoch `epoch` (for a schedule's total step count).
    public func batchCount(epoch: Int) -> Int {
        let order = Self.order(count: examples.count, epoch: epoch, seed: seed, shuffle: shuffle)
        var count = 0, position = 0
        while position < order.count {
            position = rows(order: order, from: position).next
            count += 1
        }
        return count
    }

    /// The batches of one epoch, lazily, leaving this loader's cursor alone (validation).
    public func batches(epoch: Int) -> EpochBatches {
        EpochBatches(loader: self, order: Self.order(count: examples.count, epoch: epoch, seed: seed, shuffle: shuffle))
    }

    /// A lazy sequence of one epoch's batches.
    public struct EpochBatches: Sequence, IteratorProtocol, Sendable {
        fileprivate let loader: BatchLoader
        fileprivate let order: [Int]
        private var position = 0

        fileprivate init(loader: BatchLoader, order: [Int]) {
            self.loader = loader
            self.order = order
        }

        public mutating func next() -> TrainingBatch? {
            guard position < order.count else { return nil }
            let (batch, used) = loader.makeBatch(order: order, from: position)
            position += used
            return batch
        }
    }

    // MARK: - Building batches

    /// The example indices of each row of the batch starting at `order[start]`, and
    /// where the next batch starts.
    private func rows(order: [Int], from start: Int) -> (rows: [[Int]], next: Int) {
        var rows: [[Int]] = []
        var next = start
        switch mode {
        case .padded:
            while rows.count < batchSize, next < order.count {
                rows.append([order[next]])
                next += 1
            }
        case .packed:
            var row: [Int] = [], filled = 0
            while next < order.count {
                let length = examples[order[next]].inputIDs.count
                if filled + length > maxSequenceLength {
                    rows.append(row)
                    row = []
                    filled = 0
                    if rows.count == batchSize { break }
                }
                row.append(order[next])
                filled += length
                next += 1
            }
            if !row.isEmpty { rows.append(row) }
        }
        return (rows, next)
    }

    /// The batch starting at `order[start]` and how many examples it used.
    private func makeBatch(order: [Int], from start: Int) -> (TrainingBatch, Int) {
        let (rows, next) = rows(order: order, from: start)
        let columns = rows.map { $0.reduce(0) { $0 + examples[$1].inputIDs.count } }.max()!
        let n = rows.count * columns
        var ids = [Int32](repeating: padTokenID, count: n)
        var targets = [Int32](repeating: TrainingExample.ignoreIndex, count: n)
        var positions = [Int32](repeating: 0, count: n)
        var sequences = [Int32](repeating: 0, count: n)
        for (r, row) in rows.enumerated() {
            var t = r * columns
            for (s, index) in row.enumerated() {
                let e = examples[index]
                for i in e.inputIDs.indices {
                    ids[t + i] = e.inputIDs[i]
                    if i + 1 < e.labels.count { targets[t + i] = e.labels[i + 1] }
                    positions[t + i] = Int32(i)
                    sequences[t + i] = Int32(s + 1)
                }
                t += e.inputIDs.count
            }
        }
        let batch = TrainingBatch(rows: rows.count, columns: columns, inputIDs: ids, targets: targets,
                                  positionIDs: positions, sequenceIDs: sequences, exampleCount: next - start)
        return (batch, next - start)
    }

    private static func order(count: Int, epoch: Int, seed: UInt64, shuffle: Bool) -> [Int] {
        guard shuffle else { return Array(0..<count) }
        var rng = Xoshiro256(seed: seed, stream: UInt64(epoch))
        return rng.permutation(count: count)
    }

    /// FNV-1a (64 bit) over the seed, the shuffle flag and every id and label.
    private static func fingerprint(_ examples: [TrainingExample], seed: UInt64, shuffle: Bool) -> String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        func mix(_ v: UInt64) {
            var v = v
            for _ in 0..<8 {
                h = (h ^ (v & 0xFF)) &* 0x0000_0100_0000_01B3
                v >>= 8
            }
        }
        mix(seed)
        mix(shuffle ? 1 : 0)
        mix(UInt64(examples.count))
        for e in examples {
            mix(UInt64(e.inputIDs.count))
            for id in e.inputIDs { mix(UInt64(UInt32(bitPattern: id))) }
            for label in e.labels { mix(UInt64(UInt32(bitPattern: label))) }
        }
        return String(h, radix: 16)
    }
}

/// A loader that cannot be built or resumed.
public enum BatchLoaderError: Error, LocalizedError, Equatable {
    case noExamples
    case invalidSize(String, Int)
    case exampleLength(index: Int, length: Int, maxSequenceLength: Int)
    case cursorMismatch(String)

    public var errorDescription: String? {
        switch self {
        case .noExamples: "batch loader: there are no examples"
        case let .invalidSize(name, value): "batch loader: \(name) must be at least 1, got \(value)"
        case let .exampleLength(index, length, max):
            "batch loader: example \(index) has \(length) tokens; examples must have 1 to \(max) (the maximum sequence length)"
        case let .cursorMismatch(reason): "cannot resume the data order: \(reason)"
        }
    }
}
