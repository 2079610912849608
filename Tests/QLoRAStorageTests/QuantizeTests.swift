// The quantizer end to end: Hugging Face folders (the embedded stories260K and
// small synthetic ones) to packed checkpoints, read back and compared.

import Foundation
import QLoRAStorage
import Testing
import _TestSupport

/// stories260K as QLoRAKit embeds it, read in place.
let storiesDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Sources/QLoRAKit/Resources/stories260K", isDirectory: true)

@Suite struct QuantizeTests {
    static let grid: [(QuantType, Int)] = QuantType.allCases.flatMap { t in QuantSpec.blockSizes.map { (t, $0) } }

    @Test(arguments: grid)
    func storiesRoundTrip(type: QuantType, blockSize: Int) throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let source = try HFCheckpoint(directory: storiesDirectory)
        for scaleKind in [ScaleKind.f32, .dq8] {
            let spec = QuantSpec(type: type, blockSize: blockSize, scaleKind: scaleKind)
            let url = dir.appendingPathComponent("stories-\(spec.type)-\(blockSize)-\(scaleKind).qlora")
            let summary = try Quantizer.quantize(modelDirectory: storiesDirectory, output: url, options: QuantizeOptions(spec: spec))
            let packed = try PackedCheckpoint(url: url)
            try packed.verify()
            #expect(packed.configJSON == source.configJSON)
            #expect(try packed.embeddedFile("tokenizer.json") == Data(contentsOf: storiesDirectory.appendingPathComponent("tokenizer.json")))
            // Tied: the output head is the embedding and is not stored twice.
            #expect(!packed.contains("lm_head.weight") && summary.skipped == ["lm_head.weight"])
            #expect(packed.tensors.count == 47 && packed.tensors.filter(\.isQuantized).count == 35)

            for info in packed.tensors {
                let original = try source.floats(info.name)
                if info.isQuantized {
                    let expected = try BlockCodec.quantize(original, shape: info.shape, spec: spec)
                    let got = try packed.quantized(info.name)
                    #expect(got.regionBytes == expected.regionBytes, "\(info.name)")
                    #expect(got.dequantized() == expected.dequantized(), "\(info.name)")
                    let error = original.withUnsafeBufferPointer { BlockCodec.error(of: expected, reference: $0) }
                    #expect(summary.tensors.first { $0.name == info.name }?.error == error)
                } else {
                    #expect(try packed.floats(info.name).array == original, "\(info.name)")
                }
            }
            let report = packed.report(verify: false)
            #expect(abs(report.quantizedBitsPerWeight - summary.quantizedBitsPerWeight) < 1e-12)
            #expect(abs(report.bitsPerWeight - summary.bitsPerWeight) < 1e-12)
        }
    }

    @Test func nf4DoubleQuantCostsExactlyQLoRAsBits() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        _ = try writeSyntheticModel(to: dir)
        let url = dir.appendingPathComponent("model.qlora")
        let summary = try Quantizer.quantize(modelDirectory: dir, output: url,
                                             options: QuantizeOptions(spec: QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8)))
        // Four 128×128 projections and three of 256×128: 163,840 weights in 7 tensors,
        // each tensor adding one fp32 offset.
        let quantized = 4 * 128 * 128 + 3 * 256 * 128
        let expected = 4 + 8.0 / 64 + 32.0 / (64 * 256) + Double(7 * 32) / Double(quantized)
        #expect(summary.quantizedParameters == quantized)
        #expect(abs(summary.quantizedBitsPerWeight - expected) < 1e-12)
        let report = try PackedCheckpoint(url: url).report(verify: true)
        #expect(abs(report.quantizedBitsPerWeight - expected) < 1e-12)
        #expect(report.checksumFailures.isEmpty && report.verified)
    }

    /// Whatever number of chunks run at once (`threads`: every CPU, one, three).
    @Test(arguments: [nil, 1, 3] as [Int?])
    func tensorsOfSeveralChunksMatchOneCallQuantization(threads: Int?) throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        _ = try writeSyntheticModel(to: dir, intermediateSize: 2304)
        let source = try HFCheckpoint(directory: dir)
        for spec in [QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8), QuantSpec(type: .int8, blockSize: 256, scaleKind: .f16)] {
            let url = dir.appendingPathComponent("m.qlora")
            let summary = try Quantizer.quantize(modelDirectory: dir, output: url, options: QuantizeOptions(spec: spec, threads: threads))
            let packed = try PackedCheckpoint(url: url)
            let down = try packed.info("model.layers.0.mlp.down_proj.weight")
            #expect(down.count == 128 * 2304 && down.count > 262_144)
            for info in packed.tensors where info.isQuantized {
                let original = try source.floats(info.name)
                let expected = try BlockCodec.quantize(original, shape: info.shape, spec: spec)
                #expect(try packed.quantized(info.name).regionBytes == expected.regionBytes, "\(info.name)")
                let error = original.withUnsafeBufferPointer { BlockCodec.error(of: expected, reference: $0) }
                let reported = try #require(summary.tensors.first { $0.name == info.name }?.error)
                #expect(reported.count == error.count && reported.maxAbs == error.maxAbs && reported.maxAbsIndex == error.maxAbsIndex)
                #expect(abs(reported.rms - error.rms) <= 1e-9 * error.rms)
            }
        }
    }

    @Test func nonFiniteWeightIsRefusedByNameAndIndex() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let target = "model.layers.0.mlp.up_proj.weight"  // [2304, 128]: element 270,000 is in its second chunk
        _ = try writeSyntheticModel(to: dir, intermediateSize: 2304) { name, values in
            if name == target { values[2109 * 128 + 48] = .nan }
        }
        let url = dir.appendingPathComponent("model.qlora")
        let spec = QuantSpec(type: .nf4, blockSize: 64)
        let error = #expect(throws: QuantizerError.self) {
            try Quantizer.quantize(modelDirectory: dir, output: url, options: QuantizeOptions(spec: spec))
        }
        guard case let .nonFinite(_, tensor, index, _, value) = error else {
            Issue.record("expected a non-finite error, got \(String(describing: error))")
            return
        }
        #expect(tensor == target && index == 270_000 && value.isNaN)
        #expect(error?.localizedDescription.contains("element 270000 (row 2109, column 48)") == true)
        #expect(!FileManager.default.fileExists(atPath: url.path))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.contains(".qlora") }.isEmpty)

        let summary = try Quantizer.quantize(modelDirectory: dir, output: url, options: QuantizeOptions(spec: spec, allowNonFinite: true))
        #expect(summary.quantized.count == 7 && summary.error.count == summary.quantizedParameters - 1)
    }

    @Test func nonFiniteNormIsRefusedToo() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        _ = try writeSyntheticModel(to: dir) { name, values in
            if name == "model.norm.weight" { values[3] = -.infinity }
        }
        // Unquantized tensors are checked while they stream out, compressed or not.
        for compress in [false, true] {
            #expect(throws: QuantizerError.nonFinite(dir.appendingPathComponent("model.safetensors"), tensor: "model.norm.weight",
                                                     index: 3, shape: [128], value: -.infinity)) {
                try Quantizer.quantize(modelDirectory: dir, output: dir.appendingPathComponent("m.qlora"),
                                       options: QuantizeOptions(spec: QuantSpec(type: .int8, blockSize: 32), compress: compress))
            }
        }
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("m.qlora").path))
    }

    @Test func compressedFileReadsBackEqual() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let spec = QuantSpec(type: .int4, blockSize: 32, scaleKind: .f16)
        let plainURL = dir.appendingPathComponent("plain.qlora"), zstdURL = dir.appendingPathComponent("zstd.qlora")
        let plain = try Quantizer.quantize(modelDirectory: storiesDirectory, output: plainURL,
                                           options: QuantizeOptions(spec: spec, quantizeEmbeddings: true))
        let zstd = try Quantizer.quantize(modelDirectory: storiesDirectory, output: zstdURL,
                                          options: QuantizeOptions(spec: spec, quantizeEmbeddings: true, compress: true))
        #expect(zstd.fileBytes < plain.fileBytes)
        let a = try PackedCheckpoint(url: plainURL), b = try PackedCheckpoint(url: zstdURL)
        try b.verify()
        #expect(b.tensors.contains { $0.isCompressed })
        #expect(try a.info("model.embed_tokens.weight").isQuantized)
        for info in a.tensors {
            #expect(try a.floats(info.name).array == b.floats(info.name).array, "\(info.name)")
            if info.isQuantized { #expect(try a.quantized(info.name).regionBytes == b.quantized(info.name).regionBytes) }
        }
    }

    @Test func diskFullLeavesNothingAndKeepsTheOldFile() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = dir.appendingPathComponent("out.qlora")
        var options = QuantizeOptions(spec: QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8))
        options.simulateDiskFullAfter = 100_000
        #expect(throws: FileError.self) { try Quantizer.quantize(modelDirectory: storiesDirectory, output: url, options: options) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)

        let old = Data("the previous checkpoint".utf8)
        try old.write(to: url)
        let error = #expect(throws: FileError.self) { try Quantizer.quantize(modelDirectory: storiesDirectory, output: url, options: options) }
        #expect(error?.localizedDescription.contains("No space left on device") == true)
        #expect(try Data(contentsOf: url) == old)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["out.qlora"])
    }

    @Test func missingOutputFolderIsAClearError() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let error = #expect(throws: FileError.self) {
            try Quantizer.quantize(modelDirectory: storiesDirectory, output: dir.appendingPathComponent("missing/out.qlora"),
                                   options: QuantizeOptions(spec: QuantSpec(type: .nf4, blockSize: 64)))
        }
        #expect(error?.localizedDescription.contains("missing: the folder does not exist") == true)
    }

    @Test func progressCoversEveryByteInOrder() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        var seen: [QuantizeProgress] = []
        _ = try Quantizer.quantize(modelDirectory: storiesDirectory, output: dir.appendingPathComponent("p.qlora"),
                                   options: QuantizeOptions(spec: QuantSpec(type: .int8, blockSize: 128))) { seen.append($0) }
        #expect(zip(seen, seen.dropFirst()).allSatisfy { $0.bytesDone <= $1.bytesDone && $0.tensorIndex <= $1.tensorIndex })
        #expect(seen.last?.bytesDone == seen.last?.bytesTotal && seen.last?.tensorIndex == 47 && seen.last?.tensorCount == 47)
    }

    @Test func inspectJSONHasTheDocumentedKeys() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = dir.appendingPathComponent("m.qlora")
        let summary = try Quantizer.quantize(modelDirectory: storiesDirectory, output: url,
                                             options: QuantizeOptions(spec: QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8)))
        let report = try PackedCheckpoint(url: url).report(verify: true)
        // `quantize --json` states the same bit rates as `inspect --json`.
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let written = try JSONSerialization.jsonObject(with: encoder.encode(summary)) as! [String: Any]
        #expect(abs(try #require(written["bits_per_weight"] as? Double) - report.bitsPerWeight) < 1e-12)
        #expect(abs(try #require(written["quantized_bits_per_weight"] as? Double) - report.quantizedBitsPerWeight) < 1e-12)
        let json = try JSONSerialization.jsonObject(with: report.jsonData()) as! [String: Any]
        // JSON text keeps doubles to within an ulp.
        #expect(abs(try #require(json["bits_per_weight"] as? Double) - report.bitsPerWeight) < 1e-12)
        #expect(abs(try #require(json["quantized_bits_per_weight"] as? Double) - report.quantizedBitsPerWeight) < 1e-12)
        #expect(report.bitsPerWeight > 7 && report.quantizedBitsPerWeight < 4.2)
        #expect((json["config"] as? [String: Any])?["hidden_size"] as? Int == 64)
        #expect(json["checksum_failures"] as? [String] == [])
        let tensors = try #require(json["tensors"] as? [[String: Any]])
        #expect(tensors.count == 47)
        let q = try #require(tensors.first { $0["name"] as? String == "model.layers.0.self_attn.q_proj.weight" })
        #expect(q["dtype"] as? String == "nf4" && q["block_size"] as? Int == 64 && q["scale_kind"] as? String == "dq8")
        #expect(q["shape"] as? [Int] == [64, 64] && q["checksum"] as? String == "ok")
        #expect(q["bytes"] as? Int == 2048 + 64 + 8)
        #expect(abs(try #require(q["bits_per_weight"] as? Double) - Double((2048 + 64 + 8) * 8) / 4096) < 1e-12)
    }
}
