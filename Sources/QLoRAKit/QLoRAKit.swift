import Foundation
@_exported import QLoRAStorage
@_exported import QLoRACompute
@_exported import QLoRATokenizer
@_exported import QLoRAModel
@_exported import QLoRATraining
@_exported import QLoRAPlot
@_exported import QLoRATrainer

/// The model that ships inside the package: Andrej Karpathy's stories260K
/// (MIT licence, llama2.c), converted to Hugging Face format. Its folder also
/// holds a small fine-tuning set (train.jsonl, valid.jsonl).
public enum EmbeddedModel {
    /// The Hugging Face folder of the embedded model.
    public static var directory: URL {
        Bundle.module.resourceURL!.appendingPathComponent("stories260K", isDirectory: true)
    }
}
