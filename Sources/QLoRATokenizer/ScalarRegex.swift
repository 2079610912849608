// A backtracking regular-expression matcher over Unicode scalars with Oniguruma's
// leftmost-first semantics (alternatives tried in order, greedy quantifiers longest first).
// It exists because tokenizer.json patterns are Oniguruma patterns, and their results
// (which piece "'s" or "  \n" lands in) decide the token ids; Foundation's ICU regexes and
// Swift Regex differ in Unicode details and work on UTF-16 or Characters.

/// A compiled pattern. Patterns that can match the empty string are rejected, so every
/// match consumes at least one scalar.
struct ScalarRegex: Sendable {
    private enum Instruction: Sendable {
        case scalar(Int)  // index into `classes`
        case split(Int, Int)  // try the first target, backtrack to the second
        case jump(Int)
        case lookahead(Int, negated: Bool)  // index into `programs`
        case match
    }

    private static let maxProgramSize = 100_000
    private var programs: [[Instruction]] = []
    private var classes: [ScalarClass] = []

    init(pattern: String) throws(RegexSyntaxError) {
        let node = try RegexParser.parse(pattern)
        guard !node.isNullable else { throw RegexSyntaxError(reason: "the pattern can match the empty string") }
        guard node.compiledSize <= Self.maxProgramSize else {
            throw RegexSyntaxError(reason: "the pattern expands to more than \(Self.maxProgramSize) instructions")
        }
        _ = compileProgram(node)
    }

    /// A pattern matching `literal` exactly (how the library treats string patterns).
    init(literal: [Unicode.Scalar]) {
        let nodes = literal.map { RegexNode.set(.scalar($0)) }
        _ = compileProgram(.sequence(nodes))
    }

    // MARK: - Compilation

    private mutating func compileProgram(_ node: RegexNode) -> Int {
        let index = programs.count
        programs.append([])
        var code: [Instruction] = []
        compile(node, into: &code)
        code.append(.match)
        programs[index] = code
        return index
    }

    private mutating func compile(_ node: RegexNode, into code: inout [Instruction]) {
        switch node {
        case let .set(set):
            classes.append(set)
            code.append(.scalar(classes.count - 1))
        case let .sequence(nodes):
            for n in nodes { compile(n, into: &code) }
        case let .alternation(branches):
            var jumpsToEnd: [Int] = []
            for (i, branch) in branches.enumerated() {
                if i == branches.count - 1 {
                    compile(branch, into: &code)
                } else {
                    let split = code.count
                    code.append(.split(split + 1, -1))
                    compile(branch, into: &code)
                    jumpsToEnd.append(code.count)
                    code.append(.jump(-1))
                    code[split] = .split(split + 1, code.count)
                }
            }
            for j in jumpsToEnd { code[j] = .jump(code.count) }
        case let .repetition(body, min, max, greedy):
            for _ in 0..<min { compile(body, into: &code) }
            if let max {
                // Nested optionals: x{0,3} is (x(x(x)?)?)?, all exits jump past the end.
                var exits: [Int] = []
                for _ in min..<max {
                    exits.append(code.count)
                    code.append(.split(-1, -1))
                    compile(body, into: &code)
                }
                let end = code.count
                for e in exits { code[e] = greedy ? .split(e + 1, end) : .split(end, e + 1) }
            } else {
                let loop = code.count
                code.append(.split(-1, -1))
                compile(body, into: &code)
                code.append(.jump(loop))
                let end = code.count
                code[loop] = greedy ? .split(loop + 1, end) : .split(end, loop + 1)
            }
        case let .lookahead(body, negated):
            let program = compileProgram(body)
            code.append(.lookahead(program, negated: negated))
        }
    }

    // MARK: - Matching

    /// End of the match starting exactly at `start`, if any. `stack` is scratch space for
    /// backtrack points (pairs of program counter and position), reused between calls.
    private func matchEnd(program: Int, in text: UnsafeBufferPointer<Unicode.Scalar>, at start: Int,
                          stack: inout [Int]) -> Int? {
        let code = programs[program]
        let base = stack.count
        defer { stack.removeSubrange(base...) }
        var pc = 0
        var sp = start
        while true {
            switch code[pc] {
            case let .scalar(c):
                if sp < text.count && classes[c].contains(text[sp]) {
                    pc += 1
                    sp += 1
                    continue
                }
            case let .split(first, second):
                stack.append(second)
                stack.append(sp)
                pc = first
                continue
            case let .jump(target):
                pc = target
                continue
            case let .lookahead(sub, negated):
                if (matchEnd(program: sub, in: text, at: sp, stack: &stack) != nil) != negated {
                    pc += 1
                    continue
                }
            case .match:
                return sp
            }
            // Backtrack.
            guard stack.count > base else { return nil }
            sp = stack.removeLast()
            pc = stack.removeLast()
        }
    }

    /// Non-overlapping matches, leftmost first, as Oniguruma's search loop finds them.
    func matches(in text: [Unicode.Scalar]) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var stack: [Int] = []
        stack.reserveCapacity(64)
        text.withUnsafeBufferPointer { buffer in
            var start = 0
            while start < buffer.count {
                if let end = matchEnd(program: 0, in: buffer, at: start, stack: &stack), end > start {
                    result.append(start..<end)
                    start = end
                } else {
                    start += 1
                }
            }
        }
        return result
    }
}
