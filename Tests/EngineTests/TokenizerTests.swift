import Engine
import Foundation
import XCTest

final class TokenizerTests: XCTestCase {
    /// decode(encode(s)) == s over every input and output word of the function-vector datasets.
    func testRoundTripOnFunctionVectorVocabulary() throws {
        let lm = try SharedModel.get()
        let dir = try TestPaths.sharedFile("data/function_vectors")
        var n = 0
        for f in try FileManager.default.contentsOfDirectory(atPath: dir.path) where f.hasSuffix(".json") {
            let pairs = try loadJSON(dir.appendingPathComponent(f)) as! [[String: Any]]
            for p in pairs {
                for key in ["input", "output"] {
                    guard let s = p[key] as? String else { continue }
                    for text in [s, " " + s, "Q: \(s)\nA:"] {
                        let ids = lm.tokenizer.encode(text)
                        XCTAssertEqual(lm.tokenizer.decode(ids), text, "\(f): \(text.debugDescription)")
                        n += 1
                    }
                }
            }
        }
        XCTAssertGreaterThan(n, 50_000)
    }

    func testPreTokenizationRules() throws {
        let lm = try SharedModel.get()
        let t = lm.tokenizer
        // digits are single tokens in SmolLM's pre-tokenizer
        XCTAssertEqual(t.encode("2024").count, 4)
        // control tokens in the text are parsed as such, and skipped by decode
        let im = t.encode("<|im_start|>user")
        XCTAssertEqual(im.first, t.id(of: "<|im_start|>"))
        XCTAssertEqual(t.decode(im), "user")
        XCTAssertEqual(t.decode(im, skipSpecial: false), "<|im_start|>user")
        // whitespace runs and unicode survive
        for s in ["a  b", "x\n\n  y", "  leading", "trailing  ", "naïve café — 東京 🙂", "it's", "don't WE'LL"] {
            XCTAssertEqual(t.decode(t.encode(s)), s)
        }
        // the space before a word belongs to the word
        XCTAssertEqual(t.encode(" cold").count, 1)
    }
}
