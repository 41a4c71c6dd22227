//! Driving `sessiongate console` from the tests: users made with the real
//! CLI, API calls as a user, and the gate followed until it agrees.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sessiongate_conformance::{self as suite, http::Response};

use super::{BIN, Server, cli};

pub fn start_console(store: &Path) -> Server {
    let mut command = Command::new(BIN);
    command
        .args(["console", "--listen", "127.0.0.1:0", "--store"])
        .arg(store);
    Server::spawn(command, store.to_path_buf())
}

pub fn create_user(
    store: &Path,
    customer: &str,
    name: &str,
    role: &str,
    permissions: &[&str],
) -> String {
    let mut args = vec![
        "user",
        "create",
        "--store",
        store.to_str().unwrap(),
        "--customer",
        customer,
        "--name",
        name,
        "--role",
        role,
    ];
    for p in permissions {
        args.extend(["--permission", p]);
    }
    cli(&args)
}

pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Response {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    suite::http::send_raw(addr, request.as_bytes()).unwrap()
}

/// An API call as a user, by their login secret.
pub struct As<'a> {
    pub addr: SocketAddr,
    pub secret: &'a str,
}

impl<'a> As<'a> {
    pub fn new(addr: SocketAddr, secret: &'a str) -> As<'a> {
        As { addr, secret }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        let auth = format!("Bearer {}", self.secret);
        call(
            self.addr,
            method,
            &format!("/api/v1/{path}"),
            &[("Authorization", &auth)],
            body.as_ref(),
        )
    }

    pub fn ok(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let r = self.call(method, path, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        if r.body.is_empty() {
            Value::Null
        } else {
            r.json().unwrap()
        }
    }

    /// A refusal: the status, the contract's error code, and its message.
    pub fn refused(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
        code: &str,
    ) -> String {
        let r = self.call(method, path, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        let e = r.json().unwrap();
        assert_eq!(e["error"]["code"], code, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        e["error"]["message"].as_str().unwrap().to_owned()
    }

    pub fn names(&self, what: &str) -> Vec<String> {
        let listed = self.ok("GET", what, None, 200);
        let mut names: Vec<String> = listed[what]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }
}

/// Polls the gate until it answers `status` (a store change reaches `serve`
/// within its 200 ms poll, on an idle machine).
pub fn gate_answers(serve: &Server, credential: &str, status: u16) {
    let path = format!(
        "/v1/external/sessions/{}/{}",
        suite::CUSTOMER,
        suite::SITE_A
    );
    let scheme = if sessiongate_core::is_key(credential) {
        "Basic"
    } else {
        "Bearer"
    };
    let auth = format!("{scheme} {credential}");
    suite::eventually(suite::PATIENCE, || {
        let r = suite::http::get(serve.addr, &path, Some(&auth))?;
        if r.status == status {
            Ok(())
        } else {
            Err(format!("still {}: {}", r.status, r.text()))
        }
    })
    .unwrap();
}
