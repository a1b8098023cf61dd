//! Unit tests of the handshake.

use super::*;

fn server_auth(users: &[(&str, &str)]) -> ServerAuth {
    ServerAuth {
        shared_key: "secret".into(),
        self_hostname: "server.example".into(),
        users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
    }
}

fn client_auth(key: &str, user: &str, password: &str) -> ClientAuth {
    ClientAuth {
        shared_key: key.into(),
        self_hostname: "client.example".into(),
        username: user.into(),
        password: password.into(),
    }
}

/// Runs a full HELO / PING / PONG exchange in process.
fn exchange(
    server: &ServerAuth,
    client: &ClientAuth,
) -> (PingOutcome, Result<String, HandshakeError>) {
    let hs = ServerHandshake::new(server);
    let ch = ClientHandshake::from_helo(&hs.helo()).expect("helo parses");
    let outcome = hs.check_ping(server, &ch.ping(client));
    let pong = ch.check_pong(client, &outcome.pong);
    (outcome, pong)
}

#[test]
fn known_answer_digests() {
    // Computed independently with Python's hashlib.
    let nonce: Vec<u8> = (0u8..16).collect();
    assert_eq!(
        shared_key_hexdigest(b"salt", b"client.example", &nonce, b"secret"),
        "c6a0ef3d907f13d0b1205b157ab0f84ba459f7e27b5c6a97e65320db57211a1e\
         3ca86484e305eb301adddbe6bbfa7331fdc9280e70d7c9e0956848f9e14e4fa2"
    );
    assert_eq!(
        password_hexdigest(b"authsalt", b"alice", b"pw"),
        "7e9223ca4b94fd4ac777d3928fa140b036c186e31a6b397907ae96db320b1ece\
         fbdef809ae83d8a744f8a96a461cd89d39aa36350b876c9f639a66b761af2537"
    );
}

#[test]
fn helo_bytes_without_users() {
    let hs = ServerHandshake::from_parts([7; 16], Vec::new());
    let mut want = vec![0x92, 0xa4];
    want.extend_from_slice(b"HELO");
    want.extend_from_slice(&[0x83, 0xa5]);
    want.extend_from_slice(b"nonce");
    want.extend_from_slice(&[0xc4, 16]);
    want.extend_from_slice(&[7; 16]);
    want.push(0xa4);
    want.extend_from_slice(b"auth");
    want.extend_from_slice(&[0xc4, 0]);
    want.push(0xa9);
    want.extend_from_slice(b"keepalive");
    want.push(0xc3);
    assert_eq!(hs.helo(), want);
}

#[test]
fn auth_salt_only_with_users() {
    let helo = ServerHandshake::new(&server_auth(&[])).helo();
    assert!(!ClientHandshake::from_helo(&helo).expect("helo").user_auth_required());
    let helo = ServerHandshake::new(&server_auth(&[("alice", "pw")])).helo();
    assert!(ClientHandshake::from_helo(&helo).expect("helo").user_auth_required());
}

#[test]
fn right_key_is_accepted_both_ways() {
    let (outcome, pong) = exchange(&server_auth(&[]), &client_auth("secret", "", ""));
    assert!(outcome.accepted, "{:?}", outcome.error);
    assert_eq!(outcome.client_hostname, "client.example");
    assert_eq!(pong, Ok("server.example".to_string()));
}

#[test]
fn wrong_key_is_refused_with_reason() {
    let (outcome, pong) = exchange(&server_auth(&[]), &client_auth("guess", "", ""));
    assert_eq!(outcome.error, Some(HandshakeError::SharedKeyMismatch));
    assert_eq!(outcome.error.as_ref().map(|e| e.reason()), Some("auth_failed"));
    assert_eq!(outcome.client_hostname, "client.example");
    assert_eq!(pong, Err(HandshakeError::Rejected { reason: "shared key mismatch".into() }));
}

#[test]
fn users_right_and_wrong() {
    let server = server_auth(&[("bob", "other"), ("alice", "pw")]);
    let (outcome, pong) = exchange(&server, &client_auth("secret", "alice", "pw"));
    assert!(outcome.accepted);
    assert!(pong.is_ok());

    for (user, pw) in [("alice", "nope"), ("carol", "pw"), ("", "")] {
        let (outcome, pong) = exchange(&server, &client_auth("secret", user, pw));
        assert_eq!(outcome.error, Some(HandshakeError::UserMismatch), "{user}");
        assert_eq!(
            pong,
            Err(HandshakeError::Rejected { reason: "username/password mismatch".into() })
        );
    }
}

#[test]
fn malformed_pings_are_refused() {
    let server = server_auth(&[]);
    let hs = ServerHandshake::new(&server);
    let ch = ClientHandshake::from_helo(&hs.helo()).expect("helo");
    let good = ch.ping(&client_auth("secret", "", ""));
    let mut wrong_type = good.clone();
    wrong_type[2] = b'X'; // "PXNG"
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xc0],
        vec![0x90],
        good[..good.len() - 1].to_vec(),
        [good.clone(), vec![0xc0]].concat(),
        wrong_type,
        // five elements
        [vec![0x95], good[1..].to_vec()].concat(),
    ];
    for (i, frame) in cases.iter().enumerate() {
        let outcome = hs.check_ping(&server, frame);
        assert_eq!(outcome.error, Some(HandshakeError::InvalidPing), "case {i}");
        assert_eq!(outcome.error.as_ref().map(|e| e.reason()), Some("bad_handshake"));
        let pong = ch.check_pong(&client_auth("secret", "", ""), &outcome.pong);
        assert_eq!(pong, Err(HandshakeError::Rejected { reason: "invalid ping message".into() }));
    }
}

#[test]
fn ping_with_str_salt_of_raw_bytes_is_accepted() {
    // Fluent Bit sends 16 random bytes as a msgpack str; they need not be UTF-8.
    let server = server_auth(&[]);
    let hs = ServerHandshake::from_parts([1; 16], Vec::new());
    let salt = [0xffu8; 16];
    let digest = shared_key_hexdigest(&salt, b"fb", &[1; 16], b"secret");
    let mut ping = vec![0x96];
    put_str(&mut ping, b"PING");
    put_str(&mut ping, b"fb");
    put_str(&mut ping, &salt);
    put_str(&mut ping, digest.as_bytes());
    put_str(&mut ping, b"");
    put_str(&mut ping, b"");
    let outcome = hs.check_ping(&server, &ping);
    assert!(outcome.accepted);
    // The PONG digest uses the same salt bytes.
    let want = shared_key_hexdigest(&salt, b"server.example", &[1; 16], b"secret");
    assert!(outcome.pong.ends_with(want.as_bytes()));
}

#[test]
fn client_reads_fluent_bit_style_helo() {
    // Fluent Bit: str nonce and auth, no keepalive key; plus an unknown option.
    let mut helo = vec![0x92];
    put_str(&mut helo, b"HELO");
    put_map_len(&mut helo, 3);
    put_str(&mut helo, b"nonce");
    put_str(&mut helo, &[0xfe; 16]);
    put_str(&mut helo, b"extra");
    helo.extend_from_slice(&[0x92, 0x01, 0x81, 0xa1, b'k', 0xcb, 0, 0, 0, 0, 0, 0, 0, 0]);
    put_str(&mut helo, b"auth");
    put_str(&mut helo, &[0xfd; 16]);
    let ch = ClientHandshake::from_helo_with_salt(&helo, "s".into()).expect("helo");
    assert!(ch.keepalive());
    assert!(ch.user_auth_required());
    assert_eq!(ch.nonce, vec![0xfe; 16]);
}

#[test]
fn client_rejects_malformed_helo_and_pong() {
    for helo in [
        vec![],
        vec![0x91, 0xa4, b'H', b'E', b'L', b'O'],
        vec![0x92, 0xa4, b'P', b'O', b'N', b'G', 0x80],
    ] {
        assert_eq!(ClientHandshake::from_helo(&helo).err(), Some(HandshakeError::InvalidHelo));
    }
    let hs = ServerHandshake::from_parts([0; 16], Vec::new());
    let ch = ClientHandshake::from_helo(&hs.helo()).expect("helo");
    let auth = client_auth("secret", "", "");
    assert_eq!(ch.check_pong(&auth, &[0x90]), Err(HandshakeError::InvalidPong));
}

#[test]
fn client_detects_server_without_the_key() {
    // A server that accepts anyone but does not know the key (an impostor).
    let hs = ServerHandshake::from_parts([3; 16], Vec::new());
    let ch = ClientHandshake::from_helo(&hs.helo()).expect("helo");
    let impostor = ServerAuth { shared_key: "other".into(), ..server_auth(&[]) };
    let mut pong = vec![0x95];
    put_str(&mut pong, b"PONG");
    put_bool(&mut pong, true);
    put_str(&mut pong, b"");
    put_str(&mut pong, impostor.self_hostname.as_bytes());
    put_str(
        &mut pong,
        shared_key_hexdigest(b"whatever", b"server.example", &[3; 16], b"other").as_bytes(),
    );
    assert_eq!(
        ch.check_pong(&client_auth("secret", "", ""), &pong),
        Err(HandshakeError::ServerKeyMismatch)
    );
}

#[test]
fn constant_time_eq() {
    assert!(ct_eq(b"abc", b"abc"));
    assert!(!ct_eq(b"abc", b"abd"));
    assert!(!ct_eq(b"abc", b"ab"));
    assert!(ct_eq(b"", b""));
}
