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
            "parameters": Double(adapter.parameters.count), "solve_ms": solveMs,
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
        md.merge(spec.tunableTexts) { $1 }
        return JobOutcome(metrics: metrics, artefact: Safetensors.write(tensors: adapter.tensors, metadata: md))
    }
}
