import Foundation
import QLoRAKit
import Testing
import _TestSupport

@Suite struct EvaluatorTests {
    /// The fp32 baseline of stories260K's README: each of the 200 sampled
    /// stories on its own with BOS, NLL 1.30085 over 50,479 tokens.
    @Test func storiesPerplexityMatchesTheReference() throws {
        let loaded = try LoadedModel(contentsOf: EmbeddedModel.directory)
        let data = try EvaluationData.load(Fixtures.url("model/stories260K/generated_stories.jsonl"),
                                           vocabularySize: loaded.model.configuration.vocabularySize, tokenizer: loaded.tokenizer)
        #expect(data.sequences.count == 200 && data.scored == nil)
        let result = try Evaluator(model: loaded.model).evaluate(data)
        #expect(result.tokens == 50_479)
        #expect(abs(result.loss - 1.300854928598487) <= 2e-5)
        #expect(abs(result.perplexity - 3.6724350452423096) <= 1e-4)
        #expect(result.klDivergence == nil && result.top1Agreement == nil)
    }

    @Test func windowsOverlapByOneSoEachTokenIsPredictedOnce() {
        #expect(Evaluator.windows(count: 10, context: 4) == [0..<4, 3..<7, 6..<10])
        #expect(Evaluator.windows(count: 11, context: 4) == [0..<4, 3..<7, 6..<10, 9..<11])
        #expect(Evaluator.windows(count: 3, context: 8) == [0..<3])
        #expect(Evaluator.windows(count: 1, context: 8).isEmpty)
    }

    /// A 37-token sequence in windows of 16: the loss is the windows' summed
    /// cross-entropy (from the training forward) over the tokens predicted.
    @Test func longSequencesAreScoredWindowByWindow() throws {
        let model = try LlamaModel(directory: Reference.tinyLlama), ids = Reference.expected.seq2
        var sum = 0.0, count = 0
        for window in Evaluator.windows(count: ids.count, context: 16) {
            let loss = try #require(try model.forward(TokenBatch(sequences: [Array(ids[window])])))
            sum += loss.sum
            count += loss.count
        }
        let result = try Evaluator(model: model, context: 16).evaluate([ids])
        #expect(count == ids.count - 1 && result.tokens == count)
        #expect(abs(result.loss - sum / Double(count)) <= 1e-5)
    }

    /// With a mask, only the marked tokens count, window by window: the same
    /// figure as the training forward with the unmarked targets ignored.
    @Test func onlyMarkedTokensAreScored() throws {
        let model = try LlamaModel(directory: Reference.tinyLlama), ids = Reference.expected.seq2
        // Tokens 20-22 left out make a 16-token window (15..<31) score fewer tokens;
        // the window 30..<37 scores none and is skipped.
        let scored = ids.indices.map { $0 % 3 != 0 && !(20...22).contains($0) && $0 < 30 }
        var sum = 0.0, count = 0
        for window in Evaluator.windows(count: ids.count, context: 16) {
            var batch = TokenBatch(sequences: [Array(ids[window])])
            for (i, t) in window.dropLast().enumerated() where !scored[t + 1] { batch.targets![i] = -100 }
            guard batch.targets!.contains(where: { $0 != -100 }) else { continue }
            let loss = try #require(try model.forward(batch))
            sum += loss.sum
            count += loss.count
        }
        let result = try Evaluator(model: model, context: 16).evaluate([ids], scored: [scored])
        #expect(result.tokens == scored.dropFirst().filter { $0 }.count && result.tokens == count)
        #expect(abs(result.loss - sum / Double(count)) <= 1e-5)

        let evaluator = try Evaluator(model: model, context: 16)
        #expect(throws: GenerationError.self) { try evaluator.evaluate([ids], scored: [Array(scored.dropLast())]) }
        #expect(throws: GenerationError.self) { try evaluator.evaluate([ids], scored: [[Bool](repeating: false, count: ids.count)]) }
    }

    /// The fine-tuning formats are scored where training's loss is: the
    /// embedded valid.jsonl gives the validation loss of a training run (the
    /// training forward over each example, its prompt's targets ignored).
    @Test func fineTuningDataGivesTheValidationLoss() throws {
        let loaded = try LoadedModel(contentsOf: EmbeddedModel.directory)
        let url = EmbeddedModel.directory.appendingPathComponent("valid.jsonl")
        let data = try EvaluationData.load(url, vocabularySize: 512, tokenizer: loaded.tokenizer)
        let examples = try TrainingData(url: url, tokenizer: loaded.tokenizer(), configuration: TrainingConfiguration(),
                                        vocabularySize: 512).train.examples
        #expect(data.sequences == examples.map(\.inputIDs))
        #expect(data.scored == examples.map { $0.labels.map { $0 != TrainingExample.ignoreIndex } })
        var sum = 0.0, count = 0
        for example in examples {
            let n = example.inputIDs.count
            let loss = try #require(try loaded.model.forward(TokenBatch(tokens: example.inputIDs, batchSize: 1, length: n,
                targets: TokenBatch.targets(fromLabels: example.labels, batchSize: 1, length: n))))
            sum += loss.sum
            count += loss.count
        }
        let result = try Evaluator(model: loaded.model).evaluate(data)
        #expect(result.tokens == count && count < data.tokenCount - data.sequences.count)
        #expect(abs(result.loss - sum / Double(count)) <= 1e-5 * (sum / Double(count)))
    }

    /// KL(reference ‖ model) and top-1 agreement of the packed NF4 model
    /// against fp32, recomputed here from both models' full logits.
    @Test func klDivergenceAndTopOneAgreementAgainstAReference() throws {
        let fp32 = try LlamaModel(directory: Reference.tinyLlama)
        let packed = try PackedModelTests.packed(Reference.tinyLlama, PackedModelTests.nf4).model
        let ids = Reference.expected.seq2, v = fp32.configuration.vocabularySize
        func logProbabilities(_ model: LlamaModel) throws -> [[Double]] {
            try model.forward(TokenBatch(sequences: [ids], nextTokenTargets: false))
            return (0..<(ids.count - 1)).map { row in
                let l = model.logits(row: row).map(Double.init)
                let lse = log(l.map { exp($0) }.reduce(0, +))
                return l.map { $0 - lse }
            }
        }
        let p = try logProbabilities(fp32), q = try logProbabilities(packed)
        var kl = 0.0, agree = 0
        for (r, m) in zip(p, q) {
            kl += (0..<v).reduce(0) { $0 + exp(r[$1]) * (r[$1] - m[$1]) }
            if r.indices.max(by: { r[$0] < r[$1] }) == m.indices.max(by: { m[$0] < m[$1] }) { agree += 1 }
        }
        let n = Double(ids.count - 1)
        let result = try Evaluator(model: packed, reference: fp32).evaluate([ids])
        #expect(kl > 0)
        #expect(abs(try #require(result.klDivergence) - kl / n) <= 1e-6)
        #expect(result.top1Agreement == Double(agree) / n)
        let same = try Evaluator(model: fp32, reference: fp32).evaluate([ids])
        #expect(abs(try #require(same.klDivergence)) <= 1e-9 && same.top1Agreement == 1)
        let json = try #require(try JSONSerialization.jsonObject(with: result.jsonData()) as? [String: Any])
        #expect(Set(json.keys).isSuperset(of: ["loss", "perplexity", "tokens", "kl_divergence", "top1_agreement"]))
    }

    @Test func settingsThatCannotWorkAreRefused() throws {
        let model = try LlamaModel(directory: Reference.tinyLlama)
        #expect(throws: GenerationError.self) { try Evaluator(model: model, context: 1) }
        #expect(throws: GenerationError.self) { try Evaluator(model: model, context: 257) }
        let stories = try LlamaModel(directory: EmbeddedModel.directory)
        #expect(throws: GenerationError.self) { try Evaluator(model: model, reference: stories) }
        #expect(throws: GenerationError.self) { try Evaluator(model: model).evaluate([[1], [2]]) }
    }
}

/// Data files and adapters that do not fit the model, each refused with the
/// file (and line) named.
@Suite struct BadInputTests {
    let directory: TemporaryDirectory

    init() throws {
        directory = try TemporaryDirectory("bad-input")
    }

    func file(_ name: String, _ text: String) throws -> URL {
        let url = directory.appending(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    func load(_ url: URL) throws -> [[Int32]] {
        try EvaluationData.load(url, vocabularySize: 512) { try Tokenizer(directory: EmbeddedModel.directory) }.sequences
    }

    @Test func dataFormsAreReadAsDocumented() throws {
        defer { directory.remove() }
        let lines = try file("data.jsonl", "{\"input_ids\": [1, 403, 407]}\n\n{\"text\": \"Once upon a time\"}\n")
        #expect(try load(lines) == [[1, 403, 407], [1, 403, 407, 261, 378]])
        #expect(try load(try file("data.txt", "Once upon a time")) == [[1, 403, 407, 261, 378]])
        // A chat: only the assistant's turn (and its end) is scored, as in training.
        let chat = try file("chat.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"Once\"}, {\"role\": \"assistant\", \"content\": \"upon a time\"}]}\n")
        let tokenizer = try Tokenizer(directory: EmbeddedModel.directory)
        let template = try ChatTemplate.named("chatml")
        let data = try EvaluationData.load(chat, vocabularySize: 512, chatTemplate: template) { tokenizer }
        let example = try ExampleBuilder(tokenizer: tokenizer, options: ExampleOptions(), chatTemplate: template)
            .encode(JSONLines.read(chat)[0]).0
        #expect(data.sequences == [example.inputIDs])
        #expect(data.scored == [example.labels.map { $0 != TrainingExample.ignoreIndex }])
        let scored = try #require(data.scored?.first)
        #expect(scored.contains(true) && scored.contains(false))
    }

    @Test func tokenIDsOutsideTheVocabularyNameTheFileAndLine() throws {
        defer { directory.remove() }
        let url = try file("ids.jsonl", "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2, 9999]}\n")
        let error = #expect(throws: EvaluationDataError.tokenOutOfVocabulary(url, line: 2, index: 2, token: 9999, vocabularySize: 512)) {
            try load(url)
        }
        #expect(error?.localizedDescription.contains("\(url.path):2:") == true)
    }

    @Test func malformedLinesNameTheFileAndLine() throws {
        defer { directory.remove() }
        let url = try file("bad.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"\n")
        #expect(throws: EvaluationDataError.invalidLine(url, line: 2, reason: "not a JSON object")) { try load(url) }
        let other = try file("other.jsonl", "{\"values\": [1]}\n")
        #expect(throws: EvaluationDataError.self) { try load(other) }
        // The fine-tuning formats are read as training reads them, with its errors.
        let half = try file("half.jsonl", "{\"prompt\": \"a\", \"completion\": \" b\"}\n{\"prompt\": \"a\"}\n")
        #expect(throws: DatasetError.invalidLine(half, line: 2, reason: "missing key \"completion\"")) { try load(half) }
        let chat = try file("chat.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n")
        #expect(throws: ChatTemplateError.missing(nil)) { try load(chat) }
        let mixed = try file("mixed.jsonl", "{\"text\": \"a b\"}\n{\"prompt\": \"a\", \"completion\": \" b\"}\n")
        #expect(throws: EvaluationDataError.self) { try load(mixed) }
        let fractional = try file("fraction.jsonl", "{\"input_ids\": [1, 2.5]}\n")
        #expect(throws: EvaluationDataError.self) { try load(fractional) }
    }

    @Test func tooFewTokensIsAClearError() throws {
        defer { directory.remove() }
        let one = try file("one.jsonl", "{\"input_ids\": [5]}\n{\"input_ids\": []}\n")
        #expect(throws: EvaluationDataError.tooFewTokens(one, tokens: 1, sequences: 2)) { try load(one) }
        let empty = try file("empty.txt", "") // BOS alone
        #expect(throws: EvaluationDataError.tooFewTokens(empty, tokens: 1, sequences: 1)) { try load(empty) }
    }

    /// tiny-llama's adapter on stories260K: same module names, other shapes;
    /// then one naming a layer stories260K does not have.
    @Test func adaptersForAnotherBaseAreRefused() throws {
        defer { directory.remove() }
        let model = try PackedModelTests.packed(EmbeddedModel.directory, PackedModelTests.nf4).model
        let adapter = Reference.tinyLlama.appendingPathComponent("adapter")
        let weights = adapter.appendingPathComponent("adapter_model.safetensors")
        #expect(throws: ModelError.shapeMismatch(weights, tensor: "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight",
                                                 expected: [8, 172], found: [8, 352])) {
            try model.loadLoRA(directory: adapter)
        }
        let folder = directory.appending("adapter")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: adapter.appendingPathComponent("adapter_config.json"),
                                         to: folder.appendingPathComponent("adapter_config.json"))
        var writer = SafetensorsWriter()
        try writer.add("base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", shape: [8, 64], floats: .init(repeating: 0, count: 512))
        try writer.write(to: folder.appendingPathComponent("adapter_model.safetensors"))
        let error = #expect(throws: ModelError.self) { try model.loadLoRA(directory: folder) }
        #expect(error?.localizedDescription.contains("model.layers.9.self_attn.q_proj") == true)
        #expect(model.trainableParameters == nil)
    }
}
