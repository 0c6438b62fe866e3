import Foundation
import XCTest
@testable import Protocol

/// CurveZMQ keys, their files and allow-lists, the ZAP handler and the roles it gives.
final class CurveTests: XCTestCase {
    var dir: String!

    override func setUpWithError() throws {
        try XCTSkipUnless(ZCurveKeys.available, "this libzmq has no CurveZMQ")
        dir = NSTemporaryDirectory() + "curve-test-\(UUID().uuidString.prefix(8))"
    }

    override func tearDown() {
        if let dir { try? FileManager.default.removeItem(atPath: dir) }
    }

    // MARK: keys and files

    func testKeyPairDerivesAndEncodes() throws {
        let p = try CurveKeyPair.generate()
        XCTAssertEqual(p.publicKey.count, 40)
        XCTAssertEqual(p.secretKey.count, 40)
        XCTAssertEqual(try CurveKeyPair(secretKey: p.secretKey), p, "the public key follows from the secret")
        let raw = try XCTUnwrap(ZCurveKeys.decode(p.publicKey))
        XCTAssertEqual(raw.count, 32)
        XCTAssertEqual(ZCurveKeys.encode(raw), p.publicKey)
        XCTAssertNil(ZCurveKeys.decode("short"))
        XCTAssertNil(ZCurveKeys.decode(String(repeating: " ", count: 40)))
        XCTAssertThrowsError(try CurveKeyPair(secretKey: "nope"))
    }

    func testKeyFilesRoundTrip() throws {
        let p = try CurveKeyPair.generate()
        let paths = try p.write(name: "alice", directory: dir)
        XCTAssertEqual(paths.pub, dir + "/alice.pub")
        XCTAssertEqual(try String(contentsOfFile: paths.pub, encoding: .utf8), p.publicKey + "\n")
        XCTAssertEqual(try String(contentsOfFile: paths.secret, encoding: .utf8),
                       "public \(p.publicKey)\nsecret \(p.secretKey)\n", "the format other clients read")
        let mode = try FileManager.default.attributesOfItem(atPath: paths.secret)[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600, "a secret is readable by its owner only")
        XCTAssertEqual(try CurveKeyPair.load(secretFile: paths.secret), p)
        XCTAssertEqual(try CurveKeyList.load(paths.pub, flag: "--worker-keys").keys, [p.publicKey])

        XCTAssertThrowsError(try p.write(name: "alice", directory: dir)) {
            XCTAssertTrue("\($0)".contains("--force"), "\($0)")
        }
        let q = try CurveKeyPair.generate()
        try q.write(name: "alice", directory: dir, overwrite: true)
        XCTAssertEqual(try CurveKeyPair.load(secretFile: paths.secret), q)
        XCTAssertThrowsError(try p.write(name: "../x", directory: dir))
    }

    func testSecretFileErrorsNameTheFix() throws {
        let p = try CurveKeyPair.generate()
        let paths = try p.write(name: "w", directory: dir)
        func message(_ path: String) -> String {
            do { _ = try CurveKeyPair.load(secretFile: path); return "" } catch { return "\(error)" }
        }
        XCTAssertTrue(message(paths.pub).contains("NAME.secret"), message(paths.pub))
        XCTAssertTrue(message(dir + "/none").contains("no such file"))
        let other = try CurveKeyPair.generate()
        let mixed = dir + "/mixed.secret"
        try "public \(other.publicKey)\nsecret \(p.secretKey)\n".write(toFile: mixed, atomically: true, encoding: .utf8)
        XCTAssertTrue(message(mixed).contains("does not belong"), message(mixed))
    }

    func testAllowListFormat() throws {
        var keys = try (0..<3).map { _ in try CurveKeyPair.generate().publicKey }
        // Z85 has '#' (never as a key's first character): within a key it starts no comment
        var hashKey: String
        repeat { hashKey = try CurveKeyPair.generate().publicKey } while !hashKey.dropFirst().contains("#")
        keys.append(hashKey)
        let text = """
            # workers of the lab
            \(keys[0])
              \(keys[1])   # gpu box

            public \(keys[2])
            \(keys[3])
            """
        XCTAssertEqual(try CurveKeyList.parse(text, source: "list").keys, keys)
        // concatenated NAME.pub files
        XCTAssertEqual(try CurveKeyList.parse(keys.map { $0 + "\n" }.joined(), source: "cat").keys, keys)
        XCTAssertEqual(try CurveKeyList.parse("", source: "empty").keys, [])

        XCTAssertThrowsError(try CurveKeyList.parse("# ok\nnot-a-key\n", source: "bad.txt")) {
            XCTAssertTrue("\($0)".hasPrefix("bad.txt:2:"), "\($0)")
        }
        let secretText = try CurveKeyPair.generate().secretFileText
        XCTAssertThrowsError(try CurveKeyList.parse(secretText, source: "s")) {
            XCTAssertTrue("\($0)".contains("secret key"), "\($0)")
        }
    }

    func testServerKeysGiveRolesAndRefuseAKeyOnBothLists() throws {
        let server = try CurveKeyPair.generate()
        let w = try CurveKeyPair.generate(), c = try CurveKeyPair.generate(), x = try CurveKeyPair.generate()
        let keys = try CurveServerKeys(pair: server, workerKeys: CurveKeyList(keys: [w.publicKey]),
                                       clientKeys: CurveKeyList(keys: [c.publicKey]))
        func ask(_ key: CurveKeyPair?, _ domain: String) -> ZAPDecision {
            keys.authorize(ZAPRequest(domain: domain, mechanism: key == nil ? "NULL" : "CURVE",
                                      credentials: key.map { [ZCurveKeys.decode($0.publicKey)!] } ?? []))
        }
        XCTAssertEqual(ask(w, CurveServerKeys.routerDomain), .allow(userID: "worker:" + w.publicKey))
        XCTAssertEqual(ask(c, CurveServerKeys.routerDomain), .allow(userID: "client:" + c.publicKey))
        XCTAssertEqual(ask(c, CurveServerKeys.updatesDomain), .allow(userID: "client:" + c.publicKey))
        guard case .deny = ask(w, CurveServerKeys.updatesDomain) else { return XCTFail("workers read no updates") }
        guard case .deny = ask(x, CurveServerKeys.routerDomain) else { return XCTFail("unlisted key admitted") }
        guard case .deny = ask(nil, CurveServerKeys.routerDomain) else { return XCTFail("NULL admitted") }
        XCTAssertEqual(PeerRole(userID: "worker:" + w.publicKey), .worker)
        XCTAssertNil(PeerRole(userID: "admin:x"))

        XCTAssertThrowsError(try CurveServerKeys(pair: server, workerKeys: CurveKeyList(keys: [w.publicKey]),
                                                 clientKeys: CurveKeyList(keys: [w.publicKey])))
        XCTAssertThrowsError(try CurveServerKeys.resolve(secretFile: "a", workerKeysFile: nil, clientKeysFile: nil,
                                                         environment: [:])) {
            XCTAssertTrue("\($0)".contains("--worker-keys and --client-keys"), "\($0)")
        }
        XCTAssertNil(try CurveServerKeys.resolve(secretFile: nil, workerKeysFile: nil, clientKeysFile: nil,
                                                 environment: [:]))
    }

    func testClientKeysResolveFromFlagsOrEnvironment() throws {
        let server = try CurveKeyPair.generate(), me = try CurveKeyPair.generate()
        let s = try server.write(name: "coordinator", directory: dir)
        let m = try me.write(name: "me", directory: dir)
        XCTAssertNil(try CurveClientKeys.resolve(secretFile: nil, serverKeyFile: nil, environment: [:]))
        XCTAssertEqual(try CurveClientKeys.resolve(secretFile: m.secret, serverKeyFile: s.pub, environment: [:]),
                       CurveClientKeys(pair: me, serverKey: server.publicKey))
        let env = ["INTERVENE_CURVE_SECRET": m.secret, "INTERVENE_SERVER_KEY": s.pub]
        XCTAssertEqual(try CurveClientKeys.resolve(secretFile: nil, serverKeyFile: nil, environment: env)?.serverKey,
                       server.publicKey)
        XCTAssertThrowsError(try CurveClientKeys.resolve(secretFile: m.secret, serverKeyFile: nil, environment: [:]))
        XCTAssertThrowsError(try CurveClientKeys.resolve(secretFile: m.secret, serverKeyFile: m.secret,
                                                         environment: [:]), "a secret file is no server key")
    }

    // MARK: sockets

    func testOnlyListedKeysGetThroughWithTheirRole() throws {
        let ctx = try ZContext()
        let server = try CurveKeyPair.generate()
        let worker = try CurveKeyPair.generate(), client = try CurveKeyPair.generate()
        let stranger = try CurveKeyPair.generate()
        let keys = try CurveServerKeys(pair: server, workerKeys: CurveKeyList(keys: [worker.publicKey]),
                                       clientKeys: CurveKeyList(keys: [client.publicKey]))
        let zap = try ZAPHandler(context: ctx) { keys.authorize($0) }
        zap.start()
        defer { zap.stop() }
        var ro = ZSocketOptions()
        ro.lingerMs = 0
        ro.curve = .server(secretKey: server.secretKey)
        ro.zapDomain = CurveServerKeys.routerDomain
        let router = try ZSocket(ctx, .router, options: ro)
        defer { router.close() }
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = router.lastEndpoint

        func dealer(_ curve: ZCurve?) throws -> ZSocket {
            var o = ZSocketOptions()
            o.lingerMs = 0
            o.curve = curve
            let d = try ZSocket(ctx, .dealer, options: o)
            try d.startMonitor(ZSocketEvent.handshakeFailures)
            try d.connect(endpoint)
            return d
        }
        let good = try dealer(.client(serverKey: server.publicKey, publicKey: client.publicKey,
                                      secretKey: client.secretKey))
        let w = try dealer(.client(serverKey: server.publicKey, publicKey: worker.publicKey,
                                   secretKey: worker.secretKey))
        let plain = try dealer(nil)
        let unlisted = try dealer(.client(serverKey: server.publicKey, publicKey: stranger.publicKey,
                                          secretKey: stranger.secretKey))
        let wrongServer = try dealer(.client(serverKey: stranger.publicKey, publicKey: client.publicKey,
                                             secretKey: client.secretKey))
        defer { for d in [good, w, plain, unlisted, wrongServer] { d.close() } }
        for d in [plain, unlisted, wrongServer] { try? d.send(Data("intruder".utf8), timeoutMs: 0) }
        try good.send(Data("hello".utf8), timeoutMs: 2000)
        try w.send(Data("work".utf8), timeoutMs: 2000)

        // listen a second at least (for anything the intruders might get through), at most three
        var got: [String: String] = [:]
        let atLeast = Date().addingTimeInterval(1), atMost = Date().addingTimeInterval(3)
        while Date() < atMost, got.count < 2 || Date() < atLeast {
            guard let m = try router.receiveMessage(timeoutMs: 100) else { continue }
            got[String(decoding: m.frames[1], as: UTF8.self)] = m.userID
        }
        XCTAssertEqual(got, ["hello": "client:" + client.publicKey, "work": "worker:" + worker.publicKey],
                       "only listed keys get through, each named by its role")
        XCTAssertGreaterThanOrEqual(zap.counts.denied, 1, "the unlisted key was refused by the ZAP handler")
        XCTAssertTrue(unlisted.monitorEvents().contains { $0.isAuthRefusal }, "the refused client learns why")
        XCTAssertTrue(plain.monitorEvents().contains { $0.isMechanismMismatch }, "a client without keys learns why")
        XCTAssertTrue(wrongServer.monitorEvents().contains { $0.isHandshakeFailure }, "a wrong server key fails")
    }
}
