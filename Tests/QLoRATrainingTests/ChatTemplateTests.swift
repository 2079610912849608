// Chat templates: rendering equal to transformers' apply_chat_template, recognition of
// a model's Jinja template, and refusing what cannot be rendered faithfully.

import Foundation
import QLoRATraining
import Testing
import _TestSupport

@Suite struct ChatTemplateTests {
    let reference: TrainingReference.Chat

    init() throws { reference = try TrainingReference.load().chat_templates }

    @Test func recognisedTemplatesRenderLikeTransformers() throws {
        let source = URL(fileURLWithPath: "/model/tokenizer_config.json")
        for t in reference.templates {
            let template = try ChatTemplate(recognizing: t.template, source: source)
            #expect(template.family.rawValue == (t.name == "qwen2" ? "chatml" : t.name))
            for (messages, expected) in zip(reference.conversations, t.rendered) {
                let rendered = try template.render(messages, bosToken: reference.bos_token, eosToken: reference.eos_token)
                #expect(rendered == expected, "\(t.name)")
            }
            for (messages, expected) in zip(reference.conversations, t.prompted) {
                let rendered = try template.render(Array(messages.dropLast()), bosToken: reference.bos_token, eosToken: reference.eos_token,
                                                   generationPrompt: true)
                #expect(rendered == expected, "\(t.name) with the generation prompt")
            }
        }
    }

    /// Llama-2 writes the reply right after the user's [/INST]: there is none to write
    /// after the assistant's own turn.
    @Test func generationPromptFollowsAUserTurn() throws {
        let chat = [ChatMessage(role: .user, content: "Hi"), ChatMessage(role: .assistant, content: "Hello")]
        #expect(throws: ChatTemplateError.self) { try ChatTemplate.llama2.generationPieces(for: chat) }
        #expect(try ChatTemplate.chatML.render(chat, bosToken: "<s>", eosToken: "</s>", generationPrompt: true)
            .hasSuffix("Hello<|im_end|>\n<|im_start|>assistant\n"))
        #expect(ChatTemplate.chatML.turnEnd == "<|im_end|>" && ChatTemplate.zephyr.turnEnd == nil && ChatTemplate.llama2.turnEnd == nil)
    }

    @Test func builtInNames() throws {
        #expect(try ChatTemplate.named("chatml") == .chatML)
        #expect(try ChatTemplate.named("Llama2") == .llama2)
        #expect(try ChatTemplate.named("zephyr") == .zephyr)
        #expect(throws: ChatTemplateError.unknownName("alpaca")) { try ChatTemplate.named("alpaca") }
    }

    @Test func recognitionIgnoresSpacingQuotesAndWhitespaceControl() throws {
        let source = URL(fileURLWithPath: "/m/chat_template.jinja")
        let respaced = """
            {%- for message in messages -%}
              {{- "<|im_start|>" + message["role"] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}
            {%- endfor %}
            {%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
            """
        #expect(try ChatTemplate(recognizing: respaced, source: source) == .chatML)
        // The same template with a different default system prompt renders differently: refused.
        let qwen = reference.templates.first { $0.name == "qwen2" }!.template
        let other = qwen.replacingOccurrences(of: "You are a helpful assistant.", with: "You are a pirate.")
        #expect(throws: ChatTemplateError.unrecognised(source)) { try ChatTemplate(recognizing: other, source: source) }
        // Output text between tags matters.
        let chatml = reference.templates.first { $0.name == "chatml" }!.template
        #expect(throws: ChatTemplateError.unrecognised(source)) {
            try ChatTemplate(recognizing: chatml.replacingOccurrences(of: "{% endfor %}", with: " {% endfor %}"), source: source)
        }
    }

    @Test func unknownTemplateSuggestsABuiltIn() throws {
        let source = URL(fileURLWithPath: "/m/tokenizer_config.json")
        let gemma = "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
        do {
            _ = try ChatTemplate(recognizing: gemma, source: source)
            Issue.record("a Gemma template was accepted")
        } catch {
            #expect(error.localizedDescription.contains("--chat-template chatml"))
            #expect(error.localizedDescription.hasPrefix(source.path))
        }
    }

    @Test func readsTheModelFolder() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        #expect(try ChatTemplate.fromModel(directory: dir.url) == nil)
        let zephyr = reference.templates.first { $0.name == "zephyr" }!.template
        let chatml = reference.templates.first { $0.name == "chatml" }!.template
        let config = ["bos_token": "<s>", "chat_template": [["name": "tool_use", "template": "x"], ["name": "default", "template": zephyr]]] as [String: Any]
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appending("tokenizer_config.json"))
        #expect(try ChatTemplate.fromModel(directory: dir.url) == .zephyr)
        // chat_template.jinja takes precedence, as in transformers.
        try Data(chatml.utf8).write(to: dir.appending("chat_template.jinja"))
        #expect(try ChatTemplate.fromModel(directory: dir.url) == .chatML)
        try Data("{\"chat_template\": 3}".utf8).write(to: dir.appending("tokenizer_config.json"))
        try FileManager.default.removeItem(at: dir.appending("chat_template.jinja"))
        #expect(throws: ChatTemplateError.malformedConfig(dir.appending("tokenizer_config.json"), "must be a string or a list of {name, template}")) {
            try ChatTemplate.fromModel(directory: dir.url)
        }
    }

    @Test func llama2RefusesChatsItCannotExpress() {
        let user = ChatMessage(role: .user, content: "u"), assistant = ChatMessage(role: .assistant, content: "a")
        let system = ChatMessage(role: .system, content: "s")
        #expect(throws: ChatTemplateError.self) { try ChatTemplate.llama2.pieces(for: [assistant, user]) }
        #expect(throws: ChatTemplateError.self) { try ChatTemplate.llama2.pieces(for: [user, user]) }
        #expect(throws: ChatTemplateError.self) { try ChatTemplate.llama2.pieces(for: [user, assistant, system]) }
        #expect((try? ChatTemplate.llama2.pieces(for: [system, user, assistant])) != nil)
    }

    @Test func lossCoversAssistantTurnsAndTheirEndMarker() throws {
        let chat = [ChatMessage(role: .user, content: "hi"), ChatMessage(role: .assistant, content: "yo")]
        #expect(try ChatTemplate.chatML.pieces(for: chat) == [
            .text("<|im_start|>user\n", trained: false), .text("hi<|im_end|>", trained: false), .text("\n", trained: false),
            .text("<|im_start|>assistant\n", trained: false), .text("yo<|im_end|>", trained: true), .text("\n", trained: false),
        ])
        #expect(try ChatTemplate.llama2.pieces(for: chat) == [
            .bos, .text("[INST] hi [/INST]", trained: false), .text(" yo ", trained: true), .eos(trained: true),
        ])
    }

    /// A named template wins; the model's own serves otherwise, and when it is unusable
    /// that is no error until a chat needs a template, which then reports why.
    @Test func resolvingPrefersTheNamedTemplateAndExplainsAnUnusableOne() throws {
        let file = URL(fileURLWithPath: "/model/tokenizer_config.json")
        let unusable: () throws -> ChatTemplate? = { throw ChatTemplateError.unrecognised(file) }
        #expect(try ChatTemplate.resolving(.chatML, own: unusable) { $0 } == .chatML)
        #expect(try ChatTemplate.resolving(nil, own: { .zephyr }) { $0 } == .zephyr)
        #expect(try ChatTemplate.resolving(nil, own: unusable) { $0 } == nil)
        #expect(throws: ChatTemplateError.unrecognised(file)) {
            try ChatTemplate.resolving(nil, own: unusable) { template -> Int in
                guard template != nil else { throw ChatTemplateError.missing(nil) }
                return 1
            }
        }
    }
}
