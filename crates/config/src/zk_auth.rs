//! ZooKeeper credentials (`zk_auth`, `zk_auth_file`): the identity every
//! ZooKeeper client of this process authenticates as, and that owns the
//! nodes it creates (see `rpc_registry::zk` for the ACLs they get).
//!
//! Only ZooKeeper's `digest` scheme is accepted: `digest:user:password`.
//! The password never leaves this type except as the bytes sent to
//! ZooKeeper ([`ZkAuth::credentials`]): `Debug` and `Display` show
//! `digest:user` only, and configuration errors never echo it.

use std::path::Path;

/// `digest:user:password`, checked. The user holds no `:`; the password
/// may (ZooKeeper splits at the first one).
#[derive(Clone, PartialEq, Eq)]
pub struct ZkAuth {
    /// `user:password`, as the digest scheme wants it on the wire.
    credentials: String,
    /// Length of `user` in `credentials`.
    user_len: usize,
}

impl ZkAuth {
    /// The only scheme accepted.
    pub const SCHEME: &'static str = "digest";

    /// Parses `digest:user:password`. Errors say what is wrong without
    /// repeating the password.
    pub fn parse(text: &str) -> Result<ZkAuth, String> {
        let text = text.trim();
        let Some((scheme, rest)) = text.split_once(':') else {
            return Err("expected digest:user:password".into());
        };
        if scheme != Self::SCHEME {
            return Err(format!(
                "scheme {scheme:?} is not supported; expected digest:user:password"
            ));
        }
        let Some((user, password)) = rest.split_once(':') else {
            return Err("expected digest:user:password (no password)".into());
        };
        if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the user must be non-empty, without spaces".into());
        }
        if password.is_empty() {
            return Err("the password is empty".into());
        }
        if password.chars().any(char::is_control) {
            return Err("the password holds control characters (a second line?)".into());
        }
        Ok(ZkAuth {
            credentials: rest.to_string(),
            user_len: user.len(),
        })
    }

    /// Reads `digest:user:password` from `path` (surrounding white space,
    /// such as the final newline, ignored). Refuses a file that its group
    /// or others may read or write (`chmod 600` it), and anything but a
    /// regular file.
    pub fn read_file(path: &Path) -> Result<ZkAuth, String> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "its mode is {mode:04o}: it must be readable by its owner only (chmod 600)"
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        ZkAuth::parse(&text)
    }

    /// The user part of the identity.
    pub fn user(&self) -> &str {
        &self.credentials[..self.user_len]
    }

    /// What ZooKeeper's `digest` scheme takes: `user:password`. For the
    /// client library only; never log it.
    pub fn credentials(&self) -> &[u8] {
        self.credentials.as_bytes()
    }
}

/// `digest:user`, never the password.
impl std::fmt::Display for ZkAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", Self::SCHEME, self.user())
    }
}

/// `digest:user:<hidden>`, so that a `Config` printed with `{:?}` shows no
/// secret.
impl std::fmt::Debug for ZkAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ZkAuth({}:{}:<hidden>)", Self::SCHEME, self.user())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_digest_user_password() {
        let a = ZkAuth::parse(" digest:svc-echo:s3cr:et ").unwrap();
        assert_eq!(a.user(), "svc-echo");
        assert_eq!(a.credentials(), b"svc-echo:s3cr:et");
        assert_eq!(a.to_string(), "digest:svc-echo");
        let shown = format!("{a:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
    }

    #[test]
    fn refuses_other_schemes_and_shapes_without_echoing_the_password() {
        for bad in [
            "",
            "digest",
            "digest:user",
            "digest::pw-secret",
            "digest:us er:pw-secret",
            "digest:user:",
            "sasl:user:pw-secret",
            "ip:10.0.0.1",
            "world:anyone",
            "digest:user:pw-secret\nmore",
        ] {
            let e = ZkAuth::parse(bad).unwrap_err();
            assert!(!e.contains("pw-secret"), "{bad:?}: {e}");
        }
        assert!(ZkAuth::parse("sasl:u:p").unwrap_err().contains("sasl"));
    }

    #[test]
    fn the_file_must_be_the_owners_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zk.auth");
        std::fs::write(&path, "digest:echo:pw-secret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = ZkAuth::read_file(&path).unwrap_err();
            assert!(e.contains("chmod 600"), "{mode:o}: {e}");
            assert!(!e.contains("pw-secret"), "{e}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let a = ZkAuth::read_file(&path).unwrap();
            assert_eq!(a.credentials(), b"echo:pw-secret");
        }
        assert!(ZkAuth::read_file(&dir.path().join("missing")).is_err());
        assert!(ZkAuth::read_file(dir.path()).is_err(), "a directory");
    }
}
