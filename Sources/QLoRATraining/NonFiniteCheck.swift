// Stopping training at the first NaN or ±Inf, with an error that says where.
//
// A non-finite loss or gradient poisons AdamW's moments for good (v stays NaN), so
// the trainer checks the loss after each forward and the gradients before each
// update, and stops with the step and the tensor named rather than saving a
// checkpoint full of NaN.

import Foundation

public enum NonFiniteCheck {
    /// Flat index of the first NaN or ±Inf in `values`, nil when all are finite.
    public static func firstNonFinite(in values: UnsafeBufferPointer<Float>) -> Int? {
        for i in values.indices where !values[i].isFinite { return i }
        return nil
    }

    /// Throws `NonFiniteError.loss` when `loss` is NaN or ±Inf.
    public static func check(loss: Float, step: Int) throws {
        guard loss.isFinite else { throw NonFiniteError.loss(step: step, value: loss) }
    }

    /// Throws `NonFiniteError.gradient` naming the tensor of `layout` and the element
    /// within it that holds the first NaN or ±Inf of the flat `gradients`.
    public static func check(gradients: UnsafeBufferPointer<Float>, layout: ParameterLayout, step: Int) throws {
        guard let i = firstNonFinite(in: gradients) else { return }
        let entry = layout.entry(containing: i)
        throw NonFiniteError.gradient(step: step, tensor: entry?.name ?? "?", index: i - (entry?.range.lowerBound ?? 0),
                                      value: gradients[i])
    }

    /// `check(gradients:layout:step:)` on an array.
    public static func check(gradients: [Float], layout: ParameterLayout, step: Int) throws {
        try gradients.withUnsafeBufferPointer { try check(gradients: $0, layout: layout, step: step) }
    }
}

/// Training produced a NaN or ±Inf.
public enum NonFiniteError: Error, LocalizedError, Equatable {
    case loss(step: Int, value: Float)
    /// `index` is the flat row-major element within `tensor`.
    case gradient(step: Int, tensor: String, index: Int, value: Float)

    public var errorDescription: String? {
        let hint = "HINT: lower the learning rate, enable gradient clipping, or check the data; resume from the last checkpoint"
        switch self {
        case let .loss(step, value):
            return "training diverged: the loss is \(value) at step \(step). \(hint)"
        case let .gradient(step, tensor, index, value):
            return "training diverged: the gradient of \(tensor) holds \(value) at element \(index) at step \(step). \(hint)"
        }
    }
}
