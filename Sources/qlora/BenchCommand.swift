import ArgumentParser

/// `qlora bench ...`: performance measurements on synthetic models.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure performance on synthetic models of realistic shape.",
        subcommands: [BenchGenerateCommand.self]
    )
}
