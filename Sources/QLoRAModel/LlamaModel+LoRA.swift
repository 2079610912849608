import Foundation
import QLoRAStorage
import QLoRATraining

extension LlamaModel {
    /// Attaches new LoRA adapters to every projection the configuration
    /// targets, initialized as PEFT does (B = 0, A as the configuration's
    /// `initialization` says), replacing any adapters attached before.
    @discardableResult
    public func attachLoRA<G: RandomNumberGenerator>(_ configuration: LoRAConfiguration,
                                                     using generator: inout G) throws -> TrainableParameters {
        guard configuration.rank > 0 else { throw ModelError.invalidAdapter(nil, reason: "LoRA rank \(configuration.rank) is not positive") }
        guard (0..<1).contains(configuration.dropout) else {
            throw ModelError.invalidAdapter(nil, reason: "LoRA dropout \(configuration.dropout) is outside [0, 1)")
        }
        if let layers = configuration.layers, let bad = layers.first(where: { !(0..<self.layers.count).contains($0) }) {
            throw ModelError.invalidAdapter(nil, reason: "layer \(bad) does not exist (the model has layers 0...\(self.layers.count - 1))")
        }
        let targets = projections.filter { configuration.targets($0.name) }
        guard !targets.isEmpty else {
            throw ModelError.invalidAdapter(nil, reason: "target modules \(configuration.targetModules) match no projection of this model")
        }
        let (parameters, adapters) = attachLoRA(configuration, to: targets)
        for adapter in adapters { adapter.initialize(configuration.initialization, using: &generator) }
        return parameters
    }

    /// Loads a PEFT LoRA adapter folder (adapter_config.json and
    /// adapter_model.safetensors with keys
    /// "base_model.model.<module>.lora_A.weight" / ".lora_B.weight", read by
    /// `PEFTAdapter`) and attaches it, replacing any adapters attached before.
    /// The modules come from the file's keys; lora_dropout and
    /// layers_to_transform are kept in the configuration, for training on.
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
        guard let parameters = trainableParameters else {
            throw ModelError.invalidAdapter(nil, reason: "no LoRA adapters are attached")
        }
        let config = try loraConfigurationJSON(baseModel: baseModel)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var writer = SafetensorsWriter(metadata: ["format": "pt"])
        for entry in parameters.entries {
            try writer.add("base_model.model." + entry.name, shape: entry.shape, floats: Array(parameters.values(of: entry)))
        }
        try writer.write(to: directory.appendingPathComponent("adapter_model.safetensors"))
        let out = try AtomicFileWriter(destination: directory.appendingPathComponent("adapter_config.json"))
        try out.write(config)
        try out.commit()
    }

    /// The adapter_config.json that `saveLoRA` writes for the attached adapters.
    public func loraConfigurationJSON(baseModel: String? = nil) throws -> Data {
        guard let configuration = loraConfiguration else {
            throw ModelError.invalidAdapter(nil, reason: "no LoRA adapters are attached")
        }
        let json: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": configuration.rank, "lora_alpha": configuration.alpha,
            "target_modules": configuration.targetModules, "use_rslora": configuration.useRSLoRA,
            "lora_dropout": configuration.dropout, "layers_to_transform": configuration.layers ?? NSNull(),
            "bias": "none", "fan_in_fan_out": false, "use_dora": false, "inference_mode": true,
            "init_lora_weights": configuration.initialization == .gaussian ? "gaussian" : true as Any,
            "base_model_name_or_path": baseModel ?? NSNull(), "modules_to_save": NSNull(),
        ]
        return try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])
    }

    /// Turns LoRA dropout on for the following forward passes, every adapter
    /// drawing its mask from its own stream of `seed` (`Xoshiro256(seed:stream:)`,
    /// stream = the adapter's index in module order), or off with nil
    /// (evaluation and generation). Adapters configured without dropout ignore it.
    public func setLoRADropout(seed: UInt64?) {
        for (i, adapter) in projections.compactMap({ $0.adapter as? LoRAAdapter }).enumerated() {
            adapter.dropoutGenerator = seed.map { Xoshiro256(seed: $0, stream: UInt64(i)) }
        }
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
        let scratch = LoRAScratch()
        let adapters = targets.map { p in
            let names = LoRAConfiguration.tensorNames(module: p.name)
            let adapter = LoRAAdapter(parameters: parameters, a: parameters.entry(names.a)!, b: parameters.entry(names.b)!,
                                      scaling: configuration.scaling, dropout: configuration.dropout, scratch: scratch)
            p.adapter = adapter
            return adapter
        }
        trainableParameters = parameters
        loraConfiguration = configuration
        return (parameters, adapters)
    }
}
