import Foundation

extension PairTaskJobs {
    /// A fine-tuning job (`lora`, `ia3`, `soft-prompt`): the adapter trained with Adam at `lr` on the training
    /// pairs' first-target-token loss through the full-sequence path, then the test pairs decoded
    /// greedily by the adapted model (the same prompts, stop rules and scoring as every method).
    func runAdapter(_ p: Prepared, _ adapter: ProductAdapter, lr: Float, progress: Progress?) throws -> JobOutcome {
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
        let path = SequencePath(model: lm, prompts: prompts, adapter: adapter)
        // Adam at the method's learning rate
        var adam = AdamMoments(count: adapter.parameters.count)
        var eta = [Float](repeating: 0, count: adapter.parameters.count)
        var losses: [Float] = []
        let tSolve = Date()
        for step in 1...max(spec.steps, 1) {
            if shouldStop?() == true { throw JobCancelled() }
            let loss = path.loss(targets: targets)
            losses.append(loss)
            adam.step(&adapter.parameters, adapter.gradient, lr: lr, t: step, eta: &eta)
            progress?("solve", step, spec.steps, ["loss": Double(loss)])
        }
        let solveMs = Date().timeIntervalSince(tSolve) * 1000
        let finalLoss = path.loss(targets: targets, gradient: false)
        adapter.recording = false
        let tEval = Date()
        let testPrompts = p.split.test.map { p.format.prompt($0.input) }
        let ev: Evaluation
        if let soft {
            ev = evaluate(p, prompts: testPrompts, prefill: SoftPromptHook(soft), prepare: soft.insert, progress: progress)
        } else {
            ev = lm.evaluate(
                prompts: testPrompts, pairs: p.split.test, format: p.format, deltas: [nil], layer: 0, judge: p.judge,
                maxNewTokens: spec.maxNewTokens, using: AdaptedBackend(lm.model.backend, adapter: adapter)
            ) { progress?("eval", $0, p.split.test.count, [:]) }[0]
        }
        var metrics: [String: Double] = [
            "n_test": Double(p.split.test.count), "n_train": Double(p.split.train.count),
            "initial_loss": Double(losses.first ?? .nan), "final_loss": Double(finalLoss),
            "parameters": Double(adapter.parameters.count), "solve_ms": solveMs,
            "step_ms": solveMs / Double(max(losses.count, 1)),
            "eval_ms": Date().timeIntervalSince(tEval) * 1000,
        ]
        Self.record(ev, into: &metrics)
        metrics["total_ms"] = Date().timeIntervalSince(t0) * 1000
        // the trained parameters with what made them (as a Δ artefact records its job)
        var md = artefactMetadata(p, format: "intervene-adapter", exactMatch: ev.exactMatch)
        md["steps"] = "\(losses.count)"
        md["lr"] = "\(lr)"
        md["final_loss"] = "\(finalLoss)"
        return JobOutcome(metrics: metrics, artefact: Safetensors.write(tensors: adapter.tensors, metadata: md))
    }
}
