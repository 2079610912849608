// A PEFT LoRA adapter folder opened without a model, so that both attaching it
// to a `LlamaModel` (loadLoRA) and folding it into a checkpoint on disk (merge)
// read it the same way: adapter_config.json checked for features this engine
// does not implement, adapter_model.safetensors keys paired into modules.

import COpenBLAS
import Foundation
import QLoRAStorage

/// A PEFT LoRA adapter folder: adapter_config.json and adapter_model.safetensors
/// with keys "base_model.model.<module>.lora_A.weight" / ".lora_B.weight".
///
/// Opening it reads the configuration and the weight file's header; the weights
/// themselves are read per module. Which modules the adapter covers comes from
/// the file's keys; `target_modules` is checked against them.
///
/// See Also: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models";
/// PEFT's `LoraConfig`.
public struct PEFTAdapter: @unchecked Sendable {
    public static let configFileName = "adapter_config.json"
    public static let weightsFileName = "adapter_model.safetensors"
    /// What PEFT puts before a base module's name in its keys.
    public static let keyPrefix = "base_model.model."

    public let directory: URL
    /// Rank, alpha, rsLoRA, lora_dropout and layers_to_transform from the file;
    /// target modules are the last name components of the modules the weight
    /// file holds, sorted.
    public let configuration: LoRAConfiguration
    public let weights: SafetensorsFile
    /// Base module names ("model.layers.0.mlp.down_proj") in the file's order.
    public let modules: [String]
    /// `target_modules` as written: names matched by suffix, or one regular
    /// expression matched against whole module names; nil when absent.
    private let declaredTargets: DeclaredTargets?
    /// layers_to_transform or layers_pattern: the adapter covers only some layers
    /// of those its target_modules select.
    public let coversSomeLayersOnly: Bool

    private enum DeclaredTargets {
        case names([String])
        case pattern(String, Regex<AnyRegexOutput>)
        /// PEFT's "all-linear": every linear but the output layer.
        case allLinear
    }

    /// Opens the adapter in `directory`.
    /// - Throws: `ModelError.invalidAdapter` naming the folder or file for a missing
    ///   file, an unreadable or unsupported configuration (DoRA, biases, per-module
    ///   ranks, modules_to_save …) or a key that is not a LoRA A/B weight;
    ///   `SafetensorsError` for a malformed weight file.
    public init(directory: URL) throws {
        self.directory = directory
        let manager = FileManager.default
        var isDirectory: ObjCBool = false
        guard manager.fileExists(atPath: directory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ModelError.invalidAdapter(directory, reason: "not an adapter folder (expected \(Self.configFileName) and \(Self.weightsFileName) inside)")
        }
        let configURL = directory.appendingPathComponent(Self.configFileName)
        let weightsURL = directory.appendingPathComponent(Self.weightsFileName)
        guard manager.fileExists(atPath: configURL.path) else {
            throw ModelError.invalidAdapter(directory, reason: "no \(Self.configFileName) in the adapter folder")
        }
        guard manager.fileExists(atPath: weightsURL.path) else {
            let pickle = manager.fileExists(atPath: directory.appendingPathComponent("adapter_model.bin").path)
            throw ModelError.invalidAdapter(directory, reason: pickle
                ? "holds adapter_model.bin (a PyTorch pickle), which is not read; save the adapter with safe_serialization=True"
                : "no \(Self.weightsFileName) in the adapter folder")
        }

        let object: [String: Any]
        do {
            object = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as? [String: Any] ?? [:]
        } catch {
            throw ModelError.invalidAdapter(configURL, reason: "cannot read the adapter configuration (\(error.localizedDescription))")
        }
        func fail(_ reason: String) -> ModelError { ModelError.invalidAdapter(configURL, reason: reason) }
        guard (object["peft_type"] as? String ?? "LORA") == "LORA" else { throw fail("peft_type \(object["peft_type"]!) is not LORA") }
        guard let rank = object["r"] as? Int, rank > 0 else { throw fail("r is missing or not a positive integer") }
        guard let alpha = (object["lora_alpha"] as? NSNumber)?.floatValue else { throw fail("lora_alpha is missing") }
        for flag in ["use_dora", "fan_in_fan_out", "lora_bias"] where object[flag] as? Bool == true {
            throw fail("\(flag) = true is not supported")
        }
        if let bias = object["bias"] as? String, bias != "none" { throw fail("bias \"\(bias)\" is not supported (only \"none\")") }
        // Present, not null and not an empty list or object.
        func isSet(_ key: String) -> Bool {
            switch object[key] {
            case nil, is NSNull: false
            case let list as [Any]: !list.isEmpty
            case let map as [String: Any]: !map.isEmpty
            default: true
            }
        }
        for pattern in ["rank_pattern", "alpha_pattern"] where isSet(pattern) {
            throw fail("per-module \(pattern) is not supported")
        }
        // Whole modules saved beside the adapter (a retrained lm_head, …) replace base
        // weights; LoRA on bare parameters and trainable tokens are other methods.
        for key in ["modules_to_save", "target_parameters", "trainable_token_indices"] where isSet(key) {
            throw fail("\(key) is not supported")
        }
        let useRSLoRA = object["use_rslora"] as? Bool ?? false
        let dropout = (object["lora_dropout"] as? NSNumber)?.floatValue ?? 0
        guard (0..<1).contains(dropout) else { throw fail("lora_dropout \(dropout) is outside [0, 1)") }
        let layers = (object["layers_to_transform"] as? Int).map { [$0] } ?? object["layers_to_transform"] as? [Int]
        switch object["target_modules"] {
        case let names as [String]: declaredTargets = .names(names)
        case "all-linear" as String: declaredTargets = .allLinear
        case let pattern as String:
            do {
                declaredTargets = .pattern(pattern, try Regex(pattern))
            } catch {
                throw fail("target_modules \"\(pattern)\" is not a regular expression this reader understands")
            }
        default: declaredTargets = nil
        }
        coversSomeLayersOnly = isSet("layers_to_transform") || isSet("layers_pattern")

        weights = try SafetensorsFile(url: weightsURL)
        var modules: [String] = []
        var halves: [String: Set<String>] = [:]
        for info in weights.tensors {
            let name = info.name
            guard name.hasPrefix(Self.keyPrefix), let half = ["lora_A", "lora_B"].first(where: { name.hasSuffix(".\($0).weight") }) else {
                throw ModelError.invalidAdapter(weightsURL, reason: "tensor \"\(name)\" is not a LoRA A/B weight (base_model.model.<module>.lora_A.weight)")
            }
            let module = String(name.dropFirst(Self.keyPrefix.count).dropLast(".\(half).weight".count))
            if halves[module] == nil { modules.append(module) }
            halves[module, default: []].insert(half)
        }
        guard !modules.isEmpty else { throw ModelError.invalidAdapter(weightsURL, reason: "the file holds no LoRA tensors") }
        for module in modules where halves[module]!.count < 2 {
            let missing = halves[module]!.contains("lora_A") ? "lora_B" : "lora_A"
            throw ModelError.invalidAdapter(weightsURL, reason: "module \"\(module)\" has no \(missing) weight")
        }
        self.modules = modules
        configuration = LoRAConfiguration(rank: rank, alpha: alpha,
                                          targetModules: Array(Set(modules.map { String($0.split(separator: ".").last!) })).sorted(),
                                          useRSLoRA: useRSLoRA, dropout: dropout, layers: layers)
        for module in modules where selects(module, isOutputLayer: module == "lm_head") == false {
            throw ModelError.invalidAdapter(configURL, reason: "the weights cover module \"\(module)\", which target_modules does not select")
        }
    }

    /// Whether `target_modules` selects a base module (PEFT's rule: a listed name
    /// equal to the module's name or to its last components, or a full match of the
    /// pattern); nil when the configuration names no targets.
    public func selects(_ module: String, isOutputLayer: Bool) -> Bool? {
        switch declaredTargets {
        case nil: nil
        case let .names(names)?: names.contains { module == $0 || module.hasSuffix("." + $0) }
        case let .pattern(_, regex)?: (try? regex.wholeMatch(in: module)) != nil
        case .allLinear?: !isOutputLayer
        }
    }

    /// The file's keys of a module's A [r, in] and B [out, r].
    public func keys(module: String) -> (a: String, b: String) {
        let names = LoRAConfiguration.tensorNames(module: module)
        return (Self.keyPrefix + names.a, Self.keyPrefix + names.b)
    }

    /// The header entries of a module's A and B.
    public func tensors(module: String) throws -> (a: TensorInfo, b: TensorInfo) {
        let keys = keys(module: module)
        return (try weights.info(keys.a), try weights.info(keys.b))
    }

    /// s·B·A [out, in] of one module in fp32, s being `configuration.scaling`:
    /// what merging adds to the base weight.
    /// - Throws: `ModelError.invalidAdapter` when A and B do not form B·A with
    ///   the configured rank; `SafetensorsError` for non-floating weights.
    public func delta(module: String) throws -> [Float] {
        let (a, b) = try tensors(module: module)
        let r = configuration.rank
        guard a.shape.count == 2, b.shape.count == 2, a.shape[0] == r, b.shape[1] == r else {
            throw ModelError.invalidAdapter(weights.url, reason: "module \"\(module)\": lora_A \(a.shape) and lora_B \(b.shape) do not form B·A of rank r = \(r)")
        }
        let out = b.shape[0], columns = a.shape[1]
        let aValues = try weights.floats(a.name), bValues = try weights.floats(b.name)
        var delta = [Float](repeating: 0, count: out * columns)
        guard out > 0, columns > 0 else { return delta }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(out), Int32(columns), Int32(r),
                    configuration.scaling, bValues, Int32(r), aValues, Int32(columns), 0, &delta, Int32(columns))
        return delta
    }
}
