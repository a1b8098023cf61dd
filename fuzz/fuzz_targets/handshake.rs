//! Arbitrary bytes as a client's PING (server side) and as a server's HELO / PONG (client
//! side, `berth cat`): nothing may panic, and garbage is never accepted.
#![no_main]

use berth::forward::handshake::{ClientAuth, ClientHandshake, ServerAuth, ServerHandshake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let server_auth = ServerAuth {
        shared_key: "key".into(),
        self_hostname: "server".into(),
        users: vec![("user".into(), "pass".into())],
    };
    let server = ServerHandshake::from_parts([7; 16], vec![9; 16]);
    let outcome = server.check_ping(&server_auth, data);
    // A random PING cannot carry the right SHA-512 digests.
    assert!(!outcome.accepted);

    let client_auth = ClientAuth {
        shared_key: "key".into(),
        self_hostname: "client".into(),
        username: "user".into(),
        password: "pass".into(),
    };
    if let Ok(client) = ClientHandshake::from_helo_with_salt(data, "00".repeat(16)) {
        let _ = client.ping(&client_auth);
        let _ = client.check_pong(&client_auth, data);
    }
});
