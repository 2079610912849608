import CQLoRAKernels
import QLoRAStorage
import Testing
import _TestSupport

/// Our codec against bitsandbytes 0.50.2 on CPU, on two weights of the tiny-llama
/// fixture: down_proj [128, 352] (blocks straddle rows) and q_proj [128, 128].
/// Data: Tests/Fixtures/bnb, trimmed from shared/fixtures/tiny-llama by trim.py there.
@Suite struct BitsandbytesTests {
    /// The fixture file, one weight from it, and the weight's row length.
    static func load(_ tensor: String) throws -> (file: SafetensorsFile, weight: [Float], cols: Int) {
        let file = try SafetensorsFile(url: Fixtures.url("bnb/bnb_tiny_llama.safetensors"))
        return (file, try file.floats("\(tensor).weight"), try file.info("\(tensor).weight").shape[1])
    }

    @Test(arguments: ["down_proj", "q_proj"], [QuantType.nf4, .fp4])
    func fourBitCodesScalesAndDequantizationAreExact(tensor: String, type: QuantType) throws {
        let (file, w, cols) = try Self.load(tensor)
        let key = "\(tensor).\(type)"
        // bitsandbytes packs flat element 2k in the high nibble of byte k.
        let bnbNibbles = try Array(file.bytes("\(key).packed")).flatMap { [$0 >> 4, $0 & 15] }
        let bnbDequant = try file.floats("\(key).dequant")  // its first 32 rows
        for reference in [false, true] {
            let q = Codec.quantize(w, type, blockSize: 64, reference: reference)
            let nibbles = Codec.nibbles(q.codes, blockSize: 64)
            let wrong = zip(nibbles, bnbNibbles).filter { $0 != $1 }.count
            #expect(wrong == 0, "\(key) reference=\(reference): \(wrong) of \(w.count) codes differ")
            #expect(differences(q.absmax.bits, try file.floats("\(key).absmax").bits).isEmpty, "\(key) absmax")
            let y = Codec.dequantize(q.codes, absmax: q.absmax, type, blockSize: 64, reference: reference)
            let dequant = differences(Array(y.prefix(32 * cols)).bits, bnbDequant.bits)
            #expect(dequant.isEmpty, "\(key) reference=\(reference): dequantized elements \(dequant) differ")
        }
    }

    @Test(arguments: ["down_proj", "q_proj"], [QuantType.nf4, .fp4])
    func doubleQuantizationIsExact(tensor: String, type: QuantType) throws {
        let (file, w, cols) = try Self.load(tensor)
        let key = "\(tensor).\(type)_dq"
        let q = Codec.quantize(w, type, blockSize: 64)
        let (codes, scales, offset) = Codec.doubleQuantize(q.absmax)

        // down_proj block 159 is a near-tie that an exact nearest-code search gets wrong.
        let bnbCodes = try Array(file.bytes("\(key).absmax_q"))
        let wrong = differences(codes, bnbCodes, limit: .max)
        #expect(wrong.isEmpty, "\(key): absmax_q differs at blocks \(wrong)")
        #expect(scales.bits == (try file.floats("\(key).nested_absmax")).bits, "\(key) nested_absmax")
        #expect(offset.bitPattern == (try file.floats("\(key).offset"))[0].bitPattern, "\(key) offset")

        let decoded = Codec.decodeDoubleQuantized(codes, groupScales: scales, offset: offset)
        let scalesWrong = differences(decoded.bits, try file.floats("\(key).absmax_dequant").bits)
        #expect(scalesWrong.isEmpty, "\(key): decoded absmax differs at blocks \(scalesWrong)")
        let y = Codec.dequantize(q.codes, absmax: decoded, type, blockSize: 64)
        let dequant = differences(Array(y.prefix(32 * cols)).bits, try file.floats("\(key).dequant").bits)
        #expect(dequant.isEmpty, "\(key): dequantized elements \(dequant) differ")
    }

    /// INT8 with one block per row is LLM.int8-style row-wise quantization.
    @Test func int8RowBlocksMatchRowwiseInt8() throws {
        let (file, w, _) = try Self.load("q_proj")
        let bnbCodes = try file.bytes("q_proj.int8_rowwise.codes").map { Int8(bitPattern: $0) }
        for reference in [false, true] {
            let q = Codec.quantize(w, .int8, blockSize: 128, reference: reference)
            let codes = q.codes.map { Int8(bitPattern: $0) }
            let wrong = zip(codes, bnbCodes).filter { $0 != $1 }.count
            #expect(wrong == 0, "reference=\(reference): \(wrong) of \(w.count) codes differ")
            #expect(differences(q.absmax.bits, try file.floats("q_proj.int8_rowwise.row_absmax").bits).isEmpty, "row absmax")
        }
    }
}
