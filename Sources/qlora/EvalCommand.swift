import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora eval --model PATH --data FILE ...`: next-token loss and perplexity,
/// and with --reference the KL divergence from another model and top-1
/// agreement. The work is `Evaluator`'s; this prints it.
struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Measure next-token cross-entropy and perplexity on a data file, optionally against a reference model.",
        discussion: """
        FILE is plain text (one document, tokenized with BOS) or JSON lines of {"text": ...} or \
        {"input_ids": [...]}, one sequence each, every token after its first scored. JSON lines in the \
        fine-tuning formats ({"prompt": ..., "completion": ...} or {"messages": [...]}, as `train` reads \
        them) are scored where training's loss is: completions and assistant turns, so a valid.jsonl gives \
        the validation loss `train` reports. A sequence longer than --context is cut into windows of \
        --context tokens overlapping by one, each run from an empty cache, so every token is scored once.
        """
    )

    @OptionGroup var model: ModelOptions

    @Option(help: "The data: plain text, or JSON lines with \"text\", \"input_ids\", \"prompt\"/\"completion\" or \"messages\".")
    var data: String

    @OptionGroup var chatTemplate: ChatTemplateOption

    @Flag(name: .customLong("no-eos"), help: "Do not end completions with the end-of-sequence token (for data trained with --no-eos).")
    var noEOS = false

    @Option(help: "A reference model (folder or packed file, same vocabulary): also report KL(reference ‖ model) and top-1 agreement.")
    var reference: String?

    @Option(help: "Tokens per window (default: max_position_embeddings, at most 2048).")
    var context: Int?

    @Flag(help: "Print one JSON object: loss, perplexity, tokens, seconds, tokens_per_second (+ kl_divergence, top1_agreement).")
    var json = false

    @OptionGroup var compute: ComputeThreads

    func run() throws {
        try compute.apply()
        let loaded = try model.load()
        let referenceModel = try reference.map { try LoadedModel(contentsOf: URL(fileURLWithPath: $0)).model }
        let dataURL = URL(fileURLWithPath: data)
        let sequences = try loaded.withChatTemplate(chatTemplate.template()) { template in
            try EvaluationData.load(dataURL, vocabularySize: loaded.model.configuration.vocabularySize, chatTemplate: template,
                                    appendEOS: !noEOS, tokenizer: loaded.tokenizer)
        }
        let evaluator = try Evaluator(model: loaded.model, reference: referenceModel, context: context)
        let result = try evaluator.evaluate(sequences)
        if json {
            FileHandle.standardOutput.write(try result.jsonData())
            print()
            return
        }
        print(String(format: "loss %.6f, perplexity %.4f over %d tokens (%d sequences, context %d) in %.2f s, %.1f tokens/s",
                     result.loss, result.perplexity, result.tokens, sequences.sequences.count, evaluator.context, result.seconds, result.tokensPerSecond))
        if let kl = result.klDivergence, let top1 = result.top1Agreement {
            print(String(format: "against %@: KL divergence %.6f nats/token, top-1 agreement %.4f", reference!, kl, top1))
        }
    }
}
