// Hugging Face model folders: the embedded stories260K, sharded copies of it, and broken folders.

import Foundation
import QLoRAStorage
import Testing

@Suite struct CheckpointTests {
    /// The model QLoRAKit embeds, read in place.
    private static let stories = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Sources/QLoRAKit/Resources/stories260K", isDirectory: true)

    /// A folder with stories260K's config.json (edited by `config`) and the given tensors
    /// written as shards: each inner list is one file, named by `naming(i, count)`.
    private static func folder(
        _ dir: URL, shards: [[String]], config: (String) -> String = { $0 },
        naming: (Int, Int) -> String = { "model-0000\($0)-of-0000\($1).safetensors" }, index: Bool = true
    ) throws {
        let source = try SafetensorsFile(url: stories.appendingPathComponent("model.safetensors"))
        // `bytes` are views into its map, so it must outlive every copy below.
        defer { withExtendedLifetime(source) {} }
        let text = try String(contentsOf: stories.appendingPathComponent("config.json"), encoding: .utf8)
        try config(text).write(to: dir.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        var weightMap: [String: String] = [:]
        for (i, names) in shards.enumerated() {
            let fileName = naming(i + 1, shards.count)
            var writer = SafetensorsWriter(metadata: ["format": "pt"])
            for name in names {
                let info = try source.info(name)
                try writer.add(name, dtype: info.dtype, shape: info.shape, bytes: source.bytes(name))
                weightMap[name] = fileName
            }
            try writer.write(to: dir.appendingPathComponent(fileName))
        }
        if index {
            let json = try JSONSerialization.data(withJSONObject: ["metadata": ["total_size": 0], "weight_map": weightMap])
            try json.write(to: dir.appendingPathComponent(HFCheckpoint.indexFileName))
        }
    }

    private static var storiesNames: [String] {
        get throws { try SafetensorsFile(url: stories.appendingPathComponent("model.safetensors")).tensors.map(\.name) }
    }

    @Test func embeddedStoriesValidates() throws {
        let checkpoint = try HFCheckpoint(directory: Self.stories)
        // Tied, yet the file carries lm_head.weight: checked, not reported as unexpected.
        #expect(checkpoint.configuration.tieWordEmbeddings && checkpoint.contains("lm_head.weight"))
        #expect(try checkpoint.validate() == [])
        #expect(checkpoint.files.map(\.url.lastPathComponent) == ["model.safetensors"])
        #expect(checkpoint.configJSON == (try Data(contentsOf: Self.stories.appendingPathComponent("config.json"))))
        #expect(checkpoint.tokenizerFiles.map(\.lastPathComponent) == ["tokenizer.json", "tokenizer_config.json", "generation_config.json"])

        let linear = checkpoint.linearWeights
        #expect(linear.count == 5 * 7)
        #expect(linear.first?.name == "model.layers.0.self_attn.q_proj.weight" && linear.first?.shape == [64, 64])
        #expect(linear.first { $0.kind == .kProj }?.shape == [32, 64])
        #expect(linear.first { $0.kind == .downProj }?.shape == [64, 172])
        let inventory = checkpoint.configuration.tensorInventory
        #expect(!inventory.contains { $0.kind.isLinearWeight && ($0.kind.isNorm || $0.kind == .embedding) })
        #expect(inventory.filter(\.kind.isNorm).count == 2 * 5 + 1)
        #expect(Set(inventory.map(\.name)) == Set(try Self.storiesNames))
    }

    @Test func shardedReadsEqualUnsharded() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let names = try Self.storiesNames
        try Self.folder(dir, shards: [Array(names[..<20]), Array(names[20...])])
        let sharded = try HFCheckpoint(directory: dir)
        let single = try HFCheckpoint(directory: Self.stories)
        #expect(sharded.files.count == 2)
        #expect(try sharded.validate() == [])
        #expect(sharded.tensorNames == single.tensorNames)
        for name in single.tensorNames { #expect(try sharded.floats(name) == single.floats(name)) }
        #expect(try sharded.location(of: names[25]).file.url.lastPathComponent == "model-00002-of-00002.safetensors")

        // The same shards without the index.
        try FileManager.default.removeItem(at: dir.appendingPathComponent(HFCheckpoint.indexFileName))
        let unindexed = try HFCheckpoint(directory: dir)
        for name in single.tensorNames { #expect(try unindexed.floats(name) == single.floats(name)) }
    }

    @Test func shardSetsThatDoNotAddUp() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let names = try Self.storiesNames
        try Self.folder(dir, shards: [Array(names[..<10]), Array(names[10..<20]), Array(names[20...])], index: false)
        // An adapter beside the model is never taken for a shard.
        var adapter = SafetensorsWriter()
        try adapter.add("base_model.model.lora_A.weight", shape: [1], floats: [0])
        try adapter.write(to: dir.appendingPathComponent("adapter_model.safetensors"))
        try FileManager.default.removeItem(at: dir.appendingPathComponent("model-00002-of-00003.safetensors"))
        #expect(throws: CheckpointError.incompleteShards(dir, missing: ["model-00002-of-00003.safetensors"], stray: [])) {
            try HFCheckpoint(directory: dir)
        }
        for file in try FileManager.default.contentsOfDirectory(atPath: dir.path) where file.hasPrefix("model-") {
            try FileManager.default.removeItem(at: dir.appendingPathComponent(file))
        }
        #expect(throws: CheckpointError.noWeights(dir, found: ["adapter_model.safetensors"])) { try HFCheckpoint(directory: dir) }
    }

    @Test func indexThatLies() throws {
        let names = try Self.storiesNames
        let split = [Array(names[..<20]), Array(names[20...])]
        func withIndex(_ edit: (inout [String: String]) -> Void) throws -> (URL, CheckpointError?) {
            let dir = try SafetensorsScratch.directory()
            try Self.folder(dir, shards: split)
            let url = dir.appendingPathComponent(HFCheckpoint.indexFileName)
            let object = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
            var map = object["weight_map"] as! [String: String]
            edit(&map)
            try JSONSerialization.data(withJSONObject: ["weight_map": map]).write(to: url)
            return (dir, SafetensorsScratch.error(CheckpointError.self) { _ = try HFCheckpoint(directory: dir) })
        }
        let (a, missing) = try withIndex { $0[names[0]] = "model-00009-of-00009.safetensors" }
        defer { SafetensorsScratch.remove(a) }
        #expect(missing == .missingShard(a.appendingPathComponent(HFCheckpoint.indexFileName), shard: "model-00009-of-00009.safetensors"))
        let (b, escape) = try withIndex { $0[names[0]] = "../model.safetensors" }
        defer { SafetensorsScratch.remove(b) }
        #expect(escape == .unsafeShardName(b.appendingPathComponent(HFCheckpoint.indexFileName), shard: "../model.safetensors"))
        let (c, moved) = try withIndex { $0[names[0]] = "model-00002-of-00002.safetensors" }
        defer { SafetensorsScratch.remove(c) }
        #expect(moved == .tensorNotInShard(c.appendingPathComponent(HFCheckpoint.indexFileName), tensor: names[0],
                                           shard: "model-00002-of-00002.safetensors"))
    }

    @Test func tensorInTwoShardsIsRefused() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let names = try Self.storiesNames
        try Self.folder(dir, shards: [Array(names[..<20]), Array(names[19...])], index: false)
        #expect(throws: CheckpointError.duplicateTensor(names[19], first: dir.appendingPathComponent("model-00001-of-00002.safetensors"),
                                                        second: dir.appendingPathComponent("model-00002-of-00002.safetensors"))) {
            try HFCheckpoint(directory: dir)
        }
    }

    @Test func configDisagreeingWithShapesNamesBoth() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        try Self.folder(dir, shards: [try Self.storiesNames], config: {
            $0.replacingOccurrences(of: "\"intermediate_size\": 172", with: "\"intermediate_size\": 176")
        }, naming: { _, _ in "model.safetensors" })
        let checkpoint = try HFCheckpoint(directory: dir)
        #expect(checkpoint.configuration.intermediateSize == 176)
        let error = SafetensorsScratch.error(CheckpointError.self) { try checkpoint.validate() }
        let file = dir.appendingPathComponent("model.safetensors")
        #expect(error == .shapeMismatch(file, tensor: "model.layers.0.mlp.gate_proj.weight", expected: [176, 64], found: [172, 64]))
        let message = error?.localizedDescription ?? ""
        #expect(message.contains("model.layers.0.mlp.gate_proj.weight") && message.contains("[176, 64]") && message.contains("[172, 64]"))
    }

    @Test func missingAndUnexpectedTensors() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let kept = try Self.storiesNames.filter { !$0.contains("layers.4.mlp") && $0 != "lm_head.weight" }
        try Self.folder(dir, shards: [kept], naming: { _, _ in "model.safetensors" }, index: false)
        // Tied: lm_head.weight may be absent.
        let error = SafetensorsScratch.error(CheckpointError.self) { try HFCheckpoint(directory: dir).validate() }
        #expect(error == .missingTensors(dir, names: ["model.layers.4.mlp.gate_proj.weight", "model.layers.4.mlp.up_proj.weight",
                                                      "model.layers.4.mlp.down_proj.weight"]))

        // Untied: lm_head.weight is required; a rotary buffer is tolerated and listed.
        let all = try Self.storiesNames.filter { $0 != "lm_head.weight" }
        try FileManager.default.removeItem(at: dir.appendingPathComponent("model.safetensors"))
        try Self.folder(dir, shards: [all, []], config: {
            $0.replacingOccurrences(of: "\"tie_word_embeddings\": true", with: "\"tie_word_embeddings\": false")
        }, index: false)
        var extra = SafetensorsWriter()
        try extra.add("model.layers.0.self_attn.rotary_emb.inv_freq", shape: [4], floats: [1, 0.1, 0.01, 0.001])
        try extra.write(to: dir.appendingPathComponent("model-00002-of-00002.safetensors"))
        let untied = try HFCheckpoint(directory: dir)
        #expect(throws: CheckpointError.missingTensors(dir, names: ["lm_head.weight"])) { try untied.validate() }
        #expect(untied.unexpectedTensors == ["model.layers.0.self_attn.rotary_emb.inv_freq"])
    }

    @Test func folderWithoutConfig() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        #expect(throws: CheckpointError.missingFile(dir, name: "config.json")) { try HFCheckpoint(directory: dir) }
        let file = dir.appendingPathComponent("config.json")
        #expect(throws: CheckpointError.notADirectory(file)) {
            try Data("{}".utf8).write(to: file)
            _ = try HFCheckpoint(directory: file)
        }
    }
}
