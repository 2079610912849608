import ArgumentParser
import Foundation
import QLoRAKit

/// --model and --adapter, shared by the commands that run a model.
struct ModelOptions: ParsableArguments {
    @Option(help: "A Hugging Face model folder or a packed checkpoint (from `qlora quantize`).")
    var model: String

    @Option(help: "A PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors) to apply.")
    var adapter: String?

    /// The model with the adapter attached.
    func load() throws -> LoadedModel {
        let loaded = try LoadedModel(contentsOf: URL(fileURLWithPath: model))
        if let adapter {
            do {
                try loaded.model.loadLoRA(directory: URL(fileURLWithPath: adapter))
            } catch let error as ModelError {
                throw ValidationFailure("the adapter \(adapter) does not fit the model \(model) (made for another base?): \(error.localizedDescription)")
            }
        }
        return loaded
    }
}
