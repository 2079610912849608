// Merging into packed outputs: the stored blocks are what the block codec makes
// of the exact merged weights, and the reported errors are what a direct
// comparison of the two gives.

import Foundation
import QLoRAKit
import Testing
import _TestSupport

@Suite struct MergePackedTests {
    static let specs = [QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8), QuantSpec(type: .int8, blockSize: 32, scaleKind: .f32)]

    @Test(arguments: specs)
    func requantizedOutputRoundTrips(spec: QuantSpec) throws {
        let scratch = try TemporaryDirectory("qlora-merge")
        defer { scratch.remove() }
        let dir = scratch.url
        let out = dir.appendingPathComponent("merged.qlora")
        let summary = try AdapterMerge.merge(model: Reference.tinyLlama, adapter: MergeFixture.adapter, output: out,
                                             options: MergeOptions(format: .packed(spec, compress: false)))
        #expect(summary.format == "packed \(spec)" && summary.files.isEmpty)
        let packed = try PackedCheckpoint(url: out)
        try packed.verify()
        #expect(packed.metadata["producer"] == "qlora merge" && packed.metadata["quantization"] == spec.description)
        #expect(packed.configJSON == (try Data(contentsOf: Reference.tinyLlama.appendingPathComponent("config.json"))))

        let base = try SafetensorsFile(url: Reference.tinyLlama.appendingPathComponent("model.safetensors"))
        let adapter = try PEFTAdapter(directory: MergeFixture.adapter)
        var overall = ReconstructionError()
        for record in summary.tensors {
            let original = try base.floats(record.name)
            guard let module = MergeFixture.module(record.name, adapter) else {
                // Embedding, norms and lm_head: kept as they were.
                #expect(record.storage == "F32" && record.error == nil)
                #expect(try packed.floats(record.name).array == original)
                continue
            }
            let exact = zip(original, try adapter.delta(module: module)).map(+)
            let q = try packed.quantized(record.name)
            #expect(record.storage == spec.description && q.spec == spec)
            #expect(q.regionBytes == (try BlockCodec.quantize(exact, shape: record.shape, spec: spec)).regionBytes, "\(record.name)")
            let direct = exact.withUnsafeBufferPointer { BlockCodec.error(of: q, reference: $0) }
            let error = try #require(record.error)
            #expect(error.count == direct.count && error.maxAbs == direct.maxAbs && error.maxAbsIndex == direct.maxAbsIndex)
            #expect(abs(error.sumSquaredError - direct.sumSquaredError) <= 1e-9 * direct.sumSquaredError)
            #expect(abs(error.relativeRMS - direct.relativeRMS) <= 1e-9)
            overall.merge(direct)
        }
        #expect(summary.merged.count == 14)
        #expect(abs(summary.mergedError.rms - overall.rms) <= 1e-9 * overall.rms && summary.mergedError.maxAbs == overall.maxAbs)
        let ratio = (overall.sumSquaredError / summary.change.sumSquaredError).squareRoot()
        #expect(abs(try #require(summary.errorToChange) - ratio) <= 1e-9 * ratio)
    }

    @Test func unmergedBlocksAreCopiedFromAPackedBase() throws {
        let scratch = try TemporaryDirectory("qlora-merge")
        defer { scratch.remove() }
        let dir = scratch.url
        let spec = QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8)
        let baseURL = try MergeFixture.packedBase(in: dir, spec: spec)
        let adapterURL = dir.appendingPathComponent("adapter")
        try MergeFixture.writeAdapter(adapterURL, tensors: try MergeFixture.fixtureTensors(["q_proj", "v_proj"]))
        let out = dir.appendingPathComponent("merged.qlora")
        let summary = try AdapterMerge.merge(model: baseURL, adapter: adapterURL, output: out,
                                             options: MergeOptions(format: .packed(spec, compress: true)))
        #expect(summary.merged.count == 4)
        let base = try PackedCheckpoint(url: baseURL), packed = try PackedCheckpoint(url: out)
        try packed.verify()
        #expect(packed.files.map(\.name) == base.files.map(\.name))
        let adapter = try PEFTAdapter(directory: adapterURL)
        for info in base.tensors {
            let record = try #require(summary.tensors.first { $0.name == info.name })
            guard info.isQuantized else {
                #expect(try packed.floats(info.name).array == base.floats(info.name).array)
                continue
            }
            if let module = MergeFixture.module(info.name, adapter) {
                let exact = zip(try base.floats(info.name).array, try adapter.delta(module: module)).map(+)
                #expect(try packed.quantized(info.name).regionBytes == BlockCodec.quantize(exact, shape: info.shape, spec: spec).regionBytes)
                #expect(record.error != nil && record.change != nil)
            } else {
                #expect(try packed.quantized(info.name).regionBytes == base.quantized(info.name).regionBytes, "\(info.name)")
                #expect(record.error == nil && !record.merged)
            }
        }
    }

    /// A model whose MLP weights span two merge chunks (128 × 2304 > 2^18), merged
    /// from a folder and from a packed base, to both kinds of output.
    @Test func weightsLargerThanAChunk() throws {
        let scratch = try TemporaryDirectory("qlora-merge")
        defer { scratch.remove() }
        let dir = scratch.url
        let model = dir.appendingPathComponent("model")
        try FileManager.default.createDirectory(at: model, withIntermediateDirectories: true)
        _ = try writeSyntheticModel(to: model, intermediateSize: 2304)
        var rng = SeededGenerator(seed: 11)
        let r = 4
        var tensors: [(key: String, shape: [Int], values: [Float])] = []
        for (module, out, inFeatures) in [("mlp.up_proj", 2304, 128), ("mlp.down_proj", 128, 2304)] {
            let key = "base_model.model.model.layers.0.\(module)"
            tensors.append((key + ".lora_A.weight", [r, inFeatures], rng.gaussian(count: r * inFeatures, std: 0.05)))
            tensors.append((key + ".lora_B.weight", [out, r], rng.gaussian(count: out * r, std: 0.05)))
        }
        let adapterURL = dir.appendingPathComponent("adapter")
        try MergeFixture.writeAdapter(adapterURL, config: ["r": r], tensors: tensors)
        let adapter = try PEFTAdapter(directory: adapterURL)
        let spec = QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8)
        let packedBase = dir.appendingPathComponent("base.qlora")
        _ = try Quantizer.quantize(modelDirectory: model, output: packedBase, options: QuantizeOptions(spec: spec))
        let folderBase = try SafetensorsFile(url: model.appendingPathComponent("model.safetensors"))
        let packed = try PackedCheckpoint(url: packedBase)

        for (i, base) in [model, packedBase].enumerated() {
            let folderOut = dir.appendingPathComponent("hf-\(i)"), packedOut = dir.appendingPathComponent("out-\(i).qlora")
            _ = try AdapterMerge.merge(model: base, adapter: adapterURL, output: folderOut)
            _ = try AdapterMerge.merge(model: base, adapter: adapterURL, output: packedOut, options: MergeOptions(format: .packed(spec, compress: false)))
            let merged = try SafetensorsFile(url: folderOut.appendingPathComponent("model.safetensors"))
            let requantized = try PackedCheckpoint(url: packedOut)
            for module in adapter.modules {
                let name = module + ".weight"
                let w = i == 0 ? try folderBase.floats(name) : try packed.floats(name).array
                let exact = zip(w, try adapter.delta(module: module)).map(+)
                #expect(maxAbsDifference(try merged.floats(name), exact) == 0, "\(name) from \(base.lastPathComponent)")
                let shape = try merged.info(name).shape
                #expect(try requantized.quantized(name).regionBytes == BlockCodec.quantize(exact, shape: shape, spec: spec).regionBytes)
            }
        }
    }
}
