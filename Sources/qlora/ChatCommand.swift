import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora chat --model PATH [--adapter DIR]`: a conversation on standard input,
/// one user message per line, each reply streamed as it is generated. The work is
/// `ChatSession`'s; this reads lines and prints.
struct ChatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat with a model through its chat template: one message per line on standard input.",
        discussion: """
        Every reply sees the whole conversation so far, rendered by the chat template (the model's own, or \
        --chat-template); when it no longer fits the context, the oldest turns are dropped (a --system message \
        stays). The input ends the chat at its end (Ctrl-D on a terminal); blank lines are skipped.
        """
    )

    @OptionGroup var model: ModelOptions

    @OptionGroup var chat: ChatOptions

    @Option(name: .customLong("max-tokens"), help: "Tokens per reply at most.")
    var maxTokens = 256

    @OptionGroup var sampling: SamplingOptions

    @OptionGroup var compute: ComputeThreads

    func validate() throws {
        guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive, not \(maxTokens)") }
    }

    func run() throws {
        try compute.apply()
        let loaded = try model.load()
        let template = try chat.template(of: loaded)
        let session = ChatSession(model: loaded.model, tokenizer: try loaded.tokenizer(), template: template, system: chat.system,
                                  stops: sampling.stops)
        var sampler = try sampling.sampler().sampler
        let terminal = isatty(STDIN_FILENO) == 1
        let err = FileHandle.standardError, out = FileHandle.standardOutput
        if terminal { err.write(Data("chatting with \(loaded.url.lastPathComponent) (\(template) template); Ctrl-D ends\n> ".utf8)) }
        while let line = readLine() {
            guard !line.allSatisfy(\.isWhitespace) else {
                if terminal { err.write(Data("> ".utf8)) }
                continue
            }
            let reply = try session.reply(to: line, maxTokens: maxTokens, sampler: &sampler) { out.write(Data($0.utf8)) }
            out.write(Data("\n".utf8))
            if reply.droppedMessages > 0 {
                err.write(Data("(the \(reply.droppedMessages) oldest messages no longer fit the context of \(loaded.model.configuration.maxPositionEmbeddings) tokens and were dropped)\n".utf8))
            }
            if reply.generation.stopReason == .maxTokens { err.write(Data("(cut at --max-tokens \(maxTokens))\n".utf8)) }
            if terminal { err.write(Data("> ".utf8)) }
        }
    }
}
