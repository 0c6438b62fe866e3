import Foundation
import XCTest
@testable import Protocol

final class ZMQTests: XCTestCase {
    var ctx: ZContext!
    var sockets: [ZSocket] = []

    override func setUpWithError() throws { ctx = try ZContext() }
    override func tearDown() {
        for s in sockets { s.close() }
        sockets = []
        ctx = nil
    }

    func make(_ type: ZSocketType, _ configure: (inout ZSocketOptions) -> Void = { _ in }) throws -> ZSocket {
        var o = ZSocketOptions()
        o.lingerMs = 0
        configure(&o)
        let s = try ZSocket(ctx, type, options: o)
        sockets.append(s)
        return s
    }

    func echoRoundTrip(endpoint: String) throws {
        let router = try make(.router)
        try router.bind(endpoint)
        let bound = router.lastEndpoint
        XCTAssertFalse(bound.isEmpty)
        if endpoint.hasPrefix("tcp") { XCTAssertFalse(bound.hasSuffix(":*"), bound) }
        let dealer = try make(.dealer) { $0.identity = Data("worker-1".utf8) }
        try dealer.connect(bound)

        let frames = [Data("a".utf8), Data(), Data((0..<300).map { UInt8($0 & 0xff) })]
        try dealer.send(frames, timeoutMs: 1000)
        guard let got = try router.receive(timeoutMs: 2000) else { return XCTFail("router got nothing") }
        XCTAssertEqual(got.count, 4)
        XCTAssertEqual(got[0], Data("worker-1".utf8), "stable identity")
        XCTAssertEqual(Array(got[1...]), frames)
        try router.send(got, timeoutMs: 1000)
        XCTAssertEqual(try dealer.receive(timeoutMs: 2000), frames)

        // Round-trip latency.
        let n = 200
        let t0 = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<n {
            try dealer.send([Data("ping".utf8)], timeoutMs: 1000)
            guard let m = try router.receive(timeoutMs: 2000) else { return XCTFail("lost ping") }
            try router.send(m, timeoutMs: 1000)
            guard try dealer.receive(timeoutMs: 2000) != nil else { return XCTFail("lost pong") }
        }
        let us = Double(DispatchTime.now().uptimeNanoseconds - t0) / Double(n) / 1000
        print(String(format: "ROUTER/DEALER round trip over %@: %.1f µs", endpoint, us))
    }

    func testRouterDealerEchoTCP() throws { try echoRoundTrip(endpoint: "tcp://127.0.0.1:*") }
    func testRouterDealerEchoInproc() throws { try echoRoundTrip(endpoint: "inproc://echo-\(UUID().uuidString)") }

    func testRouterMandatoryRefusesUnknownPeer() throws {
        let router = try make(.router)
        try router.bind("tcp://127.0.0.1:*")
        XCTAssertThrowsError(try router.send([Data("nobody".utf8), Data("x".utf8)], timeoutMs: 0)) { error in
            XCTAssertTrue((error as? ZMQError)?.isHostUnreachable == true, "\(error)")
        }
    }

    func testPubSubDeliveryAndTopicFilter() throws {
        let pub = try make(.pub)
        try pub.bind("tcp://127.0.0.1:*")
        let sub = try make(.sub)
        try sub.subscribe("exp1")
        try sub.connect(pub.lastEndpoint)
        // Slow joiner: publish until the subscription has propagated (bounded).
        var got: [Data]?
        let deadline = Date().addingTimeInterval(3)
        while got == nil && Date() < deadline {
            try pub.send([Data("other".utf8), Data("no".utf8)])
            try pub.send([Data("exp1".utf8), Data("hello".utf8)])
            got = try sub.receive(timeoutMs: 20)
        }
        XCTAssertEqual(got, [Data("exp1".utf8), Data("hello".utf8)])
        // Once joined, every message on the topic arrives, in order; others are filtered out.
        while try sub.receive(timeoutMs: 50) != nil {}
        for i in 0..<100 {
            try pub.send([Data("other".utf8), Data("no".utf8)])
            try pub.send([Data("exp1".utf8), Wire.encode(.update({ var u = Intervene_V1_Update(); u.sequence = UInt64(i); return u }()))])
        }
        var seqs: [UInt64] = []
        while let m = try sub.receive(timeoutMs: 200) {
            XCTAssertEqual(m[0], Data("exp1".utf8))
            guard case let .update(u)? = try Wire.decode(m[1]).body else { return XCTFail("not an update") }
            seqs.append(u.sequence)
            if seqs.count == 100 { break }
        }
        XCTAssertEqual(seqs, (0..<100).map(UInt64.init))
    }

    func testPollAndReceiveTimeoutsReturn() throws {
        let dealer = try make(.dealer)
        try dealer.connect("tcp://127.0.0.1:1")  // nobody there
        var t0 = Date()
        XCTAssertNil(try dealer.receive(timeoutMs: 60))
        var dt = Date().timeIntervalSince(t0)
        XCTAssertGreaterThanOrEqual(dt, 0.05); XCTAssertLessThan(dt, 1.0)
        t0 = Date()
        XCTAssertEqual(try dealer.poll(.readable, timeoutMs: 40), [])
        dt = Date().timeIntervalSince(t0)
        XCTAssertGreaterThanOrEqual(dt, 0.03); XCTAssertLessThan(dt, 1.0)
        XCTAssertNil(try dealer.receive(timeoutMs: 0))
        // A DEALER with IMMEDIATE and no connected peer cannot queue: the timed send gives up.
        let lonely = try make(.dealer) { $0.immediate = true }
        try lonely.connect("tcp://127.0.0.1:1")
        t0 = Date()
        XCTAssertThrowsError(try lonely.send([Data("x".utf8)], timeoutMs: 50)) { error in
            XCTAssertTrue((error as? ZMQError)?.isWouldBlock == true, "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 1.0)
    }

    func testOversizedMessageIsDroppedAndReceiverSurvives() throws {
        let router = try make(.router) { $0.maxMessageSize = 1024 }
        try router.bind("tcp://127.0.0.1:*")
        let big = try make(.dealer) { $0.identity = Data("big".utf8) }
        try big.connect(router.lastEndpoint)
        try big.send([Data(repeating: 7, count: 64 * 1024)], timeoutMs: 1000)
        XCTAssertNil(try router.receive(timeoutMs: 300), "oversized message must not surface")

        let small = try make(.dealer) { $0.identity = Data("small".utf8) }
        try small.connect(router.lastEndpoint)
        try small.send([Data("fine".utf8)], timeoutMs: 1000)
        let got = try router.receive(timeoutMs: 2000)
        XCTAssertEqual(got, [Data("small".utf8), Data("fine".utf8)])
        // Exactly at the limit is accepted.
        try small.send([Data(repeating: 1, count: 1000)], timeoutMs: 1000)
        XCTAssertEqual(try router.receive(timeoutMs: 2000)?.last?.count, 1000)
    }

    func testMultiSocketPollAndCloseIsIdempotent() throws {
        let a = try make(.pair), b = try make(.pair)
        let ep = "inproc://pair-\(UUID().uuidString)"
        try a.bind(ep); try b.connect(ep)
        let c = try make(.dealer)
        try b.send(Data("x".utf8), timeoutMs: 100)
        let ready = try ZSocket.poll([(c, .readable), (a, .readable)], timeoutMs: 1000)
        XCTAssertEqual(ready, [[], .readable])
        a.close(); a.close()
        XCTAssertTrue(a.isClosed)
        XCTAssertThrowsError(try a.send(Data("x".utf8)))
    }
}
