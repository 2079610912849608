import Foundation
import QLoRATraining

/// Why a training run cannot start, continue or finish.
public enum TrainerError: Error, LocalizedError, Equatable {
    /// A setting out of range: its name, the value given and the rule.
    case invalidSetting(String, String, String)
    /// The model has no trainable adapters attached.
    case noAdapters
    /// The output folder holds another run's files and resuming was not asked for.
    case outputInUse(URL, [String])
    /// Resuming was asked for but the folder has no checkpoint.
    case nothingToResume(URL)
    /// The checkpoint cannot continue this run.
    case checkpointMismatch(URL, String)
    /// A NaN or ±Inf stopped training; the newest checkpoint on disk is from before it.
    case diverged(NonFiniteError, lastCheckpoint: URL?)

    public var errorDescription: String? {
        switch self {
        case let .invalidSetting(name, value, rule):
            "\(name) \(value) \(rule)"
        case .noAdapters:
            "the model has no adapters to train (attach LoRA first)"
        case let .outputInUse(url, names):
            "\(url.path) already holds a training run (\(names.joined(separator: ", "))); pass --resume to continue it, or choose another --output"
        case let .nothingToResume(url):
            "\(url.path): there is no checkpoint to resume from (checkpoints are written to its checkpoints/ folder)"
        case let .checkpointMismatch(url, reason):
            "\(url.path): cannot resume from this checkpoint: \(reason)"
        case let .diverged(error, last):
            (error.errorDescription ?? "training diverged") + "\n"
                + (last.map { "The last good checkpoint is \($0.path); nothing after it was saved." }
                    ?? "No checkpoint had been saved yet, so nothing was written.")
        }
    }
}
