import CQLoRAKernels
import Testing

@Test func blockBytes() {
    #expect(qk_block_bytes(Int32(QK_TYPE_NF4.rawValue), 64) == 32)
    #expect(qk_block_bytes(Int32(QK_TYPE_INT8.rawValue), 32) == 32)
    #expect(qk_block_bytes(Int32(QK_TYPE_INT8.rawValue), 48) == 0)
}
