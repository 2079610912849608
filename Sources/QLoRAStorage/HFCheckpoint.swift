// A Hugging Face model folder: config.json, the weights, the tokenizer files.
//
// Weights are found in this order:
//   1. model.safetensors.index.json: its weight_map names the shards (plain file
//      names in the folder); every listed tensor must be in the shard it names,
//      and tensors a shard holds beyond the map count too (transformers loads
//      shards whole).
//   2. model.safetensors alone.
//   3. A complete set model-0000i-of-0000N.safetensors without an index. Other
//      *.safetensors files (adapter_model.safetensors, ...) are never mixed in:
//      a folder may hold an adapter beside the base model.
// Tensors are looked up by name across all files; a name in two files is refused.
// `validate()` then checks the tensors against what the configuration implies.

import Foundation

/// One tensor a Llama checkpoint holds, with the shape its configuration implies.
public struct LlamaTensor: Hashable, Sendable {
    /// Which weight of the model this is. Per-layer kinds have the name suffix after
    /// "model.layers.N." as raw value; the others have their full name.
    public enum Kind: String, CaseIterable, Sendable {
        case embedding = "model.embed_tokens.weight"
        case inputNorm = "input_layernorm.weight"
        case qProj = "self_attn.q_proj.weight", kProj = "self_attn.k_proj.weight"
        case vProj = "self_attn.v_proj.weight", oProj = "self_attn.o_proj.weight"
        case qBias = "self_attn.q_proj.bias", kBias = "self_attn.k_proj.bias"
        case vBias = "self_attn.v_proj.bias", oBias = "self_attn.o_proj.bias"
        case postAttentionNorm = "post_attention_layernorm.weight"
        case gateProj = "mlp.gate_proj.weight", upProj = "mlp.up_proj.weight", downProj = "mlp.down_proj.weight"
        case gateBias = "mlp.gate_proj.bias", upBias = "mlp.up_proj.bias", downBias = "mlp.down_proj.bias"
        case finalNorm = "model.norm.weight"
        case outputHead = "lm_head.weight"

        public var isPerLayer: Bool { ![.embedding, .finalNorm, .outputHead].contains(self) }

        /// The seven projections of a block: the weights a QLoRA quantizer packs.
        /// The output head is not one of them (bitsandbytes keeps lm_head in full precision).
        public var isLinearWeight: Bool { [.qProj, .kProj, .vProj, .oProj, .gateProj, .upProj, .downProj].contains(self) }
        public var isNorm: Bool { [.inputNorm, .postAttentionNorm, .finalNorm].contains(self) }
        public var isBias: Bool { rawValue.hasSuffix(".bias") }
    }

    public var kind: Kind
    /// Block index for per-layer kinds, nil otherwise.
    public var layer: Int?
    public var name: String
    public var shape: [Int]
    /// False only for lm_head.weight of a tied model: checked when present
    /// (stories260K carries one), not missed when absent, and never used.
    public var isRequired: Bool

    /// The Hugging Face name of `kind` in block `layer`.
    public static func name(_ kind: Kind, layer: Int?) -> String {
        guard kind.isPerLayer else { return kind.rawValue }
        precondition(layer != nil, "[LlamaTensor] \(kind) needs a layer index")
        return "model.layers.\(layer!).\(kind.rawValue)"
    }
}

extension LlamaConfiguration {
    /// Every tensor a checkpoint of this configuration holds: the embedding, each
    /// block in order, the final norm, the output head.
    public var tensorInventory: [LlamaTensor] {
        let q = attentionHeads * headDimensions, kv = kvHeads * headDimensions
        let h = hiddenSize, m = intermediateSize
        var out: [LlamaTensor] = []
        func add(_ kind: LlamaTensor.Kind, _ layer: Int?, _ shape: [Int], required: Bool = true) {
            out.append(LlamaTensor(kind: kind, layer: layer, name: LlamaTensor.name(kind, layer: layer),
                                   shape: shape, isRequired: required))
        }
        add(.embedding, nil, [vocabularySize, h])
        for l in 0..<hiddenLayers {
            add(.inputNorm, l, [h])
            add(.qProj, l, [q, h])
            add(.kProj, l, [kv, h])
            add(.vProj, l, [kv, h])
            add(.oProj, l, [h, q])
            if attentionBias {
                add(.qBias, l, [q])
                add(.kBias, l, [kv])
                add(.vBias, l, [kv])
            }
            if outputProjectionBias { add(.oBias, l, [h]) }
            add(.postAttentionNorm, l, [h])
            add(.gateProj, l, [m, h])
            add(.upProj, l, [m, h])
            add(.downProj, l, [h, m])
            if mlpBias {
                add(.gateBias, l, [m])
                add(.upBias, l, [m])
                add(.downBias, l, [h])
            }
        }
        add(.finalNorm, nil, [h])
        add(.outputHead, nil, [vocabularySize, h], required: !tieWordEmbeddings)
        return out
    }
}

/// Where a tensor of a checkpoint lives.
public struct TensorLocation: Sendable {
    public let file: SafetensorsFile
    public let info: TensorInfo
}

/// An opened Hugging Face model folder. Opening reads config.json and every
/// safetensors header; call `validate()` before trusting shapes.
public final class HFCheckpoint: @unchecked Sendable {
    public static let configFileName = "config.json"
    public static let indexFileName = "model.safetensors.index.json"
    public static let singleFileName = "model.safetensors"
    /// Files a packed checkpoint carries along so it can tokenize and generate alone.
    public static let tokenizerFileNames = ["tokenizer.json", "tokenizer_config.json", "generation_config.json",
                                            "special_tokens_map.json"]

    public let directory: URL
    public let configuration: LlamaConfiguration
    /// config.json byte for byte, for embedding where the folder will not follow.
    public let configJSON: Data
    /// The weight files, sorted by name.
    public let files: [SafetensorsFile]
    /// Those of `tokenizerFileNames` present in the folder, in that order.
    public let tokenizerFiles: [URL]
    private let locations: [String: TensorLocation]

    /// Opens `directory`.
    /// - Throws: `CheckpointError` for a missing or inconsistent file set,
    ///   `LlamaConfigurationError` for config.json, `SafetensorsError` for a bad weight file.
    public init(directory: URL) throws {
        self.directory = directory
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CheckpointError.notADirectory(directory)
        }
        let configURL = directory.appendingPathComponent(Self.configFileName)
        guard Self.isFile(configURL) else { throw CheckpointError.missingFile(directory, name: Self.configFileName) }
        configJSON = try MappedFile.contents(of: configURL)
        configuration = try LlamaConfiguration(jsonData: configJSON, source: configURL)
        tokenizerFiles = Self.tokenizerFileNames.map { directory.appendingPathComponent($0) }.filter(Self.isFile)

        let indexURL = directory.appendingPathComponent(Self.indexFileName)
        let weightMap: [String: String]?
        let names: [String]
        if Self.isFile(indexURL) {
            let map = try Self.readWeightMap(indexURL)
            for shard in Set(map.values) {
                guard !shard.isEmpty, !shard.contains("/"), shard != ".", shard != ".." else {
                    throw CheckpointError.unsafeShardName(indexURL, shard: shard)
                }
                guard Self.isFile(directory.appendingPathComponent(shard)) else {
                    throw CheckpointError.missingShard(indexURL, shard: shard)
                }
            }
            weightMap = map
            names = Set(map.values).sorted()
        } else {
            weightMap = nil
            names = try Self.unindexedWeightFiles(directory)
        }
        files = try names.map { try SafetensorsFile(url: directory.appendingPathComponent($0)) }

        var locations: [String: TensorLocation] = [:]
        for file in files {
            for info in file.tensors {
                if let earlier = locations[info.name] {
                    throw CheckpointError.duplicateTensor(info.name, first: earlier.file.url, second: file.url)
                }
                locations[info.name] = TensorLocation(file: file, info: info)
            }
        }
        for (tensor, shard) in weightMap ?? [:] where locations[tensor]?.file.url.lastPathComponent != shard {
            throw CheckpointError.tensorNotInShard(indexURL, tensor: tensor, shard: shard)
        }
        self.locations = locations
    }

    /// All tensor names across the weight files, sorted.
    public var tensorNames: [String] { locations.keys.sorted() }

    public func contains(_ name: String) -> Bool { locations[name] != nil }

    /// The file and header entry of `name`.
    public func location(of name: String) throws -> TensorLocation {
        guard let l = locations[name] else { throw CheckpointError.missingTensors(directory, names: [name]) }
        return l
    }

    /// A floating tensor converted to fp32.
    public func floats(_ name: String) throws -> [Float] {
        try location(of: name).file.floats(name)
    }

    /// A floating tensor converted to fp32, refusing NaN and ±Inf (`SafetensorsFile.finiteFloats`).
    public func finiteFloats(_ name: String) throws -> [Float] {
        try location(of: name).file.finiteFloats(name)
    }

    /// The tensors the quantizer packs (see `LlamaTensor.Kind.isLinearWeight`).
    public var linearWeights: [LlamaTensor] { configuration.tensorInventory.filter(\.kind.isLinearWeight) }

    /// Tensors in the files that the configuration does not account for (rotary
    /// inv_freq buffers and the like); tolerated and never read.
    public var unexpectedTensors: [String] {
        let known = Set(configuration.tensorInventory.map(\.name))
        return tensorNames.filter { !known.contains($0) }
    }

    /// Checks every tensor the configuration implies is present, floating point and
    /// of the implied shape.
    /// - Returns: `unexpectedTensors`.
    /// - Throws: `CheckpointError.missingTensors` listing all that are absent,
    ///   `.shapeMismatch` naming a tensor and both shapes, `SafetensorsError.notFloatingPoint`.
    @discardableResult
    public func validate() throws -> [String] {
        let inventory = configuration.tensorInventory
        let missing = inventory.filter { $0.isRequired && locations[$0.name] == nil }.map(\.name)
        guard missing.isEmpty else { throw CheckpointError.missingTensors(directory, names: missing) }
        for expected in inventory {
            guard let l = locations[expected.name] else { continue }
            guard l.info.shape == expected.shape else {
                throw CheckpointError.shapeMismatch(l.file.url, tensor: expected.name, expected: expected.shape, found: l.info.shape)
            }
            guard l.info.dtype.isFloatWeightType else {
                throw SafetensorsError.notFloatingPoint(l.file.url, tensor: expected.name, dtype: l.info.dtype)
            }
        }
        return unexpectedTensors
    }

    // MARK: - Finding the files

    private static func isFile(_ url: URL) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) && !isDirectory.boolValue
    }

    private struct Index: Decodable {
        var weightMap: [String: String]
        enum CodingKeys: String, CodingKey { case weightMap = "weight_map" }
    }

    private static func readWeightMap(_ url: URL) throws -> [String: String] {
        let data = try MappedFile.contents(of: url)
        do {
            return try JSONDecoder().decode(Index.self, from: data).weightMap
        } catch {
            throw CheckpointError.invalidIndex(url)
        }
    }

    /// model.safetensors, or a complete model-i-of-n set; names relative to `directory`.
    private static func unindexedWeightFiles(_ directory: URL) throws -> [String] {
        let all = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        let found = all.filter { $0.hasSuffix(".safetensors") }.sorted()
        if found.contains(singleFileName) { return [singleFileName] }
        var shards: [(name: String, index: Int, total: Int)] = []
        for name in found {
            if let m = name.wholeMatch(of: /model-(\d+)-of-(\d+)\.safetensors/), let i = Int(m.1), let n = Int(m.2) {
                shards.append((name, i, n))
            }
        }
        guard let total = shards.map(\.total).max() else { throw CheckpointError.noWeights(directory, found: found) }
        let present = Set(shards.filter { $0.total == total }.map(\.index))
        let mixed = shards.filter { $0.total != total }.map(\.name)
        // A lying name (model-1-of-99999999) must not make a huge list: report the first few gaps.
        let missing = Array((1...max(total, 1)).lazy.filter { !present.contains($0) }.prefix(8).map { shardName($0, of: total) })
        guard missing.isEmpty, mixed.isEmpty, shards.count == total else {
            throw CheckpointError.incompleteShards(directory, missing: missing, stray: mixed)
        }
        return shards.map(\.name)
    }

    private static func shardName(_ i: Int, of n: Int) -> String {
        func five(_ v: Int) -> String { String(repeating: "0", count: max(0, 5 - String(v).count)) + String(v) }
        return "model-\(five(i))-of-\(five(n)).safetensors"
    }
}

extension MappedFile {
    /// A small file (JSON) copied out whole, failing with `FileError` like every other read.
    static func contents(of url: URL) throws -> Data {
        let file = try MappedFile(url: url)
        // The copy must finish before the map goes away.
        return withExtendedLifetime(file) { Data(file.bytes) }
    }
}

/// What is wrong with a model folder as a whole (single files report their own errors).
public enum CheckpointError: Error, LocalizedError, Equatable {
    /// The path is not a folder.
    case notADirectory(URL)
    /// A file every checkpoint needs (config.json) is absent.
    case missingFile(URL, name: String)
    /// No model.safetensors, index or model-i-of-n shard set; `found` lists the *.safetensors present.
    case noWeights(URL, found: [String])
    /// model.safetensors.index.json is not JSON with a weight_map of strings.
    case invalidIndex(URL)
    /// The index names a shard outside the folder.
    case unsafeShardName(URL, shard: String)
    /// The index names a shard that is not in the folder.
    case missingShard(URL, shard: String)
    /// A model-i-of-n set without an index lacks shards, or mixes different n.
    case incompleteShards(URL, missing: [String], stray: [String])
    /// The index places a tensor in a shard that does not hold it.
    case tensorNotInShard(URL, tensor: String, shard: String)
    /// Two weight files hold a tensor of the same name.
    case duplicateTensor(String, first: URL, second: URL)
    /// Tensors the configuration requires are in no weight file.
    case missingTensors(URL, names: [String])
    /// A tensor's shape disagrees with the configuration.
    case shapeMismatch(URL, tensor: String, expected: [Int], found: [Int])

    public var errorDescription: String? {
        switch self {
        case let .notADirectory(url):
            "\(url.path): not a model folder"
        case let .missingFile(url, name):
            "\(url.path): no \(name) in the model folder"
        case let .noWeights(url, found):
            "\(url.path): no model.safetensors, model.safetensors.index.json or complete model-0000i-of-0000n.safetensors set"
                + (found.isEmpty ? "" : " (found only \(found.joined(separator: ", ")))")
        case let .invalidIndex(url):
            "\(url.path): not a JSON object with a \"weight_map\" of tensor names to file names"
        case let .unsafeShardName(url, shard):
            "\(url.path): shard \"\(shard)\" is not a plain file name in the model folder"
        case let .missingShard(url, shard):
            "\(url.path): names shard \(shard), which is not in the folder"
        case let .incompleteShards(url, missing, stray):
            "\(url.path): incomplete shard set without an index"
                + (missing.isEmpty ? "" : "; missing \(missing.joined(separator: ", "))")
                + (stray.isEmpty ? "" : "; from another set: \(stray.joined(separator: ", "))")
        case let .tensorNotInShard(url, tensor, shard):
            "\(url.path): places tensor \"\(tensor)\" in \(shard), which does not hold it"
        case let .duplicateTensor(tensor, first, second):
            "tensor \"\(tensor)\" is in both \(first.path) and \(second.path)"
        case let .missingTensors(url, names):
            "\(url.path): missing tensor\(names.count == 1 ? "" : "s") "
                + names.prefix(8).map { "\"\($0)\"" }.joined(separator: ", ")
                + (names.count > 8 ? " and \(names.count - 8) more" : "")
        case let .shapeMismatch(url, tensor, expected, found):
            "\(url.path): tensor \"\(tensor)\" has shape \(found), but config.json implies \(expected)"
        }
    }
}
