// The state a training run needs to continue exactly where it stopped.
//
// A checkpoint folder holds:
//   adapter_model.safetensors   the trainable tensors, F32, named as in the layout
//                               (PEFT names for LoRA, so the file is also a usable adapter)
//   optimizer.safetensors       AdamW's moments over the flat buffer: exp_avg [P], exp_avg_sq [P]
//   <extra files>               whatever the trainer adds (adapter_config.json)
//   trainer_state.json          written last: format and version, step, the parameter
//                               layout, AdamW's step, settings and groups, the random
//                               state, the data cursor, the run's configuration, the thread count
// CheckpointStore writes the folder atomically and finds the newest one.

import Foundation
import QLoRAStorage

/// Everything saved at a checkpoint; `Configuration` is the trainer's settings type.
public struct TrainingCheckpoint<Configuration: Codable & Sendable>: Sendable {
    /// Optimizer steps completed.
    public var step: Int
    public var layout: ParameterLayout
    /// The flat trainable buffer, `layout.count` values.
    public var parameters: [Float]
    public var optimizer: AdamW
    /// The run's generator (dropout), as it is after `step`.
    public var random: Xoshiro256
    public var dataCursor: DataCursor
    public var configuration: Configuration
    /// `__metadata__` of adapter_model.safetensors (PEFT writes {"format": "pt"}).
    public var adapterMetadata: [String: String]
    /// More files to store in the folder, by name (no slashes).
    public var extraFiles: [String: Data]
    /// Threads the products ran on: the sums, and so the trajectory's last
    /// bits, depend on it. nil in checkpoints that predate it.
    public var threads: Int?

    public init(step: Int, layout: ParameterLayout, parameters: [Float], optimizer: AdamW, random: Xoshiro256,
                dataCursor: DataCursor, configuration: Configuration, adapterMetadata: [String: String] = ["format": "pt"],
                extraFiles: [String: Data] = [:], threads: Int? = nil) {
        self.step = step
        self.layout = layout
        self.parameters = parameters
        self.optimizer = optimizer
        self.random = random
        self.dataCursor = dataCursor
        self.configuration = configuration
        self.adapterMetadata = adapterMetadata
        self.extraFiles = extraFiles
        self.threads = threads
    }
}

/// trainer_state.json.
struct TrainerState<Configuration: Codable>: Codable {
    static var format: String { "qlorakit-training-state" }
    static var version: Int { 1 }

    struct Tensor: Codable {
        var name: String
        var shape: [Int]
    }

    struct Optimizer: Codable {
        var step: Int
        var hyperparameters: AdamW.Hyperparameters
        var groups: [AdamW.ParameterGroup]
    }

    var format: String
    var version: Int
    var step: Int
    var parameters: [Tensor]
    var optimizer: Optimizer
    var random: Xoshiro256
    var dataCursor: DataCursor
    var configuration: Configuration
    var extraFiles: [String]
    var threads: Int?

    enum CodingKeys: String, CodingKey {
        case format, version, step, parameters, optimizer, random, configuration, threads
        case dataCursor = "data_cursor", extraFiles = "extra_files"
    }
}
