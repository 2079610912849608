// AdapterMerge on the tiny-llama and its peft adapter: merged folders against
// peft's merge_and_unload() and QLoRA logits, packed bases against their
// dequantized weights plus s·B·A, re-quantized outputs against the block codec.

import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// Folders and adapters shared by the merge tests.
enum MergeFixture {
    static let adapter = Reference.tinyLlama.appendingPathComponent("adapter")
    static let reference = Reference.tinyLlama.appendingPathComponent("merged_reference.safetensors")

    /// Writes a PEFT adapter folder holding `tensors` (full keys), with a
    /// configuration of r = 8, alpha = 16, target_modules from the keys, and
    /// `config` on top (NSNull removes a key).
    static func writeAdapter(_ dir: URL, config: [String: Any] = [:], tensors: [(key: String, shape: [Int], values: [Float])]) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let suffixes = Set(tensors.map { $0.key.split(separator: ".").dropLast(2).last.map(String.init)! })
        var json: [String: Any] = ["peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none", "use_dora": false,
                                   "use_rslora": false, "target_modules": suffixes.sorted()]
        for (key, value) in config { json[key] = value is NSNull ? nil : value }
        try JSONSerialization.data(withJSONObject: json).write(to: dir.appendingPathComponent("adapter_config.json"))
        var writer = SafetensorsWriter(metadata: ["format": "pt"])
        for t in tensors { try writer.add(t.key, shape: t.shape, floats: t.values) }
        try writer.write(to: dir.appendingPathComponent("adapter_model.safetensors"))
    }

    /// The fixture adapter's tensors of the modules whose names end in one of `suffixes`.
    static func fixtureTensors(_ suffixes: [String]) throws -> [(key: String, shape: [Int], values: [Float])] {
        let file = try SafetensorsFile(url: adapter.appendingPathComponent("adapter_model.safetensors"))
        return try file.tensors.filter { info in suffixes.contains { info.name.contains(".\($0).lora_") } }
            .map { ($0.name, $0.shape, try file.floats($0.name)) }
    }

    /// A model (the tiny-llama unless given) packed with `spec` into `dir`/base.qlora.
    static func packedBase(in dir: URL, from model: URL = Reference.tinyLlama, spec: QuantSpec = QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8),
                           compress: Bool = false) throws -> URL {
        let url = dir.appendingPathComponent("base.qlora")
        _ = try Quantizer.quantize(modelDirectory: model, output: url, options: QuantizeOptions(spec: spec, compress: compress))
        return url
    }

    /// Logits of a model folder on one of the reference sequences.
    static func logits(_ folder: URL, _ sequence: String) throws -> [Float] {
        let model = try LlamaModel(directory: folder)
        try model.forward(TokenBatch(sequences: [Reference.sequence(sequence)]))
        return model.logits()
    }

    /// The module an adapter merges into `weight`, if any.
    static func module(_ weight: String, _ adapter: PEFTAdapter) -> String? {
        let module = String(weight.dropLast(".weight".count))
        return adapter.modules.contains(module) ? module : nil
    }
}

@Suite struct MergeTests {
    @Test(arguments: ["seq1", "seq2"])
    func mergedFolderReproducesPEFT(sequence: String) throws {
        let scratch = try TemporaryDirectory("qlora-merge")
        defer { scratch.remove() }
        let dir = scratch.url
        let out = dir.appendingPathComponent("merged")
        let summary = try AdapterMerge.merge(model: Reference.tinyLlama, adapter: MergeFixture.adapter, output: out)
        #expect(summary.files == ["config.json", "model.safetensors"])
        #expect(summary.merged.count == 14 && summary.tensors.count == 21 && summary.scaling == 2)
        #expect(summary.tensors.allSatisfy { $0.error == nil })

        let logits = try MergeFixture.logits(out, sequence)
        let reference = try SafetensorsFile(url: MergeFixture.reference)
        #expect(maxAbsDifference(logits, try reference.floats("\(sequence).merged_logits")) <= 1e-4)
        // The merged model computes what the base with the adapter attached does.
        let unmerged = try Reference.tensors("lora_reference.safetensors").floats("\(sequence).logits")
        #expect(maxAbsDifference(logits, unmerged) <= 1e-4)
    }

    @Test func mergedWeightsAreBasePlusDelta() throws {
        let scratch = try TemporaryDirectory("qlora-merge")
        defer { scratch.remove() }
        let dir = scratch.url
        // A base folder with tokenizer files, which the output must carry unchanged.
        let base = dir.appendingPathComponent("base")
        try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        for name in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(at: Reference.tinyLlama.appendingPathComponent(name), to: base.appendingPathComponent(name))
        }
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(at: Fixtures.url("tokenizers/tiny-llama/\(name)"), to: base.appendingPathComponent(name))
        }
        let out = dir.appendingPathComponent("merged")
        let summary = try AdapterMerge.merge(model: base, adapter: MergeFixture.adapter, output: out)
        #expect(summary.files == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
        for name in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            #expect(try Data(contentsOf: out.appendingPathComponent(name)) == Data(contentsOf: base.appendingPathComponent(name)), "\(name)")
        }

        let adapter = try PEFTAdapter(directory: MergeFixture.adapter)
        let original = try SafetensorsFile(url: base.appendingPathComponent("model.safetensors"))
        let merged = try SafetensorsFile(url: out.appendingPathComponent("model.safetensors"))
        #expect(merged.metadata == ["format": "pt"])
        #expect(Set(merged.tensors.map(\.name)) == Set(original.tensors.map(\.name)))
        for info in original.tensors {
            var expected = try original.floats(info.name)
            if let module = MergeFixture.module(info.name, adapter) {
                expected = zip(expected, try adapter.delta(module: module)).map(+)
                let record = try #require(summary.tensors.first { $0.name == info.name })
                var change = ReconstructionError()
                try original.floats(info.name).withUnsafeBufferPointer { w in
                    expected.withUnsafeBufferPointer { change.add(reference: w, approximation: $0, firstIndex: 0) }
                }
                #expect(record.merged && record.change == change)
            }
            #expect(try merged.info(info.name).shape == info.shape)
            #expect(maxAbsDifference(try merged.floats(info.name), expected) == 0, "\(info.name)")
        }
    }

    @Test func deltaIsScaledProductOfFactors() throws {
        let adapter = try PEFTAdapter(directory: MergeFixture.adapter)
        let module = "model.layers.1.mlp.down_proj"
        let (a, b) = try adapter.tensors(module: module)
        let av = try adapter.weights.floats(a.name), bv = try adapter.weights.floats(b.name)
        let r = 8, inFeatures = a.shape[1], out = b.shape[0]
        var expected = [Float](repeating: 0, count: out * inFeatures)
        for i in 0..<out {
            for j in 0..<inFeatures {
                var s = 0.0
                for k in 0..<r { s += Double(bv[i * r + k]) * Double(av[k * inFeatures + j]) }
                expected[i * inFeatures + j] = Float(2 * s)
            }
        }
        #expect(maxAbsDifference(try adapter.delta(module: module), expected) <= 1e-6)
    }

    @Test func rsLoRAScalesByRootOfRank() throws {
        let scratch = try TemporaryDirectory("qlora-merge")
        defer { scratch.remove() }
        let dir = scratch.url
        let tensors = try MergeFixture.fixtureTensors(["q_proj"])
        let plain = dir.appendingPathComponent("plain"), rs = dir.appendingPathComponent("rs")
        try MergeFixture.writeAdapter(plain, tensors: tensors)
        try MergeFixture.writeAdapter(rs, config: ["use_rslora": true], tensors: tensors)
        let a = try PEFTAdapter(directory: plain), b = try PEFTAdapter(directory: rs)
        #expect(b.configuration.useRSLoRA && b.configuration.scaling == 16 / Float(8).squareRoot())
        let module = "model.layers.0.self_attn.q_proj"
        let scaled = try a.delta(module: module).map { $0 * Float(8).squareRoot() }
        #expect(maxAbsDifference(try b.delta(module: module), scaled) <= 1e-6)
        let summary = try AdapterMerge.merge(model: Reference.tinyLlama, adapter: rs, output: dir.appendingPathComponent("out"))
        #expect(summary.useRSLoRA && summary.merged.map(\.name) == ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"])
    }

    /// Compressed: every tensor of the base is decompressed into memory to be read.
    @Test(arguments: [false, true])
    func packedBaseMergesIntoItsDequantizedWeights(compressed: Bool) throws {
        let scratch = try TemporaryDirectory("qlora-merge")
        defer { scratch.remove() }
        let dir = scratch.url
        let baseURL = try MergeFixture.packedBase(in: dir, compress: compressed)
        let out = dir.appendingPathComponent("merged")
        let summary = try AdapterMerge.merge(model: baseURL, adapter: MergeFixture.adapter, output: out)
        #expect(summary.merged.count == 14 && summary.tensors.allSatisfy { $0.error == nil })

        let base = try PackedCheckpoint(url: baseURL)
        let adapter = try PEFTAdapter(directory: MergeFixture.adapter)
        let merged = try SafetensorsFile(url: out.appendingPathComponent("model.safetensors"))
        #expect(merged.tensors.count == base.tensors.count)
        for info in base.tensors {
            var expected = try base.floats(info.name).array
            if let module = MergeFixture.module(info.name, adapter) {
                expected = zip(expected, try adapter.delta(module: module)).map(+)
            }
            #expect(maxAbsDifference(try merged.floats(info.name), expected) == 0, "\(info.name)")
        }
        // bitsandbytes' NF4 + double quant base with the adapter attached computes the same.
        let reference = try SafetensorsFile(url: MergeFixture.reference)
        for sequence in ["seq1", "seq2"] {
            #expect(maxAbsDifference(try MergeFixture.logits(out, sequence), try reference.floats("\(sequence).qlora_logits")) <= 1e-4)
        }
    }

    /// A packed base that keeps its embedding, norms and head in BF16 (made by merging
    /// to a BF16 folder, then quantizing that).
    @Test func packedBaseWithHalfPrecisionTensors() throws {
        let scratch = try TemporaryDirectory("qlora-merge")
        defer { scratch.remove() }
        let half = scratch.appending("bf16")
        _ = try AdapterMerge.merge(model: Reference.tinyLlama, adapter: MergeFixture.adapter, output: half,
                                   options: MergeOptions(format: .huggingFace(dtype: .BF16, maxShardBytes: 1 << 30)))
        let baseURL = try MergeFixture.packedBase(in: scratch.url, from: half)
        let out = scratch.appending("merged")
        _ = try AdapterMerge.merge(model: baseURL, adapter: MergeFixture.adapter, output: out)
        let base = try PackedCheckpoint(url: baseURL)
        #expect(try base.info("model.embed_tokens.weight").storage == .float(.BF16))
        let adapter = try PEFTAdapter(directory: MergeFixture.adapter)
        let source = try SafetensorsFile(url: half.appendingPathComponent("model.safetensors"))
        let merged = try SafetensorsFile(url: out.appendingPathComponent("model.safetensors"))
        for info in base.tensors {
            var expected = info.isQuantized ? try base.floats(info.name).array : try source.floats(info.name)
            if let module = MergeFixture.module(info.name, adapter) {
                expected = zip(expected, try adapter.delta(module: module)).map(+)
            }
            #expect(maxAbsDifference(try merged.floats(info.name), expected) == 0, "\(info.name)")
        }
    }

    @Test func shardedOutputLoadsLikeOneFile() throws {
        let scratch = try TemporaryDirectory("qlora-merge")
        defer { scratch.remove() }
        let dir = scratch.url
        let out = dir.appendingPathComponent("merged")
        let summary = try AdapterMerge.merge(model: Reference.tinyLlama, adapter: MergeFixture.adapter, output: out,
                                             options: MergeOptions(format: .huggingFace(dtype: .F32, maxShardBytes: 300_000)))
        let shards = summary.files.filter { $0.hasPrefix("model-") }
        #expect(shards.count > 2 && shards.allSatisfy { $0.hasSuffix("-of-0000\(shards.count).safetensors") })
        #expect(summary.files.contains("model.safetensors.index.json") && !summary.files.contains("model.safetensors"))
        let checkpoint = try HFCheckpoint(directory: out)
        try checkpoint.validate()
        #expect(checkpoint.files.count == shards.count)
        // No shard is over the limit unless it holds a single larger tensor (the embedding, 196 KB, fits).
        #expect(checkpoint.files.allSatisfy { $0.file.size <= 300_000 + 4096 })
        let reference = try SafetensorsFile(url: MergeFixture.reference)
        #expect(maxAbsDifference(try MergeFixture.logits(out, "seq1"), try reference.floats("seq1.merged_logits")) <= 1e-4)
    }

    @Test(arguments: [TensorDType.F16, .BF16])
    func halfPrecisionOutputRoundsToNearest(dtype: TensorDType) throws {
        let scratch = try TemporaryDirectory("qlora-merge")
        defer { scratch.remove() }
        let dir = scratch.url
        let exact = dir.appendingPathComponent("f32"), half = dir.appendingPathComponent("half")
        _ = try AdapterMerge.merge(model: Reference.tinyLlama, adapter: MergeFixture.adapter, output: exact)
        let summary = try AdapterMerge.merge(model: Reference.tinyLlama, adapter: MergeFixture.adapter, output: half,
                                             options: MergeOptions(format: .huggingFace(dtype: dtype, maxShardBytes: 1 << 30)))
        #expect(summary.format == "safetensors \(dtype.rawValue)")
        // config.json declares the type written, and differs from the base's in nothing else.
        let config = try String(contentsOf: half.appendingPathComponent("config.json"), encoding: .utf8)
        let original = try String(contentsOf: Reference.tinyLlama.appendingPathComponent("config.json"), encoding: .utf8)
        let name = dtype == .F16 ? "float16" : "bfloat16"
        #expect(config == original.replacingOccurrences(of: "\"dtype\": \"float32\"", with: "\"dtype\": \"\(name)\""))
        #expect(config != original)
        let x = try SafetensorsFile(url: exact.appendingPathComponent("model.safetensors"))
        let y = try SafetensorsFile(url: half.appendingPathComponent("model.safetensors"))
        for record in summary.tensors {
            #expect(try y.info(record.name).dtype == dtype)
            let values = try x.floats(record.name), stored = try y.floats(record.name)
            for (v, s) in zip(values, stored) where !isNearest(s, to: v, dtype) {
                Issue.record("\(record.name): \(v) stored as \(s)")
                break
            }
            var direct = ReconstructionError()
            values.withUnsafeBufferPointer { v in stored.withUnsafeBufferPointer { direct.add(reference: v, approximation: $0, firstIndex: 0) } }
            let error = try #require(record.error)
            #expect(error.count == direct.count && error.maxAbs == direct.maxAbs && error.maxAbsIndex == direct.maxAbsIndex)
            #expect(abs(error.sumSquaredError - direct.sumSquaredError) <= 1e-9 * direct.sumSquaredError)
        }
        #expect(summary.errorToChange.map { $0 < 0.05 } == true)
    }

    /// `s` is a value of `dtype` and no value of it is nearer to `v`.
    private func isNearest(_ s: Float, to v: Float, _ dtype: TensorDType) -> Bool {
        if dtype == .F16 { return s == Float(Float16(v)) }
        guard s.bitPattern & 0xFFFF == 0 else { return false }
        let step = Float(bitPattern: (s.bitPattern & 0x7FFF_0000) + 0x1_0000) - abs(s)
        return abs(s - v) <= step / 2
    }
}
