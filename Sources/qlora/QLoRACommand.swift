import ArgumentParser
import QLoRAKit

@main
struct QLoRACommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qlora",
        abstract: "Quantize Hugging Face checkpoints and fine-tune them with QLoRA on a CPU.",
        subcommands: [DemoCommand.self, QuantizeCommand.self, InspectCommand.self, TrainCommand.self, GenerateCommand.self, ChatCommand.self,
                      EvalCommand.self, MergeCommand.self, BenchCommand.self]
    )
}
