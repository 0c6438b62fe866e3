import Foundation
import Synchronization

/// A fixed set of helper threads for the many short parallel regions of a solver step.
///
/// A step of the single-token path runs about 300 products, most of them 50–300 µs long and a few
/// microseconds apart. `DispatchQueue.concurrentPerform` wakes a sleeping thread for each one,
/// which measured ~45 µs per region here (a 576×576 product: 117 µs on 1 thread, 104 µs on 2).
/// These helpers instead spin on a generation counter for a short while after each region, and
/// only then sleep on a semaphore, so back-to-back regions start in well under a microsecond.
///
/// `run` is not re-entrant: a call made while another is in flight (from a helper, or from a
/// second thread) runs its parts serially on the calling thread instead of waiting.
public final class SpinPool: @unchecked Sendable {
    /// Threads taking part in a region, the caller included.
    public let threads: Int
    /// Spin iterations (one atomic load each, a few ns) before a helper goes to sleep: ~0.1–0.3 ms.
    static let spinLimit = 40_000

    private let generation = Atomic<Int>(0)
    private let pending = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let wake = DispatchSemaphore(value: 0)
    /// The region's body; written before `generation` is bumped, read by helpers after they see it.
    private var job: ((Int) -> Void)?
    private var parts = 0

    private init(threads: Int) {
        self.threads = max(1, threads)
        for index in 1..<self.threads {
            let t = Thread { [unowned self] in self.helperLoop(index) }
            t.name = "intervene-pool-\(index)"
            t.stackSize = 1 << 20
            t.start()
        }
    }

    nonisolated(unsafe) private static var pools: [Int: SpinPool] = [:]
    private static let poolsLock = NSLock()

    /// The process-wide pool with `threads` threads (created on first use, never torn down).
    public static func shared(threads: Int) -> SpinPool {
        poolsLock.lock(); defer { poolsLock.unlock() }
        if let p = pools[threads] { return p }
        let p = SpinPool(threads: threads)
        pools[threads] = p
        return p
    }

    private func helperLoop(_ index: Int) {
        var seen = 0
        while true {
            var spins = 0
            var g = generation.load(ordering: .acquiring)
            while g == seen {
                spins += 1
                if spins >= Self.spinLimit {
                    // Announce the sleep, then re-check: `run` bumps the generation before it
                    // reads `sleepers`, so either we see the new generation or it signals us.
                    sleepers.add(1, ordering: .sequentiallyConsistent)
                    if generation.load(ordering: .sequentiallyConsistent) == seen { wake.wait() }
                    spins = 0
                }
                g = generation.load(ordering: .acquiring)
            }
            seen = g
            if index < parts, let job { job(index) }
            pending.subtract(1, ordering: .releasing)
        }
    }

    /// `body(part, range)` for `count` items split into contiguous ranges, one per thread (at most
    /// `threads`, never more than the items), on the shared pool; one call with all of them when
    /// that is a single range.
    public static func forEachRange(_ count: Int, threads: Int, _ body: (_ part: Int, _ range: Range<Int>) -> Void) {
        let t = min(threads, count)
        if t <= 1 { body(0, 0..<count); return }
        let per = (count + t - 1) / t
        shared(threads: threads).run(t) { ti in
            let r = min(count, ti * per)..<min(count, (ti + 1) * per)
            if !r.isEmpty { body(ti, r) }
        }
    }

    /// Runs `body(0) … body(n − 1)` in parallel (n ≤ threads; part 0 on the calling thread) and
    /// returns when all are done.
    public func run(_ n: Int, _ body: (Int) -> Void) {
        if n <= 1 || threads == 1 { for i in 0..<n { body(i) }; return }
        guard n <= threads, busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            for i in 0..<n { body(i) }
            return
        }
        withoutActuallyEscaping(body) { body in
            job = body
            parts = n
            pending.store(threads - 1, ordering: .relaxed)
            generation.add(1, ordering: .sequentiallyConsistent)
            let s = sleepers.exchange(0, ordering: .sequentiallyConsistent)
            for _ in 0..<s { wake.signal() }
            body(0)
            while pending.load(ordering: .acquiring) > 0 {}
            job = nil
        }
        busy.store(false, ordering: .releasing)
    }
}
