use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// An address in configuration: containing `:` means TCP, anything else is
/// a Unix socket path (SPEC §1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Tcp(String),
    Unix(PathBuf),
}

impl Address {
    pub fn is_unix(&self) -> bool {
        matches!(self, Address::Unix(_))
    }
}

impl FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty address".into());
        }
        if s.contains(':') {
            Ok(Address::Tcp(s.to_string()))
        } else {
            Ok(Address::Unix(PathBuf::from(s)))
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => f.write_str(a),
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colon_means_tcp() {
        assert_eq!(
            "127.0.0.1:5555".parse::<Address>().unwrap(),
            Address::Tcp("127.0.0.1:5555".into())
        );
        assert_eq!(
            "/tmp/x.sock".parse::<Address>().unwrap(),
            Address::Unix("/tmp/x.sock".into())
        );
        assert!("".parse::<Address>().is_err());
    }
}
