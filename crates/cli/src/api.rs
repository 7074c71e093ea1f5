//! A small blocking JSON client for the controller, for the commands that drive one
//! themselves (`gosok up`, `gosok bench agents`); the user-facing client commands are in
//! `client.rs`.

use std::time::Duration;

use anyhow::bail;
use serde_json::Value;

pub struct Api {
    base: String,
    token: String,
    http: ureq::Agent,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build(),
        }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// A GET's answer as text (e.g. `/metrics`).
    pub fn text(&self, path: &str) -> anyhow::Result<String> {
        let r = self
            .http
            .get(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| anyhow::anyhow!("GET {path}: {e}"))?;
        Ok(r.into_string()?)
    }

    /// The answer's JSON, or an error naming the request and the server's message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let req = self
            .http
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token));
        let res = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_bytes(&serde_json::to_vec(b)?),
            None => req.call(),
        };
        let json = |r: ureq::Response| -> Value {
            serde_json::from_str(&r.into_string().unwrap_or_default()).unwrap_or(Value::Null)
        };
        match res {
            Ok(r) => Ok(json(r)),
            Err(ureq::Error::Status(code, r)) => {
                let v = json(r);
                bail!("{method} {path}: {code}: {}", v["error"]["message"])
            }
            Err(e) => bail!("{method} {path}: {e}"),
        }
    }
}
