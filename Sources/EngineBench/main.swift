import Engine
import Foundation
let threads = Int(CommandLine.arguments.dropFirst().first ?? "1") ?? 1
let lm = try LanguageModel("smollm2-135m-instruct", backend: CPUBackend(threads: threads))
let root = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "../shared/reference/parity.json"))) as! [String: Any]
let tr = root["training"] as! [String: Any]
let prompts = (tr["prompts"] as! [String]).map { lm.tokenizer.encode($0) }
let targets = tr["target_first_token_ids"] as! [Int]
let path = InterventionPath(model: lm, layer: 4, prompts: prompts)
let A = lm.config.attnDim
let (l0, g0) = path.lossAndGradient(delta: [Float](repeating: 0, count: A), loss: .nextToken(targets: targets))
print("loss0", l0, "grad l2", g0.reduce(0) { $0 + $1 * $1 }.squareRoot(), Array(g0.prefix(4)))
let d = (0..<A).map { Float(($0 % 7) - 3) * 0.1 }
var t1 = Date()
for _ in 0..<10 { _ = path.lossAndGradient(delta: d, loss: .nextToken(targets: targets)) }
print("step ms", Date().timeIntervalSince(t1) * 100)
t1 = Date()
for _ in 0..<10 { _ = path.loss(delta: d, loss: .nextToken(targets: targets)) }
print("fwd+loss ms", Date().timeIntervalSince(t1) * 100)
let p29 = InterventionPath(model: lm, layer: 29, prompts: prompts)
t1 = Date()
for _ in 0..<10 { _ = p29.lossAndGradient(delta: d, loss: .nextToken(targets: targets)) }
print("layer29 step ms", Date().timeIntervalSince(t1) * 100)
let W = lm.model.blocks[10].wGate
let q = W.quant!
var xs = (0..<(10 * W.cols)).map { _ in Float.random(in: -1...1) }
var ys = [Float](repeating: 0, count: 10 * W.rows)
t1 = Date()
for _ in 0..<100 { xs.withUnsafeBufferPointer { x in ys.withUnsafeMutableBufferPointer { y in QuantGEMM.linear(x.baseAddress!, 10, q, rows: W.rows, cols: W.cols, y.baseAddress!, accumulate: false, threads: 1) } } }
print("quant gate fwd ms", Date().timeIntervalSince(t1) * 10, "elements", W.rows * W.cols)
t1 = Date()
for _ in 0..<100 { xs.withUnsafeBufferPointer { x in ys.withUnsafeMutableBufferPointer { y in QuantGEMM.linear(x.baseAddress!, 1, q, rows: W.rows, cols: W.cols, y.baseAddress!, accumulate: false, threads: 1) } } }
print("quant gate fwd m=1 ms", Date().timeIntervalSince(t1) * 10)
t1 = Date()
for _ in 0..<100 { xs.withUnsafeBufferPointer { x in ys.withUnsafeMutableBufferPointer { y in SmallGEMM.linear(x.baseAddress!, 10, W, y.baseAddress!, accumulate: false) } } }
print("fp32 small gate fwd ms", Date().timeIntervalSince(t1) * 10)
