use serde::{Deserialize, Serialize};

/// An endpoint record, stored as JSON (SPEC §6). Readers ignore unknown
/// fields and tolerate missing optional ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub service: String,
    pub service_id: String,
    pub frontend: String,
    #[serde(default)]
    pub deploy_path: String,
    #[serde(default)]
    pub code_url_version: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub start_time: String,
    /// The endpoint accepts TLS only (mutual authentication): proxies
    /// with TLS keys dial it over TLS, others skip it. Written only when
    /// true, so plain records stay as the original wrote them; readers
    /// that do not know the field ignore it (SPEC §6).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls: bool,
    /// Whether an operator drained the endpoint (`rpcctl drain`): proxies
    /// send it no new calls. Not part of the record (never written or
    /// read as JSON): readers fill it in from the drain marks, which live
    /// outside the services subtree (see [`crate::drain`]).
    #[serde(skip)]
    pub draining: bool,
}

impl Endpoint {
    /// A record for `frontend`, with hostname, start time, working
    /// directory filled in from this process.
    pub fn new(service: &str, frontend: &str) -> Endpoint {
        Endpoint {
            service: service.to_string(),
            service_id: service_id(frontend),
            frontend: frontend.to_string(),
            deploy_path: std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            code_url_version: String::new(),
            hostname: hostname(),
            start_time: now_local(),
            tls: false,
            draining: false,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `service_id` from a frontend address: `.` and `:` become `_`, `/` is
/// dropped, and only the last 20 characters are kept.
pub fn service_id(frontend: &str) -> String {
    let s: Vec<char> = frontend
        .chars()
        .filter(|&c| c != '/')
        .map(|c| if c == '.' || c == ':' { '_' } else { c })
        .collect();
    let start = s.len().saturating_sub(20);
    s[start..].iter().collect()
}

pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `YYYY-MM-DD HH:MM:SS` in local time, as the original wrote it.
pub(crate) fn now_local() -> String {
    // SAFETY: time writes only where it is told to (nowhere here).
    local_time(unsafe { libc::time(std::ptr::null_mut()) } as i64)
}

/// `t` (seconds since the epoch) as a `start_time`: `YYYY-MM-DD HH:MM:SS`
/// in local time.
pub fn local_time(t: i64) -> String {
    // SAFETY: localtime_r writes only into the provided struct.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&(t as libc::time_t), &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_id_follows_spec() {
        assert_eq!(service_id("127.0.0.1:5555"), "127_0_0_1_5555");
        assert_eq!(service_id("/tmp/echo.sock"), "tmpecho_sock");
        assert_eq!(service_id("192.168.100.200:65535"), "92_168_100_200_65535");
        assert_eq!(service_id("10.100.200.300:12345").len(), 20);
    }

    #[test]
    fn reads_records_with_unknown_and_missing_fields() {
        let e: Endpoint = serde_json::from_str(
            r#"{"service":"echo","service_id":"x","frontend":"127.0.0.1:1","future":42}"#,
        )
        .unwrap();
        assert_eq!(e.service, "echo");
        assert_eq!(e.hostname, "");
        let full = Endpoint::new("echo", "127.0.0.1:5555");
        assert_eq!(full.service_id, "127_0_0_1_5555");
        assert_eq!(full.start_time.len(), 19);
        assert!(!full.tls);
    }

    #[test]
    fn tls_is_written_only_when_set() {
        let mut e = Endpoint::new("echo", "127.0.0.1:5555");
        let plain = serde_json::to_string(&e).unwrap();
        assert!(!plain.contains("tls"), "{plain}");
        e.tls = true;
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""tls":true"#), "{json}");
        let back: Endpoint = serde_json::from_str(&json).unwrap();
        assert!(back.tls);
    }
}
