// AdamW over one flat fp32 parameter buffer, with PyTorch's semantics.
//
// One update, as torch.optim.AdamW (non-amsgrad, single-tensor path) does it,
// for step t = 1, 2, ... and learning rate lr:
//   p ← p · (1 − lr·wd)                        decoupled weight decay, before the moments
//   m ← m + (1 − β1)·(g − m)                   torch's lerp form of β1·m + (1 − β1)·g
//   v ← v·β2 + (1 − β2)·g²
//   p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)
// ε is added after the square root of the bias-corrected v. Scalars (lr, the bias
// corrections) are computed in Double as Python does and rounded to Float when
// applied, as PyTorch does for a float32 tensor; element arithmetic is Float.
// Parameter groups differ only in weight decay (norms and biases usually get none).
//
// See Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019).

import Foundation

/// AdamW state for a flat buffer: the two moments and the step count.
public struct AdamW: Sendable, Equatable {
    /// Settings shared by all groups. Defaults are torch.optim.AdamW's.
    public struct Hyperparameters: Codable, Hashable, Sendable {
        /// Decay of the first moment (torch `betas[0]`).
        public var beta1: Double
        /// Decay of the second moment (torch `betas[1]`).
        public var beta2: Double
        /// Added to the bias-corrected √v.
        public var epsilon: Double

        public init(beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8) {
            self.beta1 = beta1
            self.beta2 = beta2
            self.epsilon = epsilon
        }
    }

    /// Parameters that share a weight decay (torch's param_groups).
    public struct ParameterGroup: Codable, Hashable, Sendable {
        public var name: String
        /// Flat element ranges of the group.
        public var ranges: [Range<Int>]
        /// Decoupled weight decay (torch's default for AdamW is 0.01).
        public var weightDecay: Double

        public init(name: String, ranges: [Range<Int>], weightDecay: Double) {
            self.name = name
            self.ranges = ranges
            self.weightDecay = weightDecay
        }

        enum CodingKeys: String, CodingKey {
            case name, ranges
            case weightDecay = "weight_decay"
        }
    }

    public let hyperparameters: Hyperparameters
    /// Groups that together cover every element exactly once.
    public let groups: [ParameterGroup]
    /// Updates applied so far (torch's per-parameter `step`, shared here).
    public private(set) var step: Int
    /// m, torch's `exp_avg`.
    public private(set) var firstMoment: [Float]
    /// v, torch's `exp_avg_sq`.
    public private(set) var secondMoment: [Float]

    public var parameterCount: Int { firstMoment.count }

    /// Fresh state (zero moments, step 0) for `parameterCount` parameters.
    /// - Parameter groups: default: one group "default" with weight decay 0.01 over everything.
    /// - Throws: `AdamWError` when the groups do not cover the buffer exactly once or a setting is out of range.
    public init(parameterCount: Int, hyperparameters: Hyperparameters = .init(), groups: [ParameterGroup]? = nil) throws {
        let groups = groups ?? [ParameterGroup(name: "default", ranges: [0..<parameterCount], weightDecay: 0.01)]
        try self.init(hyperparameters: hyperparameters, groups: groups, step: 0,
                      firstMoment: [Float](repeating: 0, count: parameterCount),
                      secondMoment: [Float](repeating: 0, count: parameterCount))
    }

    /// Restores saved state (a training checkpoint).
    /// - Throws: `AdamWError` when the pieces do not fit together.
    public init(hyperparameters: Hyperparameters, groups: [ParameterGroup], step: Int,
                firstMoment: [Float], secondMoment: [Float]) throws {
        guard firstMoment.count == secondMoment.count else {
            throw AdamWError.momentSizeMismatch(first: firstMoment.count, second: secondMoment.count)
        }
        guard step >= 0 else { throw AdamWError.invalidSetting("step", Double(step)) }
        for (name, value, range) in [("beta1", hyperparameters.beta1, 0.0..<1.0), ("beta2", hyperparameters.beta2, 0.0..<1.0),
                                     ("epsilon", hyperparameters.epsilon, 0.0..<Double.infinity)]
        where !range.contains(value) {
            throw AdamWError.invalidSetting(name, value)
        }
        try Self.checkCoverage(groups, count: firstMoment.count)
        self.hyperparameters = hyperparameters
        self.groups = groups
        self.step = step
        self.firstMoment = firstMoment
        self.secondMoment = secondMoment
    }

    /// Two groups over `layout`: tensors for which `exempt` is true get no weight decay
    /// (the usual choice is biases and norm weights), the others `weightDecay`.
    /// Empty groups are left out.
    public static func groups(for layout: ParameterLayout, weightDecay: Double,
                              exempt: (String) -> Bool) -> [ParameterGroup] {
        let decay = layout.ranges { !exempt($0) }, noDecay = layout.ranges(where: exempt)
        var out: [ParameterGroup] = []
        if !decay.isEmpty { out.append(ParameterGroup(name: "decay", ranges: decay, weightDecay: weightDecay)) }
        if !noDecay.isEmpty { out.append(ParameterGroup(name: "no_decay", ranges: noDecay, weightDecay: 0)) }
        return out
    }

    /// Applies one update with learning rate `learningRate` (the scheduled value for this step).
    /// Both buffers must hold `parameterCount` elements.
    public mutating func update(parameters: UnsafeMutableBufferPointer<Float>, gradients: UnsafeBufferPointer<Float>,
                                learningRate: Double) {
        precondition(parameters.count == parameterCount && gradients.count == parameterCount,
                     "[AdamW.update] buffers hold \(parameters.count) parameters and \(gradients.count) gradients, expected \(parameterCount)")
        step += 1
        let h = hyperparameters
        let t = Double(step)
        let stepSize = Float(-(learningRate / (1 - pow(h.beta1, t))))
        let correction2 = Float((1 - pow(h.beta2, t)).squareRoot())
        let w1 = Float(1 - h.beta1), b2 = Float(h.beta2), w2 = Float(1 - h.beta2), eps = Float(h.epsilon)
        let p = parameters.baseAddress, g = gradients.baseAddress
        firstMoment.withUnsafeMutableBufferPointer { mBuffer in
            secondMoment.withUnsafeMutableBufferPointer { vBuffer in
                guard let p, let g, let m = mBuffer.baseAddress, let v = vBuffer.baseAddress else { return }
                for group in groups {
                    let decay = Float(1 - learningRate * group.weightDecay)
                    for range in group.ranges {
                        for i in range {
                            p[i] *= decay
                            m[i] += w1 * (g[i] - m[i])
                            v[i] = v[i] * b2 + w2 * g[i] * g[i]
                            p[i] += stepSize * m[i] / (v[i].squareRoot() / correction2 + eps)
                        }
                    }
                }
            }
        }
    }

    /// `update` on arrays.
    public mutating func update(parameters: inout [Float], gradients: [Float], learningRate: Double) {
        parameters.withUnsafeMutableBufferPointer { p in
            gradients.withUnsafeBufferPointer { g in update(parameters: p, gradients: g, learningRate: learningRate) }
        }
    }

    private static func checkCoverage(_ groups: [ParameterGroup], count: Int) throws {
        var covered = [Bool](repeating: false, count: count)
        for group in groups {
            guard (0...1).contains(group.weightDecay) else { throw AdamWError.invalidSetting("weight decay of \(group.name)", group.weightDecay) }
            for range in group.ranges {
                guard range.lowerBound >= 0, range.upperBound <= count else {
                    throw AdamWError.groupOutOfBounds(group: group.name, range: range, count: count)
                }
                for i in range {
                    if covered[i] { throw AdamWError.groupsOverlap(index: i) }
                    covered[i] = true
                }
            }
        }
        if let i = covered.firstIndex(of: false) { throw AdamWError.uncovered(index: i) }
    }
}

/// AdamW settings or saved state that do not fit together.
public enum AdamWError: Error, LocalizedError, Equatable {
    case momentSizeMismatch(first: Int, second: Int)
    /// A setting out of its range (betas in [0, 1), ε ≥ 0, weight decay in [0, 1], step ≥ 0).
    case invalidSetting(String, Double)
    case groupOutOfBounds(group: String, range: Range<Int>, count: Int)
    /// Flat element `index` belongs to two groups.
    case groupsOverlap(index: Int)
    /// Flat element `index` belongs to no group, so it would never be trained.
    case uncovered(index: Int)

    public var errorDescription: String? {
        switch self {
        case let .momentSizeMismatch(first, second): "AdamW: first moment holds \(first) values but second moment \(second)"
        case let .invalidSetting(name, value): "AdamW: \(name) = \(value) is out of range"
        case let .groupOutOfBounds(group, range, count): "AdamW: group \"\(group)\" range \(range) is outside the \(count) parameters"
        case let .groupsOverlap(index): "AdamW: parameter \(index) belongs to two groups"
        case let .uncovered(index): "AdamW: parameter \(index) belongs to no group and would never be updated"
        }
    }
}
