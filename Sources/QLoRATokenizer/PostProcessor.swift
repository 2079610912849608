// The post-processor adds special tokens around an encoded single sequence (BOS in front for
// Llama). Only the single-sequence template matters here: the engine never encodes pairs.

/// Special tokens placed before and after the encoded text when special tokens are enabled.
struct PostProcessor: Sendable {
    struct Special: Sendable {
        let id: Int32
        let token: String
    }

    var prefix: [Special] = []
    var suffix: [Special] = []

    static let supported = "TemplateProcessing, ByteLevel, Sequence"

    init() {}

    init(_ node: JSONNode?) throws(TokenizerError) {
        guard let node else { return }
        let type = try node.typeTag()
        switch type {
        case "ByteLevel":
            break  // only adjusts offsets, which this package does not report
        case "Sequence":
            // Each processor wraps the output of the previous one.
            for step in try node.required("processors").array() {
                let inner = try PostProcessor(step)
                prefix = inner.prefix + prefix
                suffix += inner.suffix
            }
        case "TemplateProcessing":
            try parseTemplate(node)
        default:
            throw node.unsupportedType(type, supported: Self.supported)
        }
    }

    private mutating func parseTemplate(_ node: JSONNode) throws(TokenizerError) {
        var specials: [String: [Special]] = [:]
        for (name, entry) in try node.required("special_tokens").members() {
            let ids = try entry.required("ids").array()
            let tokens = try entry.required("tokens").array()
            guard ids.count == tokens.count else { throw entry.invalid("ids and tokens differ in length") }
            var list: [Special] = []
            for (idNode, tokenNode) in zip(ids, tokens) {
                let id = try idNode.int()
                guard id >= 0 && id < Int(Int32.max) else { throw idNode.invalid("id \(id) out of range") }
                list.append(Special(id: Int32(id), token: try tokenNode.string()))
            }
            specials[name] = list
        }
        let single = try node.required("single")
        var sawSequence = false
        for item in try single.array() {
            if let special = item.optional("SpecialToken") {
                let name = try special.string("id")
                guard let tokens = specials[name] else {
                    throw special.invalid("special token \"\(name)\" is not listed in special_tokens")
                }
                if sawSequence { suffix += tokens } else { prefix += tokens }
            } else if let sequence = item.optional("Sequence") {
                let name = try sequence.string("id")
                guard name == "A", !sawSequence else { throw sequence.invalid("a single template takes sequence A once") }
                sawSequence = true
            } else {
                throw item.invalid("expected {\"SpecialToken\": ...} or {\"Sequence\": ...}")
            }
        }
        guard sawSequence else { throw single.invalid("the template has no $A") }
    }
}
