import Foundation

/// The sparse group lasso penalty on Δ, groups = heads:  γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂.
public struct SparseGroupLasso: Sendable {
    public var gamma: Float
    public var lambda: Float
    public var heads: Int
    public var headDim: Int
    public init(gamma: Float, lambda: Float, heads: Int, headDim: Int) {
        self.gamma = gamma; self.lambda = lambda; self.heads = heads; self.headDim = headDim
    }

    public func value(_ d: [Float]) -> Float {
        var l1: Float = 0, gl: Float = 0
        for h in 0..<heads {
            var s: Float = 0
            for j in (h * headDim)..<((h + 1) * headDim) { l1 += abs(d[j]); s += d[j] * d[j] }
            gl += s.squareRoot()
        }
        return gamma * l1 + lambda * gl
    }

    /// The exact proximal operator with step t:  argmin_x ½‖x − v‖² + t·(γ‖x‖₁ + λΣ‖x_h‖₂)
    /// = per head: soft-threshold by tγ, then shrink the head's norm by tλ (zero if below).
    /// `steps` (optional, per coordinate) replaces t where a method scales coordinates differently.
    public func prox(_ v: inout [Float], step t: Float) {
        for h in 0..<heads {
            let r = (h * headDim)..<((h + 1) * headDim)
            var s: Float = 0
            for j in r {
                let a = abs(v[j]) - t * gamma
                v[j] = a > 0 ? (v[j] > 0 ? a : -a) : 0
                s += v[j] * v[j]
            }
            let n = s.squareRoot()
            let k: Float = n > t * lambda ? 1 - t * lambda / n : 0
            for j in r { v[j] *= k }
        }
    }

    /// The prox in a diagonal metric (step η_j per coordinate), as Adam scales each coordinate:
    /// the ℓ1 part is exact (soft threshold by η_j·γ); the group part, which has no closed form
    /// for unequal steps, shrinks each head by the mean step of its coordinates.
    public func prox(_ v: inout [Float], steps eta: [Float]) {
        for h in 0..<heads {
            let r = (h * headDim)..<((h + 1) * headDim)
            var s: Float = 0, mean: Float = 0
            for j in r {
                let a = abs(v[j]) - eta[j] * gamma
                v[j] = a > 0 ? (v[j] > 0 ? a : -a) : 0
                s += v[j] * v[j]
                mean += eta[j]
            }
            mean /= Float(headDim)
            let n = s.squareRoot()
            let k: Float = n > mean * lambda ? 1 - mean * lambda / n : 0
            for j in r { v[j] *= k }
        }
    }

    /// g += γ·sign(Δ) + λ·Δ_h/‖Δ_h‖ (taking sign(0) = 0 and 0 for a zero head, as autograd does).
    public func addSubgradient(_ d: [Float], to g: inout [Float]) {
        for h in 0..<heads {
            let r = (h * headDim)..<((h + 1) * headDim)
            var s: Float = 0
            for j in r { s += d[j] * d[j] }
            let n = s.squareRoot()
            for j in r {
                g[j] += gamma * (d[j] > 0 ? 1 : (d[j] < 0 ? -1 : 0))
                if n > 0 { g[j] += lambda * d[j] / n }
            }
        }
    }

    public func nonzeros(_ d: [Float]) -> Int { d.reduce(0) { $0 + ($1 != 0 ? 1 : 0) } }
    public func activeHeads(_ d: [Float]) -> Int {
        (0..<heads).reduce(0) { acc, h in acc + (d[(h * headDim)..<((h + 1) * headDim)].contains { $0 != 0 } ? 1 : 0) }
    }
}

/// One solver step's report.
/// Adam's moment estimates for one parameter vector (β = 0.9, 0.999, ε = 1e-8): Δ's solvers and
/// the fine-tuning baselines step with it.
struct AdamMoments {
    var m: [Float], v: [Float]
    init(count n: Int) {
        m = [Float](repeating: 0, count: n)
        v = m
    }
    /// Step `t` (from 1) of x with gradient g at learning rate lr; each coordinate's step
    /// lr/(√v̂ + ε) is left in `eta` (the metric of Adam's prox).
    mutating func step(_ x: inout [Float], _ g: [Float], lr: Float, t: Int, eta: inout [Float]) {
        let b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8
        let c1 = 1 - powf(b1, Float(t)), c2 = 1 - powf(b2, Float(t))
        for c in x.indices {
            m[c] = b1 * m[c] + (1 - b1) * g[c]
            v[c] = b2 * v[c] + (1 - b2) * g[c] * g[c]
            eta[c] = lr / ((v[c] / c2).squareRoot() + eps)
            x[c] -= eta[c] * (m[c] / c1)
        }
    }
}

public struct SolverStep: Sendable {
    public var step: Int
    public var objective: Float
    public var loss: Float
    public var penalty: Float
    public var nonzeros: Int
    public var activeHeads: Int
    public var stepSize: Float
    public var metrics: [String: Double] {
        ["objective": Double(objective), "loss": Double(loss), "penalty": Double(penalty),
         "nonzero": Double(nonzeros), "active_heads": Double(activeHeads), "step_size": Double(stepSize)]
    }
}

public struct SolverOptions: Sendable {
    public var method: SolverMethod = .defaultMethod
    public var steps: Int = 200
    public var lr: Float = 0.1
    /// Stop when the objective's relative change over 10 steps is below this (0 = run all steps).
    public var tolerance: Float = 0
    /// How the path's products may round their operands while solving (see `Precision`).
    public var precision: Precision = .solverDefault
    /// Checked before every step: true ends the run there (a cancelled job; the caller throws).
    public var shouldStop: (@Sendable () -> Bool)? = nil
    public init(method: SolverMethod = .defaultMethod, steps: Int = 200, lr: Float = 0.1, tolerance: Float = 0,
                precision: Precision = .solverDefault) {
        self.method = method; self.steps = steps; self.lr = lr; self.tolerance = tolerance; self.precision = precision
    }
}

public struct SolverResult: Sendable {
    public var delta: [Float]
    public var history: [SolverStep]
    public var final: SolverStep { history.last! }
}

/// Minimises loss(Δ) + γ‖Δ‖₁ + λΣ_h‖Δ_h‖₂ over Δ. Deterministic: Δ starts at 0 and no step
/// draws random numbers.
public enum Solver {
    /// Solves one problem over all the path's rows (any method, FISTA included). The path's
    /// precision is set to `options.precision` while solving and restored after.
    public static func solve(path: InterventionPath, loss: TaskLoss, penalty: SparseGroupLasso,
                             options: SolverOptions, onStep: ((SolverStep) -> Void)? = nil) -> SolverResult {
        let saved = path.precision
        path.precision = options.precision
        defer { path.precision = saved }   // the solver's precision is not left on the path
        switch options.method {
        case .adam: return adam(path: path, loss: loss, penalty: penalty, options: options, metric: true, onStep: onStep)
        case .adamAveraged:
            return adam(path: path, loss: loss, penalty: penalty, options: options, metric: true, averageTail: true, onStep: onStep)
        case .adamUniform: return adam(path: path, loss: loss, penalty: penalty, options: options, metric: false, onStep: onStep)
        case .adamSubgradient: return adam(path: path, loss: loss, penalty: penalty, options: options, metric: false, subgradient: true, onStep: onStep)
        case .fista: return fista(path: path, loss: loss, penalty: penalty, options: options, onStep: onStep)
        }
    }

    static func report(_ step: Int, _ d: [Float], _ l: Float, _ p: SparseGroupLasso, _ t: Float) -> SolverStep {
        let pen = p.value(d)
        return SolverStep(step: step, objective: l + pen, loss: l, penalty: pen, nonzeros: p.nonzeros(d),
                          activeHeads: p.activeHeads(d), stepSize: t)
    }

    static func converged(_ h: [SolverStep], _ tol: Float) -> Bool {
        guard tol > 0, h.count > 10 else { return false }
        let a = h[h.count - 11].objective, b = h[h.count - 1].objective
        return abs(a - b) <= tol * max(abs(a), 1e-6)
    }

    /// Solves several jobs that share the path's prompts-by-rows (job j owns rows `jobs[j]`):
    /// independent Δs and optimiser states, one forward/backward per step for all of them.
    /// Adam variants only (FISTA's line search is per job).
    public static func solveJobs(path: InterventionPath, jobs: [Range<Int>], loss: TaskLoss, penalty: SparseGroupLasso,
                                 options: SolverOptions, onStep: ((_ job: Int, SolverStep) -> Void)? = nil) -> [SolverResult] {
        let saved = path.precision
        path.precision = options.precision
        defer { path.precision = saved }
        switch options.method {
        case .adam: return adam(path: path, jobs: jobs, loss: loss, penalty: penalty, options: options, metric: true, onStep: onStep)
        case .adamAveraged:
            return adam(path: path, jobs: jobs, loss: loss, penalty: penalty, options: options, metric: true, averageTail: true, onStep: onStep)
        case .adamUniform: return adam(path: path, jobs: jobs, loss: loss, penalty: penalty, options: options, metric: false, onStep: onStep)
        case .adamSubgradient:
            return adam(path: path, jobs: jobs, loss: loss, penalty: penalty, options: options, metric: false, subgradient: true, onStep: onStep)
        case .fista:
            precondition(jobs.count == 1, "FISTA runs one job per path")
            return [fista(path: path, loss: loss, penalty: penalty, options: options) { onStep?(0, $0) }]
        }
    }

    static func adam(path: InterventionPath, loss: TaskLoss, penalty: SparseGroupLasso,
                     options o: SolverOptions, metric: Bool, subgradient: Bool = false, averageTail: Bool = false,
                     onStep: ((SolverStep) -> Void)?) -> SolverResult {
        adam(path: path, jobs: [0..<path.rows], loss: loss, penalty: penalty, options: o, metric: metric,
             subgradient: subgradient, averageTail: averageTail) { _, s in onStep?(s) }[0]
    }

    static func adam(path: InterventionPath, jobs: [Range<Int>], loss: TaskLoss, penalty: SparseGroupLasso,
                     options o: SolverOptions, metric: Bool, subgradient: Bool = false, averageTail: Bool = false,
                     onStep: ((Int, SolverStep) -> Void)?) -> [SolverResult] {
        let n = path.cfg.attnDim, K = jobs.count
        let zero = [Float](repeating: 0, count: n)
        var d = [[Float]](repeating: zero, count: K), eta = d
        var adam = [AdamMoments](repeating: AdamMoments(count: n), count: K)
        var history = [[SolverStep]](repeating: [], count: K)
        // tail averaging: Σ of the iterates after step `averageFrom` (the second half of the run)
        let averageFrom = averageTail ? max(o.steps, 1) / 2 + 1 : Int.max
        var sum = d, summed = 0
        for k in 1...max(o.steps, 1) {
            let lg = path.lossesAndGradients(deltas: d, jobs: jobs, loss: loss)
            for j in 0..<K {
                var g = lg[j].grad
                if subgradient { penalty.addSubgradient(d[j], to: &g) }
                // the report of step k is the objective at the Δ this step starts from
                let r = report(k - 1, d[j], lg[j].loss, penalty, o.lr)
                history[j].append(r); onStep?(j, r)
                adam[j].step(&d[j], g, lr: o.lr, t: k, eta: &eta[j])
                if subgradient { continue }
                if metric { penalty.prox(&d[j], steps: eta[j]) } else { penalty.prox(&d[j], step: o.lr) }
            }
            if k >= averageFrom {
                summed += 1
                for j in 0..<K { for c in 0..<n { sum[j][c] += d[j][c] } }
            }
            if history.allSatisfy({ converged($0, o.tolerance) }) || o.shouldStop?() == true { break }
        }
        if summed > 0 {
            // the mean of the tail, then the penalty's prox once more (the last Adam steps'
            // metric), so coordinates the tail keeps near zero are exactly zero
            for j in 0..<K {
                d[j] = sum[j].map { $0 / Float(summed) }
                penalty.prox(&d[j], steps: eta[j])
            }
        }
        // the final Δs (the last iterate, as the reference does, or the tail's mean), evaluated
        let final = path.lossesAndGradients(deltas: d, jobs: jobs, loss: loss, gradient: false)
        return (0..<K).map { j in
            let last = report(history[j].count, d[j], final[j].loss, penalty, o.lr)
            history[j].append(last); onStep?(j, last)
            return SolverResult(delta: d[j], history: history[j])
        }
    }

    static func fista(path: InterventionPath, loss: TaskLoss, penalty: SparseGroupLasso,
                      options o: SolverOptions, onStep: ((SolverStep) -> Void)?) -> SolverResult {
        let n = path.cfg.attnDim
        var x = [Float](repeating: 0, count: n), y = x
        var t: Float = 1                     // momentum parameter
        var step = o.lr                      // step size, adapted by backtracking
        var history: [SolverStep] = []
        var fx = path.loss(delta: x, loss: loss)
        var objX = fx + penalty.value(x)
        for k in 1...max(o.steps, 1) {
            let (fy, g) = path.lossAndGradient(delta: y, loss: loss)
            var xNew: [Float] = [], fNew: Float = 0
            step *= 1.5                      // let the step grow again
            for _ in 0..<30 {
                xNew = zip(y, g).map { $0 - step * $1 }
                penalty.prox(&xNew, step: step)
                fNew = path.loss(delta: xNew, loss: loss)
                var lin: Float = 0, quad: Float = 0
                for j in 0..<n { let dj = xNew[j] - y[j]; lin += g[j] * dj; quad += dj * dj }
                if fNew <= fy + lin + quad / (2 * step) + 1e-6 { break }
                step *= 0.5
            }
            let objNew = fNew + penalty.value(xNew)
            if objNew > objX {
                // adaptive restart: drop the momentum, stay at x
                t = 1; y = x
                let r = report(k, x, fx, penalty, step); history.append(r); onStep?(r)
                continue
            }
            let tNew = (1 + (1 + 4 * t * t).squareRoot()) / 2
            let beta = (t - 1) / tNew
            y = (0..<n).map { xNew[$0] + beta * (xNew[$0] - x[$0]) }
            x = xNew; fx = fNew; objX = objNew; t = tNew
            let r = report(k, x, fx, penalty, step)
            history.append(r); onStep?(r)
            if converged(history, o.tolerance) || o.shouldStop?() == true { break }
        }
        return SolverResult(delta: x, history: history)
    }
}
