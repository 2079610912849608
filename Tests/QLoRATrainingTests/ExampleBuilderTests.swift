// From records to ids and labels: which tokens are trained, seams inside a token,
// EOS, truncation and skipping, with ToyTokenizer (which merges "ab" and adds BOS).

import Foundation
import QLoRATraining
import Testing

@Suite struct ExampleBuilderTests {
    let tokenizer = ToyTokenizer()
    let source = URL(fileURLWithPath: "/data/train.jsonl")
    let ignore = TrainingExample.ignoreIndex

    private func record(_ content: DatasetRecord.Content, line: Int = 1) -> DatasetRecord {
        DatasetRecord(content, source: source, line: line)
    }

    private func builder(_ options: ExampleOptions = .init(), template: ChatTemplate? = nil, vocabulary: Int? = nil) -> ExampleBuilder {
        ExampleBuilder(tokenizer: tokenizer, options: options, chatTemplate: template, vocabularySize: vocabulary)
    }

    @Test func textIsTrainedEverywhereAndEndsWithEOS() throws {
        let (e, merged) = try builder().encode(record(.text("xy")))
        let ids = [1] + tokenizer.ids("xy") + [2]
        #expect(e.inputIDs == ids)
        #expect(e.labels == ids)
        #expect(e.targetCount == 3)
        #expect(merged == 0)
        let (noEOS, _) = try builder(.init(appendEOS: false)).encode(record(.text("xy")))
        #expect(noEOS.inputIDs == [1] + tokenizer.ids("xy"))
    }

    @Test func promptCompletionTrainsTheCompletionOnly() throws {
        let (e, merged) = try builder().encode(record(.promptCompletion(prompt: "xy", completion: "zz")))
        #expect(e.inputIDs == [1] + tokenizer.ids("xyzz") + [2])
        #expect(e.labels == [ignore, ignore, ignore] + tokenizer.ids("zz") + [2])
        #expect(merged == 0)
        let (all, _) = try builder(.init(lossOnPrompt: true)).encode(record(.promptCompletion(prompt: "xy", completion: "zz")))
        #expect(all.labels == all.inputIDs)
    }

    @Test func aTokenAcrossTheSeamGoesToTheCompletion() throws {
        // "xa" + "bc" tokenizes as x, ab, c: "ab" straddles the seam.
        let (e, merged) = try builder().encode(record(.promptCompletion(prompt: "xa", completion: "bc")))
        #expect(e.inputIDs == [1] + tokenizer.ids("xabc") + [2])
        #expect(e.labels == [ignore, ignore, 3] + tokenizer.ids("c") + [2])
        #expect(merged == 1)
    }

    @Test func chatsUseTemplateTokensAndTrainAssistantTurns() throws {
        let chat = DatasetRecord.Content.chat([.init(role: .user, content: "hi"), .init(role: .assistant, content: "yo")])
        let (llama, _) = try builder(template: .llama2).encode(record(chat))
        let prompt = tokenizer.ids("[INST] hi [/INST]"), answer = tokenizer.ids(" yo ")
        #expect(llama.inputIDs == [1] + prompt + answer + [2])
        #expect(llama.labels == [Int32](repeating: ignore, count: 1 + prompt.count) + answer + [2])

        let (chatml, _) = try builder(template: .chatML).encode(record(chat))
        let head = tokenizer.ids("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        let trained = tokenizer.ids("yo<|im_end|>")
        #expect(chatml.inputIDs == head + trained + tokenizer.ids("\n"))
        #expect(chatml.labels == [Int32](repeating: ignore, count: head.count) + trained + [ignore])

        #expect(throws: ChatTemplateError.missing(nil)) { try builder().encode(record(chat)) }
        let bad = record(.chat([.init(role: .assistant, content: "a")]), line: 9)
        #expect(throws: DatasetError.self) { try builder(template: .llama2).encode(bad) }
        do {
            _ = try builder(template: .llama2).encode(bad)
        } catch {
            #expect(error.localizedDescription.hasPrefix("/data/train.jsonl:9: the llama-2 chat template cannot render"))
        }
    }

    /// The prompt for a reply is the chat as training renders it plus the assistant's header.
    @Test func replyPromptsEndWithTheAssistantsHeader() throws {
        let chat = [ChatMessage(role: .user, content: "hi")]
        #expect(try builder(template: .llama2).replyPrompt(chat) == [1] + tokenizer.ids("[INST] hi [/INST]"))
        #expect(try builder(template: .chatML).replyPrompt(chat) == tokenizer.ids("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"))
        #expect(try builder(template: .zephyr).replyPrompt(chat)
            == tokenizer.ids("<|user|>\nhi") + [2] + tokenizer.ids("\n<|assistant|>\n"))
        #expect(throws: ChatTemplateError.missing(nil)) { try builder().replyPrompt(chat) }
    }

    @Test func truncationAndSkippingAreCounted() throws {
        let records = [
            record(.text("abcdefgh"), line: 1),                                     // 1 + 7 + EOS = 9 tokens
            record(.promptCompletion(prompt: "xxxxxx", completion: "y"), line: 2),  // completion cut off
            record(.promptCompletion(prompt: "x", completion: "y"), line: 3),
        ]
        let prepared = try builder(.init(maxSequenceLength: 5)).prepare(records, source: source)
        #expect(prepared.examples.count == 2)
        #expect(prepared.examples.allSatisfy { $0.inputIDs.count <= 5 })
        let s = prepared.statistics
        #expect(s.records == 3 && s.examples == 2 && s.truncated == 2 && s.skippedWithoutTargets == 1)
        #expect(s.tokens == 5 + 4 && s.targetTokens == 4 + 2 && s.longest == 5)
        #expect(s.description.contains("1 skipped without target tokens"))

        #expect(throws: DatasetError.nothingToTrain(source, records: 1, maxSequenceLength: 3)) {
            try builder(.init(maxSequenceLength: 3)).prepare([records[1]], source: source)
        }
        #expect(throws: DatasetError.empty(source)) { try builder().prepare([], source: source) }
    }

    @Test func idsOutsideTheVocabularyAreRefused() throws {
        #expect(throws: DatasetError.invalidLine(source, line: 4, reason: "the tokenizer produced id 130, outside the model's vocabulary of 100")) {
            try builder(vocabulary: 100).encode(record(.text("x"), line: 4))
        }
    }
}
