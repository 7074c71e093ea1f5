//! Bearer tokens: random, shown once, stored only as SHA-256 digests.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use crate::core::Core;
use crate::entry::TokenEntry;
use crate::error::ApiError;

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    Admin {
        token: String,
    },
    Tenant {
        name: Arc<str>,
        token: String,
    },
    /// A node agent: it may call only `/v1/agent/*`.
    Agent {
        token: String,
    },
}

impl Principal {
    pub fn token_id(&self) -> &str {
        match self {
            Principal::Admin { token }
            | Principal::Tenant { token, .. }
            | Principal::Agent { token } => token,
        }
    }
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin { .. })
    }
    pub fn tenant(&self) -> Option<&Arc<str>> {
        match self {
            Principal::Tenant { name, .. } => Some(name),
            Principal::Admin { .. } | Principal::Agent { .. } => None,
        }
    }
    /// Whether this principal may see and act on a tenant's work.
    pub fn may_act_for(&self, tenant: &str) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::Tenant { name, .. } => **name == *tenant,
            Principal::Agent { .. } => false,
        }
    }
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs an operator (admin) token"))
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A new random token and the entry that records its hash.
pub fn new_token(id: &str, tenant: Option<&str>, agent: bool) -> (String, TokenEntry) {
    let mut raw = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut raw) {
        // Without the operating system's randomness no safe token can be made.
        panic!("no randomness for a token: {e}");
    }
    let token = format!("gsk_{}", hex(&raw));
    let entry = TokenEntry {
        id: id.to_string(),
        tenant: tenant.map(str::to_string),
        agent,
        sha256: hex(&sha256(token.as_bytes())),
    };
    (token, entry)
}

/// The digest of the token in a request's `Authorization: Bearer` header (tokens are kept
/// only as digests).
pub fn bearer_digest(headers: &HeaderMap) -> Result<[u8; 32], ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthenticated(
            "no token: send `Authorization: Bearer <token>`",
        ));
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::unauthenticated("the Authorization header is not text"))?;
    let Some(tok) = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    else {
        return Err(ApiError::unauthenticated(
            "the Authorization header must be `Bearer <token>`",
        ));
    };
    Ok(sha256(tok.trim().as_bytes()))
}

/// The principal of a request's `Authorization: Bearer` header.
pub fn authenticate(core: &Core, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let Some(rec) = core.token(&bearer_digest(headers)?) else {
        return Err(ApiError::unauthenticated("unknown or revoked token"));
    };
    if rec.agent {
        return Ok(Principal::Agent {
            token: rec.id.clone(),
        });
    }
    Ok(match &rec.tenant {
        None => Principal::Admin {
            token: rec.id.clone(),
        },
        Some(t) => Principal::Tenant {
            name: t.clone(),
            token: rec.id.clone(),
        },
    })
}
