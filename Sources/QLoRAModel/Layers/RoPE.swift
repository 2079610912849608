import Foundation
import QLoRAStorage

/// Rotary position embedding in Hugging Face's rotate_half convention:
/// element i of a head is paired with element i + hd/2 (not the interleaved
/// pairs of the original Meta/GPT-J code), and
///
///     x_rot = x·cos + rotate_half(x)·sin,   rotate_half(x) = cat(−x[hd/2:], x[:hd/2])
///
/// Angles are computed in fp32 as transformers does: inv_freq[i] =
/// 1 / theta^(2i/hd) for rope_type "default", then rescaled for "linear"
/// (÷ factor) and "llama3" (long wavelengths ÷ factor, short ones kept, the
/// band between blended); angle = position · inv_freq[i].
///
/// Cache for backward: the cos and sin tables [n, hd/2] of the batch's
/// positions (shared by every layer, since all layers see the same positions).
public struct RotaryEmbedding: Sendable {
    public let headDimension: Int
    /// inv_freq [hd/2]
    public let inverseFrequencies: [Float]

    public init(headDimension: Int, theta: Double, scaling: RoPEScaling? = nil) {
        self.headDimension = headDimension
        let base = Float(theta)
        let plain = (0..<(headDimension / 2)).map { i in
            1 / Foundation.pow(base, Float(2 * i) / Float(headDimension))
        }
        guard let scaling else {
            inverseFrequencies = plain
            return
        }
        let factor = Float(scaling.factor)
        switch scaling.type {
        case "llama3":
            inverseFrequencies = plain.map { Self.llama3(inverseFrequency: $0, scaling: scaling) }
        default: // "linear": positions divided by the factor
            inverseFrequencies = plain.map { $0 / factor }
        }
    }

    /// Llama 3.1's frequency-band rescaling of one inverse frequency.
    private static func llama3(inverseFrequency f: Float, scaling: RoPEScaling) -> Float {
        let factor = Float(scaling.factor)
        let low = Float(scaling.lowFrequencyFactor ?? 1), high = Float(scaling.highFrequencyFactor ?? 4)
        let context = Float(scaling.originalMaxPositionEmbeddings ?? 8192)
        let wavelength = Float(2 * Double.pi) / f
        if wavelength < context / high { return f }
        if wavelength > context / low { return f / factor }
        let smooth = (context / wavelength - low) / (high - low)
        return (1 - smooth) * f / factor + smooth * f
    }

    /// Fills cos and sin [n, hd/2] for the given positions [n].
    public func tables(positions: UnsafePointer<Int32>, count n: Int,
                       cos: UnsafeMutablePointer<Float>, sin: UnsafeMutablePointer<Float>) {
        let half = headDimension / 2
        inverseFrequencies.withUnsafeBufferPointer { f in
            for t in 0..<n {
                let p = Float(positions[t])
                for i in 0..<half {
                    let angle = p * f[i]
                    cos[t * half + i] = Foundation.cos(angle)
                    sin[t * half + i] = Foundation.sin(angle)
                }
            }
        }
    }

    /// Rotates x [n, heads·hd] in place; head j of row t is x[t, j·hd ..< (j+1)·hd].
    public func forward(_ x: UnsafeMutablePointer<Float>, rows n: Int, heads: Int,
                        cos: UnsafePointer<Float>, sin: UnsafePointer<Float>) {
        rotate(x, rows: n, heads: heads, cos: cos, sin: sin, sign: 1)
    }

    /// Turns dx_rot [n, heads·hd] into dx in place: the rotation is orthogonal,
    /// so its backward is the rotation by the negated angle.
    public func backward(_ dx: UnsafeMutablePointer<Float>, rows n: Int, heads: Int,
                         cos: UnsafePointer<Float>, sin: UnsafePointer<Float>) {
        rotate(dx, rows: n, heads: heads, cos: cos, sin: sin, sign: -1)
    }

    /// (a, b) ← (a·cos − b·sin, b·cos + a·sin) for each pair (i, i + hd/2), with sin·sign.
    private func rotate(_ x: UnsafeMutablePointer<Float>, rows n: Int, heads: Int,
                        cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, sign: Float) {
        let hd = headDimension, half = hd / 2
        for t in 0..<n {
            let c = cos + t * half, s = sin + t * half
            for h in 0..<heads {
                let p = x + (t * heads + h) * hd
                for i in 0..<half {
                    let a = p[i], b = p[i + half], si = sign * s[i]
                    p[i] = a * c[i] - b * si
                    p[i + half] = b * c[i] + a * si
                }
            }
        }
    }
}
