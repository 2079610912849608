// Learning-rate schedules, equal to transformers' get_*_schedule_with_warmup.
//
// Each gives a multiplier of the peak learning rate for optimizer step s, counted
// from 0 as transformers' LambdaLR does: the first update uses multiplier(0). With
// warm-up W > 0 that first update therefore has learning rate 0, exactly as in the
// Hugging Face Trainer. With total T:
//   warm-up (s < W):  s / max(1, W)
//   constant:         1
//   linear:           max(0, (T − s) / max(1, T − W))
//   cosine:           max(0, ½·(1 + cos(π · 2c · (s − W) / max(1, T − W))))   c = cycles, ½ by default
// Past T the cosine rises again, as transformers' does; training normally stops at T.

import Foundation

/// How the learning rate changes over training.
public enum LearningRateSchedule: Hashable, Sendable, Codable {
    /// The peak rate throughout (get_constant_schedule).
    case constant
    /// Linear warm-up, then constant (get_constant_schedule_with_warmup).
    case constantWithWarmup(warmupSteps: Int)
    /// Linear warm-up, then linear decay to 0 at `totalSteps` (get_linear_schedule_with_warmup).
    case linear(warmupSteps: Int, totalSteps: Int)
    /// Linear warm-up, then cosine decay (get_cosine_schedule_with_warmup); `cycles` 0.5 decays once to 0 at `totalSteps`.
    case cosine(warmupSteps: Int, totalSteps: Int, cycles: Double = 0.5)

    /// Names accepted by `named(_:warmupSteps:totalSteps:)`.
    public static let names = ["constant", "constant-with-warmup", "linear", "cosine"]

    /// The schedule called `name` (one of `names`).
    /// - Throws: `ScheduleError` for an unknown name or negative step counts.
    public static func named(_ name: String, warmupSteps: Int, totalSteps: Int) throws -> Self {
        guard warmupSteps >= 0, totalSteps >= 0 else { throw ScheduleError.negativeSteps(warmup: warmupSteps, total: totalSteps) }
        switch name {
        case "constant": return .constant
        case "constant-with-warmup": return .constantWithWarmup(warmupSteps: warmupSteps)
        case "linear": return .linear(warmupSteps: warmupSteps, totalSteps: totalSteps)
        case "cosine": return .cosine(warmupSteps: warmupSteps, totalSteps: totalSteps)
        default: throw ScheduleError.unknownName(name)
        }
    }

    /// The multiplier of the peak learning rate for step `step` (0 = first update).
    public func multiplier(step: Int) -> Double {
        let s = Double(step)
        func warmup(_ w: Int) -> Double? { step < w ? s / Double(max(1, w)) : nil }
        switch self {
        case .constant:
            return 1
        case let .constantWithWarmup(w):
            return warmup(w) ?? 1
        case let .linear(w, total):
            return warmup(w) ?? max(0, Double(total - step) / Double(max(1, total - w)))
        case let .cosine(w, total, cycles):
            if let r = warmup(w) { return r }
            let progress = Double(step - w) / Double(max(1, total - w))
            return max(0, 0.5 * (1 + cos(Double.pi * cycles * 2 * progress)))
        }
    }

    /// The learning rate for `step` given the peak rate.
    public func learningRate(step: Int, peak: Double) -> Double { peak * multiplier(step: step) }
}

/// A schedule that cannot be built.
public enum ScheduleError: Error, LocalizedError, Equatable {
    case unknownName(String)
    case negativeSteps(warmup: Int, total: Int)

    public var errorDescription: String? {
        switch self {
        case let .unknownName(name):
            "unknown learning-rate schedule \"\(name)\"; choose one of \(LearningRateSchedule.names.joined(separator: ", "))"
        case let .negativeSteps(warmup, total):
            "learning-rate schedule: warm-up (\(warmup)) and total (\(total)) steps must not be negative"
        }
    }
}
