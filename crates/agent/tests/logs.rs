//! The log server over loopback HTTP.

use std::io::{Read, Write};
use std::net::TcpStream;

use gosok_agent::logs::LogServer;

/// (status, X-Gosok-Log-Size, body)
fn get(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> (u16, Option<u64>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let size = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("x-gosok-log-size:")
            .map(|v| v.trim().parse().unwrap())
    });
    (status, size, raw[split + 4..].to_vec())
}

#[test]
fn logs_are_served_from_an_offset_to_the_secret_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("12/1/0");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stdout.log"), b"hello, world\n").unwrap();
    std::fs::write(dir.join("stderr.log"), b"").unwrap();
    let secret = "ab".repeat(32);
    let srv = LogServer::start(
        "127.0.0.1:0".parse().unwrap(),
        tmp.path().into(),
        secret.clone(),
    )
    .unwrap();
    let a = srv.addr;
    let ok = Some(secret.as_str());

    assert_eq!(
        get(a, "/logs/12/1/0/stdout", ok),
        (200, Some(13), b"hello, world\n".to_vec())
    );
    assert_eq!(
        get(a, "/logs/12/1/0/stdout?offset=7", ok),
        (200, Some(13), b"world\n".to_vec())
    );
    assert_eq!(
        get(a, "/logs/12/1/0/stdout?offset=7&limit=3", ok),
        (200, Some(13), b"wor".to_vec())
    );
    assert_eq!(
        get(a, "/logs/12/1/0/stdout?offset=99", ok),
        (200, Some(13), vec![])
    );
    assert_eq!(get(a, "/logs/12/1/0/stderr", ok), (200, Some(0), vec![]));

    assert_eq!(get(a, "/logs/12/1/0/stdout", None).0, 401);
    assert_eq!(get(a, "/logs/12/1/0/stdout", Some("wrong")).0, 401);
    assert_eq!(get(a, "/logs/12/1/0/stdout", Some(&"ac".repeat(32))).0, 401);

    assert_eq!(get(a, "/logs/12/1/9/stdout", ok).0, 404);
    assert_eq!(get(a, "/logs/13/1/0/stdout", ok).0, 404);
    assert_eq!(get(a, "/logs/12/1/0/stdout/x", ok).0, 404);
    assert_eq!(get(a, "/logs/12/1/0/other", ok).0, 400);
    assert_eq!(get(a, "/logs/12/../0/stdout", ok).0, 400);
    assert_eq!(get(a, "/logs/12/1/0/stdout?offset=-1", ok).0, 400);
    assert_eq!(get(a, "/logs/12/1/0/stdout?limit=x", ok).0, 400);
    assert_eq!(get(a, "/logs/12/1/0/stdout?bogus=1", ok).0, 400);
}
