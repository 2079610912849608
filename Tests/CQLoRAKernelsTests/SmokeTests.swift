import CQLoRAKernels
import Testing

@Test func blockBytes() {
    #expect(qk_block_bytes(Int32(QK_TYPE_NF4.rawValue), 64) == 32)
    #expect(qk_block_bytes(Int32(QK_TYPE_INT8.rawValue), 32) == 32)
    #expect(qk_block_bytes(Int32(QK_TYPE_INT8.rawValue), 48) == 0)
}

/// The peak probe counts 2 flops per lane of each of its 12 multiply-add chains per iteration,
/// on the vectors of the active instruction set, and its results stay finite.
@Test func fmaProbeCountsItsFlops() {
    var sink: Float = 0
    let flops = qk_fma_probe(1000, &sink)
    let lanes = flops / (2 * 12 * 1000)
    #expect([1, 4, 8, 16].contains(lanes))
    #expect(sink.isFinite && sink > 0)
}
