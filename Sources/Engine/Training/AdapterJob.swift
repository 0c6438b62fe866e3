import Foundation

extension PairTaskJobs {
    /// A fine-tuning job (`lora`, `ia3`): the adapter trained with Adam at `lr` on the training
    /// pairs' first-target-token loss through the full-sequence path, then the test pairs decoded
    /// greedily by the adapted model (the same prompts, stop rules and scoring as every method).
    func runAdapter(_ p: Prepared, _ adapter: ProductAdapter, lr: Float, progress: Progress?) -> JobOutcome {
        let t0 = Date()
        let spec = p.spec
        let soft = adapter as? SoftPrompt  // its prompts carry the virtual tokens
        let prompts = p.split.train.map { pair in
            let ids = lm.tokenizer.encode(p.format.prompt(pair.input))
            return soft?.insert(ids) ?? ids
        }
        let targets = p.split.train.map {
            lm.tokenizer.encode(p.format.targetText($0.output), bos: false).first ?? 0
        }
        let lora = adapter
        let path = SequencePath(model: lm, prompts: prompts, adapter: lora)
        // Adam (β = 0.9, 0.999), the learning rate `lora.lr`
        let b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8
        var m1 = [Float](repeating: 0, count: lora.parameters.count), m2 = m1
        var losses: [Float] = []
        let tSolve = Date()
        for step in 1...max(spec.steps, 1) {
            let loss = path.loss(targets: targets)
            losses.append(loss)
            let c1 = 1 - powf(b1, Float(step)), c2 = 1 - powf(b2, Float(step))
            for i in lora.parameters.indices {
                let g = lora.gradient[i]
                m1[i] = b1 * m1[i] + (1 - b1) * g
                m2[i] = b2 * m2[i] + (1 - b2) * g * g
                lora.parameters[i] -= lr * (m1[i] / c1) / ((m2[i] / c2).squareRoot() + eps)
            }
            progress?("solve", step, spec.steps, ["loss": Double(loss)])
        }
        let solveMs = Date().timeIntervalSince(tSolve) * 1000
        let finalLoss = path.loss(targets: targets, gradient: false)
        lora.recording = false
        let tEval = Date()
        let testPrompts = p.split.test.map { p.format.prompt($0.input) }
        let report: (Int) -> Void = { progress?("eval", $0, p.split.test.count, [:]) }
        let ev: Evaluation
        if let soft {
            ev = lm.evaluateBatches(
                prompts: testPrompts, pairs: p.split.test, format: p.format, variants: 1, judge: p.judge,
                maxNewTokens: spec.maxNewTokens, batchSize: 100, progress: report, prepare: soft.insert
            ) { ids, stop in [lm.generate(prompts: ids, stop: stop, prefillHooks: SoftPromptHook(soft))] }[0]
        } else {
            ev = lm.evaluate(
                prompts: testPrompts, pairs: p.split.test, format: p.format, deltas: [nil], layer: 0, judge: p.judge,
                maxNewTokens: spec.maxNewTokens, using: AdaptedBackend(lm.model.backend, adapter: adapter),
                progress: report)[0]
        }
        var metrics: [String: Double] = [
            "n_test": Double(p.split.test.count), "n_train": Double(p.split.train.count),
            "initial_loss": Double(losses.first ?? .nan), "final_loss": Double(finalLoss),
            "parameters": Double(lora.parameters.count), "solve_ms": solveMs,
            "step_ms": solveMs / Double(max(losses.count, 1)),
            "eval_ms": Date().timeIntervalSince(tEval) * 1000,
        ]
        Self.record(ev, into: &metrics)
        metrics["total_ms"] = Date().timeIntervalSince(t0) * 1000
        // the trained parameters with what made them (as a Δ artefact records its job)
        var md: [String: String] = [
            "format": "intervene-adapter", "schema": "1", "model": lm.name, "model_sha256": (try? lm.sha256()) ?? "",
            "architecture": lm.config.architecture, "task": spec.task, "method": spec.method.rawValue,
            "seed": "\(spec.seed)", "steps": "\(losses.count)", "lr": "\(lr)", "train_size": "\(p.split.train.count)",
            "final_loss": "\(finalLoss)", "exact_match": "\(ev.exactMatch)",
            "prompt_format": p.format.query, "target_format": p.format.target,
        ]
        for (k, v) in spec.tunables { md[k] = "\(v)" }
        return JobOutcome(metrics: metrics, artefact: Safetensors.write(tensors: adapter.tensors, metadata: md))
    }
}
