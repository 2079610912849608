/// Token embedding lookup, x[t] = E[id[t]], with no scaling (Llama). The
/// table is frozen and nothing upstream of it trains, so there is no
/// backward. The table is an array so a tied lm_head can share it.
public struct Embedding: Sendable {
    public let vocabularySize: Int
    public let dimension: Int
    /// E [V, C]
    public let table: [Float]

    public init(table: [Float], vocabularySize: Int, dimension: Int) {
        precondition(table.count == vocabularySize * dimension, "[Embedding] table is not \(vocabularySize)×\(dimension)")
        self.table = table
        self.vocabularySize = vocabularySize
        self.dimension = dimension
    }

    /// x [n, C] = E[ids]; ids [n] must be in 0..<V (the model checks them first).
    public func forward(_ ids: UnsafePointer<Int32>, count n: Int, into x: UnsafeMutablePointer<Float>) {
        let c = dimension
        table.withUnsafeBufferPointer { e in
            for t in 0..<n {
                (x + t * c).update(from: e.baseAddress! + Int(ids[t]) * c, count: c)
            }
        }
    }
}
