// What AdapterMerge refuses, with which error, and that a refused or failed
// merge leaves nothing behind: no output, no staging folder, no temporary file.

import Foundation
import QLoRAKit
import Testing
import _TestSupport

@Suite struct MergeErrorTests {
    let scratch: TemporaryDirectory
    var dir: URL { scratch.url }

    init() throws { scratch = try TemporaryDirectory("qlora-merge") }

    /// Merges the tiny-llama with `adapter` into `dir`/out and expects `error`, with
    /// nothing but the inputs left in `dir`.
    private func expectRefusal<E: Error & Equatable>(_ error: E, adapter: URL, model: URL = Reference.tinyLlama,
                                                     format: MergeFormat = .huggingFace(dtype: .F32, maxShardBytes: 1 << 30),
                                                     sourceLocation: SourceLocation = #_sourceLocation) throws {
        let before = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        #expect(throws: error, sourceLocation: sourceLocation) {
            try AdapterMerge.merge(model: model, adapter: adapter, output: dir.appendingPathComponent("out"),
                                   options: MergeOptions(format: format))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == before, sourceLocation: sourceLocation)
    }

    @Test func missingAdapterFiles() throws {
        defer { scratch.remove() }
        let absent = dir.appendingPathComponent("absent")
        try expectRefusal(ModelError.invalidAdapter(absent, reason: "not an adapter folder (expected adapter_config.json and adapter_model.safetensors inside)"),
                          adapter: absent)
        let adapter = dir.appendingPathComponent("adapter")
        try FileManager.default.createDirectory(at: adapter, withIntermediateDirectories: true)
        try expectRefusal(ModelError.invalidAdapter(adapter, reason: "no adapter_config.json in the adapter folder"), adapter: adapter)
        try FileManager.default.copyItem(at: MergeFixture.adapter.appendingPathComponent("adapter_config.json"),
                                         to: adapter.appendingPathComponent("adapter_config.json"))
        try expectRefusal(ModelError.invalidAdapter(adapter, reason: "no adapter_model.safetensors in the adapter folder"), adapter: adapter)
        try Data([0x80]).write(to: adapter.appendingPathComponent("adapter_model.bin"))
        try expectRefusal(ModelError.invalidAdapter(adapter, reason: "holds adapter_model.bin (a PyTorch pickle), which is not read; save the adapter with safe_serialization=True"),
                          adapter: adapter)
    }

    @Test func baseThatIsNoModel() throws {
        defer { scratch.remove() }
        let absent = dir.appendingPathComponent("absent")
        try expectRefusal(FileError.cannotOpen(absent, errno: ENOENT), adapter: MergeFixture.adapter, model: absent)
        // A bare safetensors file is neither a model folder nor a packed checkpoint.
        let weights = Reference.tinyLlama.appendingPathComponent("model.safetensors")
        #expect(throws: PackedCheckpointError.self) {
            try AdapterMerge.merge(model: weights, adapter: MergeFixture.adapter, output: dir.appendingPathComponent("out"))
        }
        try expectRefusal(CheckpointError.missingFile(MergeFixture.adapter, name: "config.json"), adapter: MergeFixture.adapter,
                          model: MergeFixture.adapter)
    }

    @Test func unsupportedAdapterFeatures() throws {
        defer { scratch.remove() }
        let adapter = dir.appendingPathComponent("adapter")
        let config = adapter.appendingPathComponent("adapter_config.json")
        let tensors = try MergeFixture.fixtureTensors(["q_proj"])
        let cases: [([String: Any], String)] = [
            (["use_dora": true], "use_dora = true is not supported"),
            (["bias": "lora_only"], "bias \"lora_only\" is not supported (only \"none\")"),
            (["modules_to_save": ["lm_head"]], "modules_to_save is not supported"),
            (["rank_pattern": ["q_proj": 4]], "per-module rank_pattern is not supported"),
            (["peft_type": "IA3"], "peft_type IA3 is not LORA"),
        ]
        for (overrides, reason) in cases {
            try MergeFixture.writeAdapter(adapter, config: overrides, tensors: tensors)
            try expectRefusal(ModelError.invalidAdapter(config, reason: reason), adapter: adapter)
        }
        // A key that is not a LoRA factor (an embedding adapter's, here).
        try MergeFixture.writeAdapter(adapter, tensors: tensors + [("base_model.model.model.embed_tokens.lora_embedding_A", [8, 384], [Float](repeating: 0, count: 8 * 384))])
        try expectRefusal(ModelError.invalidAdapter(adapter.appendingPathComponent("adapter_model.safetensors"),
                                                    reason: "tensor \"base_model.model.model.embed_tokens.lora_embedding_A\" is not a LoRA A/B weight (base_model.model.<module>.lora_A.weight)"),
                          adapter: adapter)
    }

    @Test func adapterThatDoesNotFitTheBase() throws {
        defer { scratch.remove() }
        let adapter = dir.appendingPathComponent("adapter")
        let key = "base_model.model.model.layers.5.mlp.up_proj"
        try MergeFixture.writeAdapter(adapter, tensors: [(key + ".lora_A.weight", [8, 128], [Float](repeating: 0, count: 8 * 128)),
                                                         (key + ".lora_B.weight", [352, 8], [Float](repeating: 0, count: 352 * 8))])
        try expectRefusal(MergeError.moduleNotInBase(adapter: adapter, module: "model.layers.5.mlp.up_proj", base: Reference.tinyLlama),
                          adapter: adapter)

        let q = "base_model.model.model.layers.0.self_attn.q_proj"
        try MergeFixture.writeAdapter(adapter, tensors: [(q + ".lora_A.weight", [8, 100], [Float](repeating: 0, count: 800)),
                                                         (q + ".lora_B.weight", [128, 8], [Float](repeating: 0, count: 1024))])
        try expectRefusal(MergeError.shapeMismatch(adapter: adapter, module: "model.layers.0.self_attn.q_proj", base: [128, 128],
                                                   loraA: [8, 100], loraB: [128, 8]), adapter: adapter)

        // target_modules selects k_proj, but the file holds only q_proj and v_proj.
        try MergeFixture.writeAdapter(adapter, config: ["target_modules": ["q_proj", "k_proj", "v_proj"]],
                                      tensors: try MergeFixture.fixtureTensors(["q_proj", "v_proj"]))
        try expectRefusal(MergeError.modulesMissingFromAdapter(adapter: adapter, modules: ["model.layers.0.self_attn.k_proj",
                                                                                          "model.layers.1.self_attn.k_proj"]),
                          adapter: adapter)
        // With layers_to_transform the file decides which layers are covered.
        try MergeFixture.writeAdapter(adapter, config: ["target_modules": ["q_proj", "k_proj", "v_proj"], "layers_to_transform": [0, 1]],
                                      tensors: try MergeFixture.fixtureTensors(["q_proj", "v_proj"]))
        #expect(try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: dir.appendingPathComponent("ok")).merged.count == 4)
    }

    @Test func adapterOnATiedOutputHead() throws {
        defer { scratch.remove() }
        let model = Fixtures.url("model/variants/llama3-rope-bias-tied")
        let adapter = dir.appendingPathComponent("adapter")
        try MergeFixture.writeAdapter(adapter, tensors: [("base_model.model.lm_head.lora_A.weight", [8, 32], [Float](repeating: 0, count: 256)),
                                                         ("base_model.model.lm_head.lora_B.weight", [64, 8], [Float](repeating: 0, count: 512))])
        try expectRefusal(MergeError.tiedOutputHead(adapter: adapter), adapter: adapter, model: model)
    }

    @Test func valuesThatCannotBeStoredLeaveNothingBehind() throws {
        defer { scratch.remove() }
        let adapter = dir.appendingPathComponent("adapter")
        var tensors = try MergeFixture.fixtureTensors(["down_proj"])
        // Layer 1's B: NaN in row 3 makes row 3 of the merged weight NaN.
        let b = try #require(tensors.firstIndex { $0.key.contains("layers.1.mlp.down_proj.lora_B") })
        tensors[b].values[3 * 8] = .nan
        try MergeFixture.writeAdapter(adapter, tensors: tensors)
        let nan = MergeError.nonFinite(tensor: "model.layers.1.mlp.down_proj.weight", index: 3 * 352, shape: [128, 352], value: .nan)
        // NaN != NaN, so compare the descriptions.
        for format in [MergeFormat.huggingFace(dtype: .F32, maxShardBytes: 1 << 30), .packed(QuantSpec(type: .nf4, blockSize: 64), compress: false)] {
            let before = try FileManager.default.contentsOfDirectory(atPath: dir.path)
            let error = #expect(throws: MergeError.self) {
                try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: dir.appendingPathComponent("out"),
                                       options: MergeOptions(format: format))
            }
            #expect(error?.localizedDescription == nan.localizedDescription)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == before)
        }

        // Finite, but past F16's largest value (65504).
        tensors[b].values[3 * 8] = 1e6
        try MergeFixture.writeAdapter(adapter, tensors: tensors)
        let error = #expect(throws: MergeError.self) {
            try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: dir.appendingPathComponent("out"),
                                   options: MergeOptions(format: .huggingFace(dtype: .F16, maxShardBytes: 1 << 30)))
        }
        guard case let .outOfRange(tensor, index, _, dtype)? = error else {
            Issue.record("expected outOfRange, got \(String(describing: error))")
            return
        }
        #expect(tensor == "model.layers.1.mlp.down_proj.weight" && index / 352 == 3 && dtype == .F16)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["adapter"])
    }

    @Test func outputsInTheWay() throws {
        defer { scratch.remove() }
        let out = dir.appendingPathComponent("out")
        let adapter = MergeFixture.adapter
        // An empty folder is simply filled.
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        _ = try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: out)
        #expect(throws: MergeError.outputExists(out)) { try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: out) }
        // --overwrite replaces a model folder whole: a stray file in it does not survive.
        try Data("x".utf8).write(to: out.appendingPathComponent("stray.txt"))
        _ = try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: out, options: MergeOptions(overwrite: true))
        #expect(try FileManager.default.contentsOfDirectory(atPath: out.path).sorted() == ["config.json", "model.safetensors"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["out"])
        // …but not a folder that is not a model's.
        let other = dir.appendingPathComponent("other")
        try FileManager.default.createDirectory(at: other, withIntermediateDirectories: true)
        try Data("x".utf8).write(to: other.appendingPathComponent("notes.txt"))
        #expect(throws: MergeError.outputNotReplaceable(other, reason: "the folder holds no config.json, so it is not a model folder")) {
            try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: other, options: MergeOptions(overwrite: true))
        }
        #expect(throws: MergeError.outputNotReplaceable(Reference.tinyLlama, reason: "it is one of the merge's inputs")) {
            try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: Reference.tinyLlama, options: MergeOptions(overwrite: true))
        }
        // A packed output: an existing file needs overwrite, a folder is never replaced.
        let packed = MergeOptions(format: .packed(QuantSpec(type: .nf4, blockSize: 64), compress: false))
        let file = dir.appendingPathComponent("merged.qlora")
        try Data("old".utf8).write(to: file)
        #expect(throws: MergeError.outputExists(file)) { try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: file, options: packed) }
        #expect(throws: MergeError.outputNotReplaceable(out, reason: "it is a folder, and the output is a packed checkpoint file")) {
            try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: out, options: packed)
        }
        var replace = packed
        replace.overwrite = true
        _ = try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: file, options: replace)
        #expect(try PackedCheckpoint(url: file).tensors.count == 21)
        // A missing parent folder.
        let deep = dir.appendingPathComponent("missing/out")
        #expect(throws: FileError.directoryMissing(deep.deletingLastPathComponent())) {
            try AdapterMerge.merge(model: Reference.tinyLlama, adapter: adapter, output: deep)
        }
    }
}
