// swift-tools-version: 6.1
// Micro-benchmarks (ordo-one's package-benchmark), kept out of the main
// package's dependency graph: `cd Benchmarks && swift package benchmark`.
import PackageDescription

let package = Package(
    name: "QLoRAKitBenchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [
        // Named so the product reference below does not depend on the checkout folder name.
        .package(name: "QLoRAKit", path: ".."),
        // Only the malloc interposer trait: jemalloc and the runtime interposer are not needed here.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "Kernels",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "QLoRAKit", package: "QLoRAKit"),
            ],
            path: "Benchmarks/Kernels",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
