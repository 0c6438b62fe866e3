import Foundation

extension PairTaskJobs {
    /// Why a function vector cannot be built for this job (nil: it can).
    func functionVectorRefusal(_ p: Prepared) -> EngineJobError? {
        guard p.split.train.count >= 3 else {
            return EngineJobError(
                "\(p.spec.method.rawValue) needs train_size ≥ 3 (one demonstration leaves nothing to shuffle)")
        }
        // W_O·ā is a head's contribution to the stream only where o_proj's output is added as it
        // is; a family that normalises the heads' sum first (Gemma 3) has no per-head contribution
        guard !lm.config.postNorms else {
            return EngineJobError(
                "\(p.spec.method.rawValue) on \(lm.config.architecture): this family normalises o_proj's output "
                    + "before the residual add, so a head's mean output has no additive contribution to sum (Todd "
                    + "et al.'s construction); use icv or intervention on this model")
        }
        return nil
    }

    /// The ranking of the job's training pairs: from its input (an `fv-heads` job's artefact)
    /// when it names one, else computed here.
    func headRanking(_ p: Prepared, inputs: [(id: String, data: Data)], progress: Progress?) throws
        -> FunctionVector.Ranking
    {
        guard inputs.count <= 1 else {
            throw EngineJobError(
                "function-vector reads at most one input (an fv-heads job's ranking), got \(inputs.count)")
        }
        if let input = inputs.first {
            do {
                return try FunctionVector.Ranking(artefact: input.data, model: lm, seed: p.spec.seed,
                                                  trainSize: p.split.train.count, format: p.format)
            } catch let e as EngineJobError {
                throw EngineJobError("input \(input.id): \(e.message)")
            } catch {
                throw EngineJobError("input \(input.id) is not a head ranking: \(error)")
            }
        }
        return FunctionVector.Ranking(lm, train: p.split.train, format: p.format, seed: p.spec.seed) {
            progress?("rank", $0, $1, [:])
        }
    }

    /// An `fv-heads` job: the head ranking of the training pairs, as an artefact for the
    /// `function-vector` jobs of the same split.
    func runHeadRanking(_ p: Prepared, progress: Progress?) throws -> JobOutcome {
        if let refusal = functionVectorRefusal(p) { throw refusal }
        let t0 = Date()
        let r = try headRanking(p, inputs: [], progress: progress)
        let top = FunctionVector.topHeads(r.effects, heads: lm.config.nHeads, k: 10)
        var md = artefactMetadata(p, format: "intervene-fv-heads", exactMatch: nil)
        md["clean_p_answer"] = "\(r.cleanProbability)"
        md["corrupted_p_answer"] = "\(r.corruptedProbability)"
        md["top_heads"] = top.map { "\($0.layer).\($0.head)" }.joined(separator: ",")
        var metrics = r.metrics(heads: lm.config.nHeads)
        metrics["n_train"] = Double(p.split.train.count)
        metrics["total_ms"] = Date().timeIntervalSince(t0) * 1000
        return JobOutcome(metrics: metrics, artefact: Safetensors.write(tensors: r.tensors, metadata: md))
    }

    /// A `function-vector` job: the FV of the training pairs (`FunctionVector`), added at the
    /// prompt's last position entering block `fv.layer`, on 0-shot prompts and on `shots`-shot ones.
    /// Its ranking comes from its input, an `fv-heads` job's artefact, if it names one.
    func runFunctionVector(_ p: Prepared, inputs: [(id: String, data: Data)], progress: Progress?) throws
        -> JobOutcome
    {
        if let refusal = functionVectorRefusal(p) { throw refusal }
        let t0 = Date()
        let spec = p.spec, L = lm.config.nLayers
        let layer = spec[.fvLayer] < 0 ? L / 3 : Int(spec[.fvLayer])
        guard layer < L else { throw EngineJobError("fv.layer \(layer) is outside this model's 0…\(L - 1)") }
        let heads = min(Int(spec[.fvHeads]), L * lm.config.nHeads)
        let fv = FunctionVector(lm, ranking: try headRanking(p, inputs: inputs, progress: progress), heads: heads)
        let buildMs = Date().timeIntervalSince(t0) * 1000
        let hook = ResidualAddHook(layer: layer, vector: fv.vector)
        let tEval = Date()
        let report: (Int, Int) -> Void = { progress?("eval", $0, $1, [:]) }
        let zero = evaluate(p, prompts: p.split.test.map { p.format.prompt($0.input) }, deltas: [nil],
                            lastPosition: hook, progress: report)[0]
        let demos = Array(p.split.train.prefix(max(spec.shots, 0)))
        let few = evaluate(p, prompts: p.split.test.map { p.format.fewShot(demos, $0.input) }, deltas: [nil],
                           lastPosition: hook, progress: report)[0]
        var metrics: [String: Double] = [
            "n_test": Double(p.split.test.count), "n_train": Double(p.split.train.count), "fv_layer": Double(layer),
            "fv_heads": Double(heads), "fv_norm": Double(fv.vector.reduce(0) { $0 + $1 * $1 }.squareRoot()),
            "build_ms": buildMs, "eval_ms": Date().timeIntervalSince(tEval) * 1000,
            "ranking_from_input": inputs.isEmpty ? 0 : 1,
        ]
        metrics.merge(fv.ranking.metrics(heads: lm.config.nHeads)) { $1 }
        Self.record(zero, into: &metrics)
        Self.record(few, into: &metrics, prefix: "few_shot_")
        metrics["total_ms"] = Date().timeIntervalSince(t0) * 1000
        var md = artefactMetadata(p, format: "intervene-vector", exactMatch: zero.exactMatch)
        md["layer"] = "\(layer)"
        md["shots"] = "\(demos.count)"
        md["heads"] = fv.heads.map { "\($0.layer).\($0.head)" }.joined(separator: ",")
        return JobOutcome(metrics: metrics, artefact: Safetensors.write(tensors: fv.tensors, metadata: md))
    }

    /// An `icv` job: the in-context vector of the training pairs (`InContextVector`), shifting
    /// every block's MLP output at every position with strength `icv.alpha`, on 0-shot prompts.
    func runICV(_ p: Prepared, progress: Progress?) -> JobOutcome {
        let t0 = Date()
        let icv = InContextVector(lm, train: p.split.train)
        let buildMs = Date().timeIntervalSince(t0) * 1000
        let hook = ICVHook(icv, alpha: Float(p.spec[.icvAlpha]))
        let tEval = Date()
        let ev = evaluate(p, prompts: p.split.test.map { p.format.prompt($0.input) }, prefill: hook, decode: hook,
                          progress: progress)
        var metrics: [String: Double] = [
            "n_test": Double(p.split.test.count), "n_train": Double(p.split.train.count), "build_ms": buildMs,
            "eval_ms": Date().timeIntervalSince(tEval) * 1000,
        ]
        Self.record(ev, into: &metrics)
        metrics["total_ms"] = Date().timeIntervalSince(t0) * 1000
        var md = artefactMetadata(p, format: "intervene-vector", exactMatch: ev.exactMatch)
        md["alpha"] = "\(p.spec[.icvAlpha])"
        return JobOutcome(metrics: metrics, artefact: Safetensors.write(tensors: icv.tensors, metadata: md))
    }
}
