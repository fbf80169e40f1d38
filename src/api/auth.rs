//! Who may write (PUT, DELETE, rollback), and who did.
//!
//! - With `--token-file`, a write needs `Authorization: Bearer <token>` with
//!   a token from that file: one per line, `token` or `name:token`, blank
//!   lines and `#` comments ignored. The file is checked for changes on
//!   every write (a `stat`), so adding or revoking a token needs no
//!   restart; a file that cannot be read refuses every write until it can.
//! - Without one, only loopback peers may write (a sidecar-era default that
//!   keeps the port safe to expose); `--allow-unauthenticated-writes` lets
//!   anyone write, as Go sxds did.
//!
//! Tokens are kept as SHA-256 digests and compared as digests: nothing in
//! memory or in the logs is a usable token, and the comparison's timing says
//! nothing about the token.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use axum::{
    extract::FromRequestParts,
    http::{header::AUTHORIZATION, request::Parts},
};
use sha2::{Digest, Sha256};

use super::{ApiError, ApiState};
use crate::net::PeerAddr;

/// Who may write.
#[derive(Clone)]
pub enum WritePolicy {
    /// A bearer token from the file.
    Tokens(TokenFile),
    /// Loopback peers only.
    LoopbackOnly,
    /// Anyone.
    Anyone,
}

impl WritePolicy {
    /// The policy for the daemon's flags; reads the token file once, so a
    /// missing or unreadable file stops start-up.
    pub fn new(token_file: Option<&Path>, allow_unauthenticated: bool) -> Result<Self, String> {
        match token_file {
            Some(path) => Ok(Self::Tokens(TokenFile::open(path)?)),
            None if allow_unauthenticated => Ok(Self::Anyone),
            None => Ok(Self::LoopbackOnly),
        }
    }
}

/// Who made a write, for the log and `GET /writes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// The name of the token it carried (`name:` in the file, else `#<line>`).
    Token(Arc<str>),
    /// The peer address, when no token is configured.
    Peer(Option<std::net::SocketAddr>),
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(name) => write!(f, "token {name}"),
            Self::Peer(Some(addr)) => write!(f, "peer {addr}"),
            Self::Peer(None) => write!(f, "peer unknown"),
        }
    }
}

/// Why a write is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("this write needs an Authorization: Bearer <token> header with a token from sxds's --token-file")]
    MissingToken,
    #[error("the bearer token is not in sxds's --token-file")]
    WrongToken,
    #[error("cannot read the token file, so every write is refused until it can be read: {0}")]
    TokenFileUnreadable(String),
    #[error(
        "writes from {peer} are refused: sxds runs without --token-file, so only loopback clients may write. \
         Start it with --token-file PATH (clients send Authorization: Bearer <token>), \
         or with --allow-unauthenticated-writes to let anyone write, as Go sxds did"
    )]
    NotLoopback { peer: String },
}

/// A write's author, checked against the policy: the extractor of every
/// handler that changes state.
pub struct Writer(pub Who);

impl FromRequestParts<ApiState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0);
        match &state.write_policy {
            WritePolicy::Anyone => Ok(Self(Who::Peer(peer))),
            // A request from no socket (a test's `oneshot`) is not known to be local.
            WritePolicy::LoopbackOnly => match peer {
                Some(addr) if addr.ip().to_canonical().is_loopback() => Ok(Self(Who::Peer(peer))),
                _ => Err(Refusal::NotLoopback { peer: peer.map_or_else(|| "an unknown address".to_owned(), |p| p.ip().to_string()) }.into()),
            },
            WritePolicy::Tokens(file) => {
                let header = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
                let token = header.and_then(bearer).ok_or(Refusal::MissingToken)?;
                Ok(Self(Who::Token(file.check(token)?)))
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The token file, re-read when it changes. Cheap to clone.
#[derive(Clone)]
pub struct TokenFile(Arc<Shared>);

struct Shared {
    path: PathBuf,
    // A std Mutex: a stat, and rarely a read of a small file, per write.
    loaded: Mutex<Loaded>,
}

#[derive(Default)]
struct Loaded {
    /// What the file looked like when read: modification time and length.
    seen: Option<(SystemTime, u64)>,
    tokens: Vec<(Arc<str>, [u8; 32])>,
}

impl TokenFile {
    /// Reads the file; an unreadable file is an error.
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = Self(Arc::new(Shared { path: path.to_owned(), loaded: Mutex::default() }));
        let count = file.refresh().map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        if count == 0 {
            tracing::warn!(path = %path.display(), "the token file holds no token: every write will be refused");
        } else {
            tracing::info!(path = %path.display(), tokens = count, "write tokens loaded");
        }
        Ok(file)
    }

    /// The name of `token`, if the file (as it is now) holds it.
    fn check(&self, token: &str) -> Result<Arc<str>, Refusal> {
        self.refresh().map_err(|e| {
            tracing::error!(path = %self.0.path.display(), error = %e, "cannot read the token file; refusing writes");
            Refusal::TokenFileUnreadable(e.to_string())
        })?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let loaded = self.lock();
        loaded.tokens.iter().find(|(_, d)| *d == digest).map(|(name, _)| name.clone()).ok_or(Refusal::WrongToken)
    }

    /// Re-reads the file if it changed; answers how many tokens it holds.
    fn refresh(&self) -> std::io::Result<usize> {
        let metadata = std::fs::metadata(&self.0.path)?;
        let seen = (metadata.modified()?, metadata.len());
        let mut loaded = self.lock();
        if loaded.seen == Some(seen) {
            return Ok(loaded.tokens.len());
        }
        let text = std::fs::read_to_string(&self.0.path)?;
        let tokens = parse_tokens(&text);
        if loaded.seen.is_some() {
            tracing::info!(path = %self.0.path.display(), tokens = tokens.len(), "token file changed: reloaded");
        }
        *loaded = Loaded { seen: Some(seen), tokens };
        Ok(loaded.tokens.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.0.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `token` or `name:token` per line, as (name, digest).
fn parse_tokens(text: &str) -> Vec<(Arc<str>, [u8; 32])> {
    text.lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (name, token) = match line.split_once(':') {
                Some((name, token)) if !name.trim().is_empty() && !token.trim().is_empty() => (name.trim().to_owned(), token.trim()),
                _ => (format!("#{}", index + 1), line),
            };
            Some((Arc::from(name), Sha256::digest(token.as_bytes()).into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lines_are_named_or_numbered_and_comments_skipped() {
        let tokens = parse_tokens("# ops tokens\nci:s3cret\n\n  bare-token  \n:no-name\n");
        let names: Vec<&str> = tokens.iter().map(|(name, _)| &**name).collect();
        assert_eq!(names, ["ci", "#4", "#5"]);
        assert_eq!(tokens[0].1, <[u8; 32]>::from(Sha256::digest(b"s3cret")));
        assert_eq!(tokens[2].1, <[u8; 32]>::from(Sha256::digest(b":no-name")));
    }

    #[test]
    fn bearer_values_parse_case_insensitively_and_refuse_other_schemes() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer   abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn a_changed_token_file_is_reloaded_and_an_unreadable_one_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "ci:one\n").unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(&*file.check("one").unwrap(), "ci");
        assert!(matches!(file.check("two"), Err(Refusal::WrongToken)));
        // A different length is a change even within one mtime tick.
        std::fs::write(&path, "deploy:two\n# ci revoked\n").unwrap();
        assert_eq!(&*file.check("two").unwrap(), "deploy");
        assert!(matches!(file.check("one"), Err(Refusal::WrongToken)));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(file.check("two"), Err(Refusal::TokenFileUnreadable(_))));
        assert!(TokenFile::open(&path).is_err());
    }
}
