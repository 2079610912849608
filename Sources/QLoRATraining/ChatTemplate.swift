// Turning chat messages into the text a chat model was trained on.
//
// Hugging Face models describe this with a Jinja template (tokenizer_config.json
// `chat_template`, or chat_template.jinja). This engine has no Jinja interpreter:
// it renders three common formats natively and recognises a model's template when it
// is one of them (see ChatTemplate+Recognition.swift); anything else is refused with a
// hint to name a built-in template instead.
//
//   chatml   <|im_start|>{role}\n{content}<|im_end|>\n          per message
//   llama-2  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s>
//            (system folded into the first user turn, contents stripped, roles alternate)
//   zephyr   <|{role}|>\n{content}</s>\n                          per message
//
// A template produces pieces rather than one string: BOS and EOS stay token ids (a
// tokenizer need not map the text "<s>" back to its id), and every piece records
// whether the loss covers it. The loss covers what the assistant says plus the
// marker that ends its turn, so the model learns to stop; headers and the other
// roles' turns are context only. The rendering equals transformers'
// apply_chat_template(tokenize=False) for the same template (tested).

import Foundation

/// A piece of a rendered chat.
public enum ChatPiece: Hashable, Sendable {
    /// Text to tokenize; `trained` when the loss covers it.
    case text(String, trained: Bool)
    /// The tokenizer's beginning-of-sequence token.
    case bos
    /// The tokenizer's (first) end-of-sequence token.
    case eos(trained: Bool)
}

/// A chat format this engine renders.
public struct ChatTemplate: Hashable, Sendable, CustomStringConvertible {
    public enum Family: String, CaseIterable, Hashable, Sendable {
        case chatML = "chatml"
        case llama2 = "llama-2"
        case zephyr
    }

    public var family: Family
    /// A system message inserted when a chat has none (Qwen2's ChatML does this).
    public var defaultSystemPrompt: String?

    public init(family: Family, defaultSystemPrompt: String? = nil) {
        self.family = family
        self.defaultSystemPrompt = defaultSystemPrompt
    }

    public static let chatML = ChatTemplate(family: .chatML)
    public static let llama2 = ChatTemplate(family: .llama2)
    public static let zephyr = ChatTemplate(family: .zephyr)

    /// The built-in template called `name`: "chatml", "llama-2" (or "llama2"), "zephyr".
    /// - Throws: `ChatTemplateError.unknownName` listing the names.
    public static func named(_ name: String) throws -> ChatTemplate {
        let key = name.lowercased() == "llama2" ? "llama-2" : name.lowercased()
        guard let family = Family(rawValue: key) else { throw ChatTemplateError.unknownName(name) }
        return ChatTemplate(family: family)
    }

    public var description: String {
        defaultSystemPrompt.map { "\(family.rawValue) (default system prompt \"\($0)\")" } ?? family.rawValue
    }

    /// The pieces of `messages`.
    /// - Throws: `ChatTemplateError.unsupportedChat` for a chat this format cannot
    ///   express (llama-2: a system message after the first, or roles that do not alternate).
    public func pieces(for messages: [ChatMessage]) throws -> [ChatPiece] {
        var out: [ChatPiece] = []
        switch family {
        case .chatML:
            if let system = defaultSystemPrompt, messages.first?.role != .system {
                out.append(.text("<|im_start|>system\n\(system)<|im_end|>\n", trained: false))
            }
            for m in messages {
                let trained = m.role == .assistant
                out.append(.text("<|im_start|>\(m.role.rawValue)\n", trained: false))
                out.append(.text(m.content + "<|im_end|>", trained: trained))
                out.append(.text("\n", trained: false))
            }
        case .llama2:
            var turns = messages[...]
            var system: String?
            if turns.first?.role == .system {
                system = turns.first!.content
                turns = turns.dropFirst()
            }
            for (i, m) in turns.enumerated() {
                guard m.role != .system else { throw ChatTemplateError.unsupportedChat(self, "a system message is only allowed first") }
                guard (m.role == .user) == (i % 2 == 0) else {
                    throw ChatTemplateError.unsupportedChat(self, "roles must alternate user/assistant/user/... (message \(i + (system == nil ? 0 : 1)) is \(m.role.rawValue))")
                }
                var content = m.content
                if i == 0, let system { content = "<<SYS>>\n\(system)\n<</SYS>>\n\n" + content }
                content = Self.pythonStrip(content)
                if m.role == .user {
                    out.append(.bos)
                    out.append(.text("[INST] \(content) [/INST]", trained: false))
                } else {
                    out.append(.text(" \(content) ", trained: true))
                    out.append(.eos(trained: true))
                }
            }
        case .zephyr:
            if let system = defaultSystemPrompt, messages.first?.role != .system {
                out += [.text("<|system|>\n\(system)", trained: false), .eos(trained: false), .text("\n", trained: false)]
            }
            for m in messages {
                let trained = m.role == .assistant
                out.append(.text("<|\(m.role.rawValue)|>\n", trained: false))
                out.append(.text(m.content, trained: trained))
                out.append(.eos(trained: trained))
                out.append(.text("\n", trained: false))
            }
        }
        return out
    }

    /// The pieces of `messages`, then the header of the assistant's turn, for a model to
    /// write that turn (apply_chat_template(add_generation_prompt=True)). Llama-2 has no
    /// header: the reply follows the user's [/INST].
    /// - Throws: `ChatTemplateError.unsupportedChat` as `pieces`, and for llama-2 when the
    ///   last message is not the user's.
    public func generationPieces(for messages: [ChatMessage]) throws -> [ChatPiece] {
        var out = try pieces(for: messages)
        switch family {
        case .chatML:
            out.append(.text("<|im_start|>assistant\n", trained: false))
        case .zephyr:
            out.append(.text("<|assistant|>\n", trained: false))
        case .llama2:
            guard messages.last?.role == .user else { throw ChatTemplateError.unsupportedChat(self, "a reply must follow a user message") }
        }
        return out
    }

    /// Text that ends the assistant's turn where the template writes it as text rather
    /// than as the EOS token: ChatML's "<|im_end|>".
    public var turnEnd: String? { family == .chatML ? "<|im_end|>" : nil }

    /// The chat as one string, BOS and EOS written as `bosToken` and `eosToken`
    /// (what apply_chat_template(tokenize=False, add_generation_prompt=...) returns).
    public func render(_ messages: [ChatMessage], bosToken: String, eosToken: String, generationPrompt: Bool = false) throws -> String {
        try (generationPrompt ? generationPieces(for: messages) : pieces(for: messages)).map { piece in
            switch piece {
            case let .text(s, _): s
            case .bos: bosToken
            case .eos: eosToken
            }
        }.joined()
    }

    /// Python's str.strip(): Unicode whitespace, and the ASCII separators U+001C–U+001F
    /// Python also counts as space, off both ends.
    private static func pythonStrip(_ s: String) -> String {
        var set = CharacterSet.whitespacesAndNewlines
        set.insert(charactersIn: "\u{1C}\u{1D}\u{1E}\u{1F}")
        return s.trimmingCharacters(in: set)
    }
}

/// A chat template that cannot be used.
public enum ChatTemplateError: Error, LocalizedError, Equatable {
    case unknownName(String)
    /// The model's Jinja template is not one of the recognised forms; `source` is the file it came from.
    case unrecognised(URL)
    /// Chat records need a template and neither the model nor the options give one.
    case missing(URL?)
    case unsupportedChat(ChatTemplate, String)
    /// tokenizer_config.json's chat_template has a type this reader does not know.
    case malformedConfig(URL, String)

    public var errorDescription: String? {
        let names = ChatTemplate.Family.allCases.map(\.rawValue).joined(separator: ", ")
        switch self {
        case let .unknownName(name):
            return "unknown chat template \"\(name)\"; the built-in templates are \(names)"
        case let .unrecognised(url):
            return "\(url.path): the model's chat_template is not one of the forms this engine renders (\(names)) and there is no Jinja engine here; pass --chat-template chatml (or another built-in) to choose one"
        case let .missing(url?):
            return "\(url.path): the model has no chat_template to render chats with; pass --chat-template with one of \(names)"
        case .missing(nil):
            return "chats need a chat template and none was given; pass --chat-template with one of \(names)"
        case let .unsupportedChat(template, reason):
            return "the \(template) chat template cannot render this chat: \(reason)"
        case let .malformedConfig(url, reason):
            return "\(url.path): chat_template \(reason)"
        }
    }
}
