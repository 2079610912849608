import Foundation
import QLoRAStorage

extension LlamaModel {
    /// Attaches new LoRA adapters to every projection the configuration
    /// targets, initialized as PEFT does (A uniform ±1/√in, B = 0), replacing
    /// any adapters attached before.
    @discardableResult
    public func attachLoRA<G: RandomNumberGenerator>(_ configuration: LoRAConfiguration,
                                                     using generator: inout G) throws -> TrainableParameters {
        guard configuration.rank > 0 else { throw ModelError.invalidAdapter(nil, reason: "LoRA rank \(configuration.rank) is not positive") }
        let targets = projections.filter { configuration.targets($0.name) }
        guard !targets.isEmpty else {
            throw ModelError.invalidAdapter(nil, reason: "target modules \(configuration.targetModules) match no projection of this model")
        }
        let (parameters, adapters) = attachLoRA(configuration, to: targets)
        for adapter in adapters { adapter.initialize(using: &generator) }
        return parameters
    }

    /// Loads a PEFT LoRA adapter folder (adapter_config.json and
    /// adapter_model.safetensors with keys
    /// "base_model.model.<module>.lora_A.weight" / ".lora_B.weight", read by
    /// `PEFTAdapter`) and attaches it, replacing any adapters attached before.
    /// The modules come from the file's keys. lora_dropout only matters in
    /// training and is not read.
    @discardableResult
    public func loadLoRA(directory: URL) throws -> LoRAConfiguration {
        let adapter = try PEFTAdapter(directory: directory)
        let file = adapter.weights
        let configuration = adapter.configuration
        let byName = Dictionary(uniqueKeysWithValues: projections.map { ($0.name, $0) })
        let targets = try adapter.modules.map { module in
            guard let p = byName[module] else {
                throw ModelError.invalidAdapter(file.url, reason: "module \"\(module)\" is not a projection of this model")
            }
            return p
        }
        // Read and check everything before replacing the current adapters.
        var values: [(name: String, data: [Float])] = []
        for p in targets {
            let names = LoRAConfiguration.tensorNames(module: p.name)
            let keys = adapter.keys(module: p.name)
            for (name, key, shape) in [(names.a, keys.a, [configuration.rank, p.inFeatures]), (names.b, keys.b, [p.outFeatures, configuration.rank])] {
                let info = try file.info(key)
                guard info.shape == shape else { throw ModelError.shapeMismatch(file.url, tensor: key, expected: shape, found: info.shape) }
                values.append((name, try file.floats(key)))
            }
        }
        let (parameters, _) = attachLoRA(configuration, to: targets)
        for (name, data) in values {
            _ = parameters.values(of: parameters.entry(name)!).update(fromContentsOf: data)
        }
        return configuration
    }

    /// Writes the attached LoRA adapters as a PEFT adapter folder
    /// (adapter_config.json, adapter_model.safetensors) that `loadLoRA` and
    /// peft's `PeftModel.from_pretrained` read. Each file is replaced whole.
    /// - Parameter baseModel: recorded as base_model_name_or_path.
    public func saveLoRA(directory: URL, baseModel: String? = nil) throws {
        guard let configuration = loraConfiguration, let parameters = trainableParameters else {
            throw ModelError.invalidAdapter(nil, reason: "no LoRA adapters are attached")
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var writer = SafetensorsWriter(metadata: ["format": "pt"])
        for entry in parameters.entries {
            try writer.add("base_model.model." + entry.name, shape: entry.shape, floats: Array(parameters.values(of: entry)))
        }
        try writer.write(to: directory.appendingPathComponent("adapter_model.safetensors"))
        let json: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": configuration.rank, "lora_alpha": configuration.alpha,
            "target_modules": configuration.targetModules, "use_rslora": configuration.useRSLoRA, "lora_dropout": 0.0,
            "bias": "none", "fan_in_fan_out": false, "use_dora": false, "inference_mode": true, "init_lora_weights": true,
            "base_model_name_or_path": baseModel ?? NSNull(), "modules_to_save": NSNull(),
        ]
        let out = try AtomicFileWriter(destination: directory.appendingPathComponent("adapter_config.json"))
        try out.write(try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys]))
        try out.commit()
    }

    /// Removes every adapter; the model is the frozen base again.
    public func detachAdapters() {
        for p in projections { p.adapter = nil }
        trainableParameters = nil
        loraConfiguration = nil
    }

    private func attachLoRA(_ configuration: LoRAConfiguration, to targets: [Projection]) -> (TrainableParameters, [LoRAAdapter]) {
        let rank = configuration.rank
        let tensors = targets.flatMap { p -> [(name: String, shape: [Int])] in
            let names = LoRAConfiguration.tensorNames(module: p.name)
            return [(names.a, [rank, p.inFeatures]), (names.b, [p.outFeatures, rank])]
        }
        let parameters = TrainableParameters(tensors: tensors)
        detachAdapters()
        let adapters = targets.map { p in
            let names = LoRAConfiguration.tensorNames(module: p.name)
            let adapter = LoRAAdapter(parameters: parameters, a: parameters.entry(names.a)!, b: parameters.entry(names.b)!,
                                      scaling: configuration.scaling)
            p.adapter = adapter
            return adapter
        }
        trainableParameters = parameters
        loraConfiguration = configuration
        return (parameters, adapters)
    }
}
