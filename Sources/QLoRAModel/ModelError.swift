import Foundation

/// What can be wrong with a model folder, an adapter or a batch. Messages
/// name the file or the offending value.
public enum ModelError: Error, LocalizedError, Equatable {
    /// A tensor in a file has another shape than the model needs.
    case shapeMismatch(URL, tensor: String, expected: [Int], found: [Int])
    /// A tensor or linear handed to the model builder has another size than it asked for.
    case wrongSize(tensor: String, expected: [Int], found: [Int])
    /// The batch's arrays do not agree with its shape or the model.
    case invalidBatch(reason: String)
    /// backward() without a forward pass with targets before it.
    case noForwardPass
    /// An adapter configuration or file that cannot be attached to this model.
    case invalidAdapter(URL?, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .shapeMismatch(url, tensor, expected, found):
            "\(url.path): tensor \"\(tensor)\" has shape \(found), expected \(expected) from the configuration"
        case let .wrongSize(tensor, expected, found):
            "\"\(tensor)\" was provided with size \(found), the model needs \(expected)"
        case let .invalidBatch(reason):
            "invalid batch: \(reason)"
        case let .invalidAdapter(url, reason):
            url.map { "\($0.path): \(reason)" } ?? "invalid adapter: \(reason)"
        case .noForwardPass:
            "backward() needs a forward pass with targets first (and runs once per forward pass)"
        }
    }
}
