//! Namespace names.
//!
//! A namespace name becomes a directory name or an object-key prefix, so it must never be
//! able to escape the store's root. Rather than sanitising, we accept only a small,
//! portable alphabet and reject everything else with a message that says why.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, InvalidInput, Result};

/// The name of one database's log history: 1–128 characters of `[A-Za-z0-9._-]`, not `.`
/// or `..`.
///
/// ```
/// use walvault::NamespaceName;
/// assert!(NamespaceName::new("orders-db.v2").is_ok());
/// assert!(NamespaceName::new("../etc").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespaceName(Arc<str>);

impl NamespaceName {
    /// The longest name accepted, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self> {
        validate(name).map_err(|reason| {
            Error::from(InvalidInput::NamespaceName {
                name: name.chars().take(Self::MAX_LEN + 8).collect(),
                reason,
            })
        })?;
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > NamespaceName::MAX_LEN {
        return Err(format!(
            "is {} bytes long, the limit is {}",
            name.len(),
            NamespaceName::MAX_LEN
        ));
    }
    if name == "." || name == ".." {
        return Err("is a reserved path component".into());
    }
    match name.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(format!(
            "contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
        )),
        None => Ok(()),
    }
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl FromStr for NamespaceName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<&str> for NamespaceName {
    type Error = Error;

    fn try_from(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for NamespaceName {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        Self::new(&s)
    }
}

impl AsRef<str> for NamespaceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for NamespaceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_portable_alphabet() {
        for ok in ["a", "db", "A.b_c-9", "..a", ".hidden", &"x".repeat(128)] {
            assert_eq!(NamespaceName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_names_that_could_escape_or_confuse() {
        let long = "x".repeat(129);
        for bad in [
            "", ".", "..", "a/b", "/abs", "a\\b", "nul\0", "sp ace", "é", "a:b", &long,
        ] {
            let err = NamespaceName::new(bad).unwrap_err();
            assert!(err.is_invalid_input(), "{bad:?} -> {err}");
            assert!(err.to_string().contains("namespace name"), "{err}");
        }
    }
}
