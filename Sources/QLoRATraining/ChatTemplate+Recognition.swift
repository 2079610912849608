// Recognising a model's Jinja chat template as one of the built-in formats.
//
// Templates are compared after canonicalisation, not character by character, so
// that spacing inside tags, quote style and whitespace control that Hugging Face's
// Jinja settings (trim_blocks, lstrip_blocks) make irrelevant do not matter:
//   - the template is split into text, {{ output }}, {% statement %} and {# comment #};
//     comments are dropped;
//   - inside tags, whitespace outside string literals is removed (one space kept
//     between two words), "..." becomes '...', and escapes in literals are decoded
//     ('\n' in the template text and a literal holding a real newline are the same);
//   - text keeps every character that would be output: `-` markers strip the
//     whitespace next to the tag, a block tag at the start of a line strips the
//     spaces before it (lstrip_blocks) and the first newline after it (trim_blocks).
// Two templates with equal canonical forms render every chat identically. Only the
// exact known forms below are accepted: a template that adds anything (tools, a
// different default prompt) is refused rather than rendered approximately.

import Foundation
import QLoRAStorage

extension ChatTemplate {
    /// Files of a model folder that may carry its chat template, in the order
    /// transformers reads them.
    public static let modelFileNames = ["chat_template.jinja", "chat_template.json", "tokenizer_config.json"]

    /// The built-in template equal to `jinja`.
    /// - Throws: `ChatTemplateError.unrecognised(source)` when it is none of them.
    public init(recognizing jinja: String, source: URL) throws {
        let tokens = Self.canonicalTokens(jinja)
        guard let known = Self.knownForms.first(where: { Self.canonicalTokens($0.jinja) == tokens }) else {
            throw ChatTemplateError.unrecognised(source)
        }
        self = known.template
    }

    /// The template of the Hugging Face model in `directory`: chat_template.jinja,
    /// else `chat_template` in chat_template.json, else in tokenizer_config.json (where
    /// a list of named templates contributes the one named "default").
    /// - Returns: nil when the model has no chat template.
    /// - Throws: `ChatTemplateError` when it has one this engine cannot render, or the
    ///   JSON is malformed; `FileError` when a file cannot be read.
    public static func fromModel(directory: URL) throws -> ChatTemplate? {
        var files: [String: Data] = [:]
        for name in modelFileNames {
            let url = directory.appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: url.path) else { continue }
            let file = try MappedFile(url: url)
            files[name] = withExtendedLifetime(file) { Data(file.bytes) }
        }
        return try fromModel(files: files, source: directory)
    }

    /// `body`'s result given the template for chat data: `chosen`, else the model's own
    /// (`own()`, nil without one). An unusable template of the model's own is no error
    /// until `body` finds it needs one (`ChatTemplateError.missing`): then that error
    /// says why, naming the model's file.
    public static func resolving<T>(_ chosen: ChatTemplate?, own: () throws -> ChatTemplate?,
                                    _ body: (ChatTemplate?) throws -> T) throws -> T {
        if let chosen { return try body(chosen) }
        let model = Result { try own() }
        do {
            return try body(try? model.get())
        } catch let error as ChatTemplateError {
            if case .missing = error { _ = try model.get() }
            throw error
        }
    }

    /// `fromModel(directory:)` over files already read (a packed checkpoint embeds
    /// them): `files` maps names from `modelFileNames` to contents; errors name
    /// them as if they were in the folder `source`.
    public static func fromModel(files: [String: Data], source: URL) throws -> ChatTemplate? {
        for name in modelFileNames {
            guard let data = files[name] else { continue }
            let url = source.appendingPathComponent(name)
            if name.hasSuffix(".jinja") {
                guard let text = String(data: data, encoding: .utf8) else { throw ChatTemplateError.malformedConfig(url, "is not UTF-8") }
                return try ChatTemplate(recognizing: text, source: url)
            }
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw ChatTemplateError.malformedConfig(url, "file is not a JSON object")
            }
            guard let value = object["chat_template"], !(value is NSNull) else { continue }
            switch value {
            case let text as String:
                return try ChatTemplate(recognizing: text, source: url)
            case let list as [Any]:
                let named = list.compactMap { $0 as? [String: Any] }
                guard let entry = named.first(where: { $0["name"] as? String == "default" }),
                      let text = entry["template"] as? String
                else { throw ChatTemplateError.malformedConfig(url, "is a list without a template named \"default\"") }
                return try ChatTemplate(recognizing: text, source: url)
            default:
                throw ChatTemplateError.malformedConfig(url, "must be a string or a list of {name, template}")
            }
        }
        return nil
    }

    // MARK: - Known forms

    /// Jinja sources (as stored in tokenizer_config.json, JSON escapes undone) and
    /// what they render as. Backslash-n inside a quoted literal is Jinja's newline escape;
    /// \#n outside quotes is a real newline between tags.
    static let knownForms: [(jinja: String, template: ChatTemplate)] = [
        // The ChatML template transformers' documentation uses; many fine-tunes ship it.
        (#"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"#,
         .chatML),
        // Qwen2 / Qwen1.5 chat: ChatML with a default system prompt.
        (#"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"#,
         ChatTemplate(family: .chatML, defaultSystemPrompt: "You are a helpful assistant.")),
        // meta-llama/Llama-2-*-chat-hf.
        (#"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"#,
         .llama2),
        // The same with a branch for later system messages (which `pieces` refuses anyway).
        (#"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'system' %}{{ '<<SYS>>\n' + content.strip() + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"#,
         .llama2),
        // HuggingFaceH4/zephyr-7b-beta and TinyLlama-1.1B-Chat (one tag per line).
        (#"{% for message in messages %}\#n{% if message['role'] == 'user' %}\#n{{ '<|user|>\n' + message['content'] + eos_token }}\#n{% elif message['role'] == 'system' %}\#n{{ '<|system|>\n' + message['content'] + eos_token }}\#n{% elif message['role'] == 'assistant' %}\#n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\#n{% endif %}\#n{% if loop.last and add_generation_prompt %}\#n{{ '<|assistant|>' }}\#n{% endif %}\#n{% endfor %}"#,
         .zephyr),
    ]

    // MARK: - Canonical form

    enum JinjaToken: Hashable {
        case text(String)
        case output(String)
        case statement(String)
    }

    /// The template as canonical tokens (see the file comment).
    static func canonicalTokens(_ source: String) -> [JinjaToken] {
        let s = Array(source.unicodeScalars)
        var tokens: [JinjaToken] = []
        var text = String.UnicodeScalarView()
        var trimNextLeading = false, trimNextNewline = false
        var i = 0

        func flushText() {
            if !text.isEmpty { tokens.append(.text(String(text))) }
            text = String.UnicodeScalarView()
        }

        while i < s.count {
            guard s[i] == "{", i + 1 < s.count, ["{", "%", "#"].contains(s[i + 1]) else {
                if trimNextLeading && s[i].properties.isWhitespace { i += 1; continue }
                if trimNextNewline && s[i] == "\n" { trimNextNewline = false; i += 1; continue }
                trimNextLeading = false
                trimNextNewline = false
                text.append(s[i])
                i += 1
                continue
            }
            trimNextLeading = false
            trimNextNewline = false
            let kind = s[i + 1]
            let close: Unicode.Scalar = kind == "{" ? "}" : kind
            var j = i + 2
            // Whitespace control on the opening side.
            var stripBefore = false, keepBefore = false
            if j < s.count, s[j] == "-" { stripBefore = true; j += 1 } else if j < s.count, s[j] == "+" { keepBefore = true; j += 1 }
            var body = String.UnicodeScalarView()
            var quote: Unicode.Scalar?
            var pendingSpace = false
            func isWordScalar(_ c: Unicode.Scalar?) -> Bool { c.map { $0 == "_" || $0.properties.isAlphabetic || ("0"..."9").contains($0) } ?? false }
            while j < s.count {
                let c = s[j]
                if let q = quote {
                    if c == "\\", j + 1 < s.count {
                        // Escapes are decoded, so '\n' equals a literal holding a real newline.
                        switch s[j + 1] {
                        case "n": body.append("\n")
                        case "t": body.append("\t")
                        case "r": body.append("\r")
                        case "\\", "'", "\"": body.append(s[j + 1])
                        default: body.append(c); body.append(s[j + 1])
                        }
                        j += 2
                        continue
                    }
                    if c == q { quote = nil; body.append("'") } else { body.append(c) }
                    j += 1
                    continue
                }
                if (c == "-" || c == "+"), j + 2 < s.count, s[j + 1] == close, s[j + 2] == "}" { break }
                if c == close, j + 1 < s.count, s[j + 1] == "}" { break }
                if c.properties.isWhitespace {
                    pendingSpace = true
                    j += 1
                    continue
                }
                // A space survives only where it separates two words ("not x", "in messages").
                if pendingSpace && isWordScalar(body.last) && isWordScalar(c) { body.append(" ") }
                pendingSpace = false
                if c == "'" || c == "\"" { quote = c; body.append("'") } else { body.append(c) }
                j += 1
            }
            // Whitespace control on the closing side.
            var stripAfter = false, keepAfter = false
            if j < s.count, s[j] == "-" { stripAfter = true; j += 1 } else if j < s.count, s[j] == "+" { keepAfter = true; j += 1 }
            let end = min(s.count, j + 2)
            let isBlock = kind != "{"
            if stripBefore {
                while let last = text.last, last.properties.isWhitespace { text.removeLast() }
            } else if isBlock && !keepBefore {
                // lstrip_blocks: spaces or tabs between the start of a source line and the tag go.
                var k = i
                while k > 0, s[k - 1] == " " || s[k - 1] == "\t" { k -= 1 }
                if k == 0 || s[k - 1] == "\n" {
                    for _ in k..<i {
                        guard let last = text.last, last == " " || last == "\t" else { break }
                        text.removeLast()
                    }
                }
            }
            flushText()
            switch kind {
            case "{": tokens.append(.output(String(body)))
            case "%": tokens.append(.statement(String(body)))
            default: break
            }
            if stripAfter { trimNextLeading = true } else if isBlock && !keepAfter { trimNextNewline = true }
            i = end
        }
        flushText()
        return tokens
    }
}
