import Foundation

/// CPython's `random.Random`: the MT19937 generator seeded the way CPython seeds it from an
/// integer, with `getrandbits`, `_randbelow` and `shuffle` reproducing CPython 3.x bit for bit.
/// Used so that task splits match the PyTorch reference (`random.Random(seed).shuffle(idx)`).
public struct PythonRandom: Sendable {
    private static let n = 624
    private static let m = 397
    private var mt = [UInt32](repeating: 0, count: 624)
    private var index = 625

    /// `random.Random(seed)` for an int seed: `init_by_array` with the 32-bit chunks of
    /// `abs(seed)`, least significant first (`[0]` for seed 0).
    public init(seed: Int) {
        var magnitude = seed.magnitude
        var key: [UInt32] = []
        while magnitude > 0 {
            key.append(UInt32(truncatingIfNeeded: magnitude))
            magnitude >>= 32
        }
        self.init(key: key.isEmpty ? [0] : key)
    }

    /// Seeds with CPython's `init_by_array(key)`.
    public init(key: [UInt32]) {
        initGenrand(19_650_218)
        let keyLength = max(key.count, 1)
        var i = 1, j = 0
        for _ in 0..<max(Self.n, keyLength) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30)
            mt[i] = (mt[i] ^ (prev &* 1_664_525)) &+ (key.isEmpty ? 0 : key[j]) &+ UInt32(truncatingIfNeeded: j)
            i += 1; j += 1
            if i >= Self.n { mt[0] = mt[Self.n - 1]; i = 1 }
            if j >= keyLength { j = 0 }
        }
        for _ in 0..<(Self.n - 1) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30)
            mt[i] = (mt[i] ^ (prev &* 1_566_083_941)) &- UInt32(truncatingIfNeeded: i)
            i += 1
            if i >= Self.n { mt[0] = mt[Self.n - 1]; i = 1 }
        }
        mt[0] = 0x8000_0000
        index = Self.n
    }

    private mutating func initGenrand(_ s: UInt32) {
        mt[0] = s
        for i in 1..<Self.n {
            mt[i] = 1_812_433_253 &* (mt[i - 1] ^ (mt[i - 1] >> 30)) &+ UInt32(i)
        }
        index = Self.n
    }

    /// The next 32-bit output of MT19937 (`genrand_uint32`).
    public mutating func nextUInt32() -> UInt32 {
        if index >= Self.n {
            let upper: UInt32 = 0x8000_0000, lower: UInt32 = 0x7fff_ffff
            for k in 0..<Self.n {
                let y = (mt[k] & upper) | (mt[(k + 1) % Self.n] & lower)
                mt[k] = mt[(k + Self.m) % Self.n] ^ (y >> 1) ^ ((y & 1) != 0 ? 0x9908_b0df : 0)
            }
            index = 0
        }
        var y = mt[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9d2c_5680
        y ^= (y << 15) & 0xefc6_0000
        y ^= y >> 18
        return y
    }

    /// `getrandbits(k)` for 0 ≤ k ≤ 64: 32-bit words, least significant first, the last one
    /// shifted right to keep its top bits.
    public mutating func getrandbits(_ k: Int) -> UInt64 {
        precondition(k >= 0 && k <= 64, "getrandbits supports 0...64 bits")
        if k == 0 { return 0 }
        if k <= 32 { return UInt64(nextUInt32() >> UInt32(32 - k)) }
        let low = UInt64(nextUInt32())
        let high = UInt64(nextUInt32() >> UInt32(64 - k))
        return low | (high << 32)
    }

    /// `_randbelow(n)` (CPython's `_randbelow_with_getrandbits`): an integer in `0..<n` by
    /// rejection sampling with `getrandbits(n.bit_length())`.
    public mutating func randbelow(_ n: Int) -> Int {
        precondition(n > 0, "randbelow needs n > 0")
        let k = Int.bitWidth - n.leadingZeroBitCount
        var r = getrandbits(k)
        while r >= UInt64(n) { r = getrandbits(k) }
        return Int(r)
    }

    /// `random()`: a Double in [0, 1) with 53 random bits.
    public mutating func random() -> Double {
        let a = Double(nextUInt32() >> 5), b = Double(nextUInt32() >> 6)
        return (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `shuffle(x)`: Fisher–Yates from the end, `for i in reversed(range(1, n)): j = _randbelow(i+1)`.
    public mutating func shuffle<T>(_ array: inout [T]) {
        guard array.count > 1 else { return }
        for i in stride(from: array.count - 1, through: 1, by: -1) {
            let j = randbelow(i + 1)
            array.swapAt(i, j)
        }
    }
}

/// The train/test split of a task, identical to the PyTorch reference's
/// `split(pairs, seed, n_train, n_test)` (shared/reference/common.py):
///
///     idx = list(range(len(pairs))); random.Random(seed).shuffle(idx)
///     train = first n_train of idx
///     test  = the following pairs whose input is not a training input, first n_test of them
///             (all of them when n_test is 0)
///
/// Like the reference, a task with fewer pairs than asked for yields shorter lists, not an
/// error; check `train.count`/`test.count` if that matters.
public struct TaskSplit: Sendable, Equatable {
    public let train: [TaskPair]
    public let test: [TaskPair]

    /// Splits `pairs` by `seed` into `trainSize` training pairs and up to `testSize` test pairs
    /// (`testSize` 0 = every remaining pair) whose inputs never occur among the training inputs.
    public init(pairs: [TaskPair], seed: Int, trainSize: Int = 10, testSize: Int = 200) {
        precondition(trainSize >= 0 && testSize >= 0, "split sizes must be non-negative")
        let idx = Self.shuffledIndices(count: pairs.count, seed: seed)
        let nTrain = min(trainSize, idx.count)
        let train = idx[..<nTrain].map { pairs[$0] }
        let trainInputs = Set(train.map(\.input))
        var test: [TaskPair] = []
        for i in idx[nTrain...] where !trainInputs.contains(pairs[i].input) {
            if testSize > 0 && test.count >= testSize { break }
            test.append(pairs[i])
        }
        self.train = train
        self.test = test
    }

    /// `idx = list(range(count)); random.Random(seed).shuffle(idx)`.
    public static func shuffledIndices(count: Int, seed: Int) -> [Int] {
        var idx = Array(0..<count)
        var rng = PythonRandom(seed: seed)
        rng.shuffle(&idx)
        return idx
    }
}
