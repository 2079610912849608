// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "QLoRAKit",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "QLoRAKit", targets: ["QLoRAKit"]),
        .executable(name: "qlora", targets: ["qlora"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // Block codec and dequantize-on-the-fly kernels. No -mavx2 here: SIMD paths
        // carry per-function target attributes and are chosen at run time.
        .target(name: "CQLoRAKernels"),
        // Debian: libopenblas-dev (the reference fp32 GEMM we compare against and use).
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        // Debian: libzstd-dev (optional compression of packed checkpoints).
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),

        // Checkpoints on disk: safetensors, config.json, the packed format, quantization.
        .target(name: "QLoRAStorage", dependencies: ["CQLoRAKernels", "CZstd"]),
        // Products with the frozen packed base on all cores.
        .target(name: "QLoRACompute", dependencies: ["QLoRAStorage", "CQLoRAKernels", "COpenBLAS"]),
        // Model-independent training pieces: AdamW, schedules, datasets and batches,
        // memory estimate, atomic training checkpoints, metrics.
        .target(name: "QLoRATraining", dependencies: ["QLoRAStorage"]),
        // SVG charts (loss curves, memory-vs-accuracy scatter); no dependencies.
        .target(name: "QLoRAPlot"),
        // Hugging Face tokenizer.json (byte-level and SentencePiece-style BPE), pure Swift.
        .target(name: "QLoRATokenizer"),
        // Llama layers with hand-written forward and backward, adapters attached to the frozen linears
        // (QLoRATraining for the seeded generator behind LoRA dropout).
        .target(name: "QLoRAModel", dependencies: ["QLoRAStorage", "QLoRACompute", "QLoRATraining", "CQLoRAKernels", "COpenBLAS"]),
        // The training loop: model, tokenizer, data, optimizer, checkpoints and metrics wired together.
        .target(name: "QLoRATrainer", dependencies: ["QLoRAModel", "QLoRATraining", "QLoRATokenizer", "QLoRAPlot"]),
        // The public face: re-exports the modules above and carries the embedded default model.
        .target(
            name: "QLoRAKit",
            dependencies: ["QLoRAStorage", "QLoRACompute", "QLoRATokenizer", "QLoRAModel", "QLoRATraining", "QLoRAPlot",
                           "QLoRATrainer"],
            resources: [.copy("Resources/stories260K")]
        ),
        .executableTarget(
            name: "qlora",
            dependencies: ["QLoRAKit", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),

        // Helpers shared by the test targets (fixture paths, comparisons, random data).
        .target(name: "_TestSupport", dependencies: ["QLoRAStorage", "QLoRAModel"], path: "Tests/_TestSupport"),
        .testTarget(name: "CQLoRAKernelsTests", dependencies: ["CQLoRAKernels", "QLoRAStorage", "_TestSupport"]),
        .testTarget(name: "QLoRAStorageTests", dependencies: ["QLoRAStorage", "_TestSupport"]),
        // Depends on QLoRAKit for the embedded stories260K tokenizer and its fine-tuning texts.
        .testTarget(name: "QLoRATokenizerTests", dependencies: ["QLoRATokenizer", "QLoRAKit", "_TestSupport"]),
        .testTarget(name: "QLoRAModelTests", dependencies: ["QLoRAKit", "_TestSupport"]),
        .testTarget(
            name: "QLoRAComputeTests", dependencies: ["QLoRACompute", "CQLoRAKernels", "COpenBLAS", "_TestSupport"]),
        .testTarget(name: "QLoRATrainingTests", dependencies: ["QLoRATraining", "_TestSupport"]),
        .testTarget(name: "QLoRAPlotTests", dependencies: ["QLoRAPlot", "_TestSupport"]),
        // Depends on QLoRAKit for the embedded stories260K model and its fine-tuning set.
        .testTarget(name: "QLoRATrainerTests", dependencies: ["QLoRAKit", "_TestSupport"]),
    ]
)
