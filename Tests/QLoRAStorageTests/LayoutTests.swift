import QLoRAStorage
import Testing

@Test func nf4DoubleQuantCostsQLoRABits() {
    // QLoRA's figure: 4 + 8/64 + 32/(64·256) bits per weight for NF4, block 64, double quant.
    let layout = PackedLayout(spec: QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8), count: 4096 * 4096)
    let expected = 4.0 + 8.0 / 64 + 32.0 / (64 * 256)
    // The one fp32 offset per tensor adds 32 bits over 16M weights.
    #expect(abs(layout.bitsPerWeight - expected) < 1e-5)
}
