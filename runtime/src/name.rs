//! Container names and ids.

use std::fs::File;
use std::io::Read;

use thiserror::Error;

/// Why a container name was refused.
#[derive(Debug, Error)]
pub enum NameError {
    /// The name breaks the naming rule.
    #[error(
        "invalid container name `{0}`: use 1-40 characters from [a-zA-Z0-9_.-], starting with a \
         letter or digit"
    )]
    Invalid(String),
    /// The kernel's random source could not be read.
    #[error("reading `/dev/urandom`")]
    Random(#[source] std::io::Error),
}

/// Checks a user-given name: it becomes a directory name and part of cgroup paths.
pub fn validate(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));

    if first_ok && rest_ok && name.len() <= 40 {
        Ok(())
    } else {
        Err(NameError::Invalid(name.to_string()))
    }
}

/// A fresh 32-hex-digit container id.
pub fn new_id() -> Result<String, NameError> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(NameError::Random)?;

    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The name given to a container run without `--name`, derived from its id.
pub fn generated(id: &str) -> String {
    format!("vpn-{}", &id[..8.min(id.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["vpn", "vpn-1", "a.b_c", "0x"] {
            assert!(validate(name).is_ok(), "{name} refused");
        }
    }

    #[test]
    fn refuses_path_tricks_and_empty_names() {
        for name in ["", "../etc", "a/b", "-x", ".hidden", &"x".repeat(41)] {
            assert!(validate(name).is_err(), "{name} accepted");
        }
    }

    #[test]
    fn ids_are_unique_hex() {
        let a = new_id().expect("id");
        let b = new_id().expect("id");
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(generated(&a).len(), 12);
    }
}
