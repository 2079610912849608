import Foundation

/// What can be wrong with a model folder, an adapter or a batch. Messages
/// name the file or the offending value.
public enum ModelError: Error, LocalizedError, Equatable {
    /// A tensor's shape differs from what config.json implies.
    case shapeMismatch(URL, tensor: String, expected: [Int], found: [Int])
    /// A tensor's dtype cannot be read as fp32 weights.
    case unsupportedDType(URL, tensor: String, dtype: String)
    /// config.json or adapter_config.json describes something this engine does not run.
    case unsupportedConfiguration(URL, reason: String)
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
        case let .unsupportedDType(url, tensor, dtype):
            "\(url.path): tensor \"\(tensor)\" has dtype \(dtype); weights must be F32, F16 or BF16"
        case let .unsupportedConfiguration(url, reason):
            "\(url.path): \(reason)"
        case let .invalidBatch(reason):
            "invalid batch: \(reason)"
        case let .invalidAdapter(url, reason):
            url.map { "\($0.path): \(reason)" } ?? "invalid adapter: \(reason)"
        case .noForwardPass:
            "backward() needs a forward pass with targets first (and runs once per forward pass)"
        }
    }
}
