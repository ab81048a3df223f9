//! State identity (DESIGN §3): a state id is a hash of the schema tag, the
//! parent state id and the step fingerprint; a base id hashes the engine.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Bumped only when the hashing itself changes: it invalidates every cache.
pub const SCHEMA_TAG: &str = "sqlrs-state-v1";

/// A SHA-256 digest of bytes (blob contents, fingerprints).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Digest(out))
    }
}

/// Everything about one step that can change the resulting data directory.
pub type Fingerprint = Digest;

/// The id of a state: a base cluster or the result of a step on a parent.
pub type StateId = Digest;

/// A PostgreSQL build plus the initdb options of its base cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineIdentity {
    /// "native" or "docker".
    pub runtime: String,
    /// Full server version, e.g. "15.18".
    pub version: String,
    /// initdb options that shape the base cluster.
    pub initdb_args: Vec<String>,
    /// Image digest for Docker; empty for native.
    pub image_digest: String,
}

impl EngineIdentity {
    /// A short human label, e.g. "native PostgreSQL 15.18".
    pub fn label(&self) -> String {
        format!("{} PostgreSQL {}", self.runtime, self.version)
    }
}

/// Feeds length-prefixed fields into a hasher so no two field lists collide.
#[derive(Default)]
pub struct FieldHasher(Sha256);

impl FieldHasher {
    pub fn new(domain: &str) -> Self {
        let mut h = FieldHasher(Sha256::new());
        h.field(SCHEMA_TAG.as_bytes());
        h.field(domain.as_bytes());
        h
    }

    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// `base_id = sha256(schema_tag, engine identity)`.
pub fn base_id(engine: &EngineIdentity) -> StateId {
    let mut h = FieldHasher::new("base");
    h.field(engine.runtime.as_bytes())
        .field(engine.version.as_bytes())
        .field(engine.image_digest.as_bytes());
    for a in &engine.initdb_args {
        h.field(a.as_bytes());
    }
    h.finish()
}

/// `state_id = sha256(schema_tag, parent_id, step_fingerprint)`.
pub fn child_id(parent: &StateId, step: &Fingerprint) -> StateId {
    let mut h = FieldHasher::new("state");
    h.field(&parent.0).field(&step.0);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(version: &str, digest: &str) -> EngineIdentity {
        EngineIdentity {
            runtime: "native".into(),
            version: version.into(),
            initdb_args: vec!["-E".into(), "UTF8".into()],
            image_digest: digest.into(),
        }
    }

    #[test]
    fn base_ids_separate_engines() {
        let ids = [
            base_id(&engine("15.18", "")),
            base_id(&engine("15.19", "")),
            base_id(&engine("15.18", "sha256:aa")),
        ];
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
        assert_eq!(ids[0], base_id(&engine("15.18", "")));
    }

    #[test]
    fn child_ids_chain() {
        let base = base_id(&engine("15.18", ""));
        let f1 = Digest::of(b"one");
        let f2 = Digest::of(b"two");
        let a = child_id(&base, &f1);
        assert_eq!(a, child_id(&base, &f1));
        assert_ne!(a, child_id(&base, &f2));
        assert_ne!(child_id(&a, &f2), child_id(&child_id(&base, &f2), &f2));
    }

    #[test]
    fn hex_round_trip() {
        let d = Digest::of(b"x");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        assert!("zz".parse::<Digest>().is_err());
    }
}
