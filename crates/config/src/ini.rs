use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rpc_transport::tls::TlsFiles;
use rpc_transport::Address;
use thiserror::Error;

use crate::ZkAuth;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("line {line}: expected key=value, got {text:?}")]
    Syntax { line: usize, text: String },
    #[error("invalid value for `{key}`: {value:?} ({reason})")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("cannot switch to the working directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where endpoints are registered and discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrySpec {
    /// ZooKeeper ensemble, `h1:2181,h2:2181`.
    ZooKeeper(String),
    /// The embedded single-machine registry: a directory of endpoint files.
    Local(PathBuf),
}

impl std::fmt::Display for RegistrySpec {
    /// As `zk` spells it: the hosts, or `local:DIR`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistrySpec::ZooKeeper(hosts) => f.write_str(hosts),
            RegistrySpec::Local(dir) => write!(f, "local:{}", dir.display()),
        }
    }
}

impl RegistrySpec {
    /// The embedded registry's default directory, shared by every process
    /// of this machine that leaves `zk` unset.
    pub fn default_local() -> RegistrySpec {
        let dir = std::env::var_os("RPC_REGISTRY_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("rpc_proxy-registry"));
        RegistrySpec::Local(dir)
    }
}

impl FromStr for RegistrySpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "local" {
            return Ok(Self::default_local());
        }
        if let Some(dir) = s.strip_prefix("local:") {
            if dir.is_empty() {
                return Err("local: needs a directory".into());
            }
            return Ok(RegistrySpec::Local(dir.into()));
        }
        for host in s.split(',') {
            let (h, p) = host
                .rsplit_once(':')
                .ok_or("expected host:port[,host:port]")?;
            if h.is_empty() || p.parse::<u16>().is_err() {
                return Err(format!("bad ZooKeeper address {host:?}"));
            }
        }
        Ok(RegistrySpec::ZooKeeper(s.to_string()))
    }
}

/// Proxy balancing across endpoint connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Power of two random choices, the cheaper by latency estimate ×
    /// (outstanding requests + 1).
    P2c,
    RoundRobin,
}

impl FromStr for Balance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "p2c" | "least_outstanding" | "least-outstanding" => Ok(Self::P2c),
            "round_robin" | "round-robin" | "rr" => Ok(Self::RoundRobin),
            _ => Err("expected p2c or round_robin".into()),
        }
    }
}

/// LB dispatch across workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// Least-loaded worker with a free slot, FIFO queue when all are busy.
    LeastLoaded,
    RoundRobin,
}

impl FromStr for Dispatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "least_loaded" | "least-loaded" => Ok(Self::LeastLoaded),
            "round_robin" | "round-robin" | "rr" => Ok(Self::RoundRobin),
            _ => Err("expected least_loaded or round_robin".into()),
        }
    }
}

/// Everything `config.ini` can say. The first block holds the original's
/// keys (SPEC §7); the second holds this project's limits and tunables,
/// each with a default that needs no configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub registry: RegistrySpec,
    pub product: String,
    pub zk_session_timeout: Duration,
    /// ZooKeeper identity (`zk_auth = digest:user:password`, or the same
    /// text in the file `zk_auth_file` names, which must be readable by its
    /// owner only). With it, every ZooKeeper client of the process
    /// authenticates, and the nodes it creates only it may change or
    /// delete; everyone may read them. None: no authentication, nodes open
    /// to all (the original's behaviour).
    pub zk_auth: Option<ZkAuth>,
    pub verbose: bool,
    pub service: Option<String>,
    pub front_host: Option<String>,
    pub front_port: Option<u16>,
    pub front_sock: Option<PathBuf>,
    pub ip_prefix: Option<String>,
    pub back_address: Option<Address>,
    pub worker_pool_size: usize,
    /// LB: calls a worker may hold beyond `worker_pool_size`, waiting
    /// inside it for a free pool slot. Sent only while every worker's pool
    /// is full; saves the round trip between a reply and the next call.
    pub worker_prefetch: usize,
    /// Where the proxy listens: one or more addresses, comma-separated.
    pub proxy_address: Vec<Address>,
    pub rpc_timeout: Duration,
    pub falcon_client: Option<String>,
    pub profile: bool,
    pub stand_alone: bool,

    /// Largest accepted frame, bytes.
    pub max_frame_size: usize,
    /// Concurrent client connections a listener accepts.
    pub max_connections: usize,
    /// Requests in flight per client connection before reading pauses.
    pub max_inflight: usize,
    /// Requests in flight per backend connection before it counts as full.
    pub backend_max_inflight: usize,
    pub balance: Balance,
    /// Time constant of the proxy's per-endpoint latency estimate: how fast
    /// it follows lower samples, and decays toward zero (so the endpoint is
    /// tried again) while the endpoint gets no traffic.
    pub balance_decay: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// How long a removed endpoint may finish in-flight requests.
    pub drain_timeout: Duration,
    /// Longest time a started frame may take to arrive in full; a client
    /// that trickles bytes (or stops mid-frame) is closed after it.
    pub frame_timeout: Duration,
    /// Graceful stop: serve until no request arrived for this long.
    pub quiet_period: Duration,
    /// Upper bound on the whole graceful stop.
    pub stop_timeout: Duration,
    pub dispatch: Dispatch,
    /// LB: requests waiting for a free worker slot.
    pub queue_size: usize,
    /// LB: delay between the first worker and registering.
    pub register_delay: Duration,
    /// LB: deregister after this long without any worker.
    pub no_worker_grace: Duration,
    /// LB: the command line of the workers it starts and supervises
    /// (split like a shell would, no shell involved); none: workers dial
    /// in by themselves.
    pub worker_command: Option<Vec<String>>,
    /// LB: supervised workers to keep running (0: one per CPU).
    pub worker_count: usize,
    /// LB: replace a supervised worker after this many calls (0: never),
    /// plus up to 10 % jitter so workers do not recycle together.
    pub worker_max_requests: u64,
    /// LB: first delay before restarting a worker that exited soon after
    /// starting; doubles up to 30 s while it keeps failing.
    pub worker_restart_backoff: Duration,
    /// HTTP address for metrics and the status page (`PORT` or `:PORT`
    /// alone: loopback).
    pub metrics_address: Option<String>,
    /// Permissions of the Unix sockets this process listens on (octal;
    /// connecting needs write permission).
    pub socket_mode: u32,
    /// Methods per service with series of their own (per-method metrics
    /// and the `falcon_client` push); later ones are counted as `other`.
    pub metrics_max_methods: usize,
    /// How often per-method statistics go to `falcon_client` (60 s, as
    /// the original).
    pub falcon_interval: Duration,
    /// Tokio worker threads; 0 picks for the machine.
    pub threads: usize,
    /// Where spans go, OTLP over HTTP (`http://host:4318`, to which
    /// `/v1/traces` is added when it has no path); none: no tracing.
    pub otlp_endpoint: Option<String>,
    /// Share of the traces a hop starts that are recorded (a call that
    /// carries a trace context follows its caller's decision).
    pub trace_sample_ratio: f64,
    /// `service.name` of the spans; none: the binary's name.
    pub otlp_service_name: Option<String>,
    /// TLS on the proxy → endpoint hop (`tls_cert_file`, `tls_key_file`,
    /// and `tls_client_ca_file` for a service or LB, `tls_ca_file` for a
    /// proxy); checked at load, re-read on SIGHUP.
    pub tls: TlsFiles,

    /// Keys this version does not know (kept, and warned about at load).
    pub unknown: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            registry: RegistrySpec::default_local(),
            product: "test".into(),
            zk_session_timeout: Duration::from_secs(30),
            zk_auth: None,
            verbose: false,
            service: None,
            front_host: None,
            front_port: None,
            front_sock: None,
            ip_prefix: None,
            back_address: None,
            worker_pool_size: 1,
            worker_prefetch: 0,
            proxy_address: Vec::new(),
            rpc_timeout: Duration::from_secs(15),
            falcon_client: None,
            profile: false,
            stand_alone: false,
            max_frame_size: 16_384_000,
            max_connections: 20_000,
            max_inflight: 1024,
            backend_max_inflight: 4096,
            balance: Balance::P2c,
            balance_decay: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(6),
            drain_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(30),
            quiet_period: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(30),
            dispatch: Dispatch::LeastLoaded,
            queue_size: 10_000,
            register_delay: Duration::from_secs(1),
            no_worker_grace: Duration::from_secs(10),
            worker_command: None,
            worker_count: 0,
            worker_max_requests: 0,
            worker_restart_backoff: Duration::from_secs(1),
            metrics_address: None,
            socket_mode: 0o660,
            metrics_max_methods: 64,
            falcon_interval: Duration::from_secs(60),
            threads: 0,
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
            otlp_service_name: None,
            tls: TlsFiles::default(),
            unknown: BTreeMap::new(),
        }
    }
}

fn invalid(key: &str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        reason: reason.to_string(),
    }
}

fn parse<T: FromStr>(key: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: ToString,
{
    value.parse().map_err(|e: T::Err| invalid(key, value, e))
}

fn flag(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "0" | "false" | "no" | "off" | "" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => Err(invalid(key, value, "expected 0 or 1")),
    }
}

fn seconds(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let s: f64 = parse(key, value)?;
    if !(0.0..=1e9).contains(&s) {
        return Err(invalid(key, value, "expected seconds >= 0"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn millis(key: &str, value: &str) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(parse(key, value)?))
}

fn positive(key: &str, value: &str) -> Result<usize, ConfigError> {
    match parse::<usize>(key, value)? {
        0 => Err(invalid(key, value, "must be at least 1")),
        n => Ok(n),
    }
}

/// `digest:user:…`: a `zk_auth` value fit for an error message.
fn hide_password(value: &str) -> String {
    let mut parts = value.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(scheme), Some(user), Some(_)) => format!("{scheme}:{user}:…"),
        _ => "…".into(),
    }
}

/// A TLS file: made absolute, since SIGHUP reads it again (possibly
/// after `--work-dir` changed the working directory).
fn tls_path(value: &str) -> Option<PathBuf> {
    let p = PathBuf::from(opt(value)?);
    Some(std::path::absolute(&p).unwrap_or(p))
}

fn opt(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

/// An HTTP listen address: `PORT` or `:PORT` alone binds loopback (a
/// status page is for the machine's own tools unless a host is named).
pub(crate) fn loopback_unless_named(addr: &str) -> String {
    let port = addr.strip_prefix(':').unwrap_or(addr);
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{port}")
    } else {
        addr.to_string()
    }
}

/// An OTLP/HTTP collector address: plain HTTP (a local collector or
/// agent; the exporter speaks no TLS), the scheme optional.
fn otlp_endpoint(key: &str, value: &str) -> Result<Option<String>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.starts_with("https://") {
        return Err(invalid(
            key,
            value,
            "TLS is not supported; send to a local collector over http://",
        ));
    }
    let url = match value.starts_with("http://") {
        true => value.to_string(),
        false => format!("http://{value}"),
    };
    let rest = &url["http://".len()..];
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(invalid(key, value, "expected http://host:port[/path]"));
    }
    Ok(Some(url))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses `key=value` lines; `#` starts a comment; spaces are trimmed.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let mut auth_key = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| ConfigError::Syntax {
                line: i + 1,
                text: raw.to_string(),
            })?;
            let k = k.trim();
            if k == "zk_auth" || k == "zk_auth_file" {
                if let Some(first) = auth_key.replace(k) {
                    return Err(invalid(k, "", format!("{first} is set already: use one")));
                }
            }
            c.set(k, v.trim())?;
        }
        if c.heartbeat_timeout <= c.heartbeat_interval {
            return Err(invalid(
                "heartbeat_timeout_ms",
                &c.heartbeat_timeout.as_millis().to_string(),
                "must exceed heartbeat_interval_ms",
            ));
        }
        c.tls
            .validate()
            .map_err(|e| invalid(e.key, &e.path.display().to_string(), e.reason))?;
        Ok(c)
    }

    /// Sets one key, as from the file; also the hook for command-line
    /// overrides in tests and tools.
    pub fn set(&mut self, k: &str, v: &str) -> Result<(), ConfigError> {
        match k {
            "zk" => self.registry = parse(k, v)?,
            "product" => {
                if v.is_empty() || v.contains('/') {
                    return Err(invalid(k, v, "must be a non-empty name without '/'"));
                }
                if v.contains(',') {
                    // The original Java SDK registered in every product of
                    // a list; a node named `a,b` would be read by no proxy.
                    return Err(invalid(
                        k,
                        v,
                        "names one product (a list, which the original Java SDK registered in each, is not supported: run one process per product)",
                    ));
                }
                self.product = v.into()
            }
            "zk_session_timeout" => self.zk_session_timeout = seconds(k, v)?,
            // Errors show the value with its password hidden.
            "zk_auth" => {
                self.zk_auth = match v {
                    "" => None,
                    _ => Some(ZkAuth::parse(v).map_err(|e| invalid(k, &hide_password(v), e))?),
                }
            }
            "zk_auth_file" => {
                self.zk_auth = match v {
                    "" => None,
                    _ => Some(ZkAuth::read_file(Path::new(v)).map_err(|e| invalid(k, v, e))?),
                }
            }
            "verbose" => self.verbose = flag(k, v)?,
            "service" => self.service = opt(v),
            "front_host" => self.front_host = opt(v),
            "front_port" => {
                self.front_port = if v.is_empty() {
                    None
                } else {
                    Some(parse(k, v)?)
                }
            }
            "front_sock" => self.front_sock = opt(v).map(PathBuf::from),
            "ip_prefix" => self.ip_prefix = opt(v),
            "back_address" => {
                self.back_address = if v.is_empty() {
                    None
                } else {
                    Some(parse(k, v)?)
                }
            }
            "worker_pool_size" => self.worker_pool_size = positive(k, v)?,
            "worker_prefetch" => self.worker_prefetch = parse(k, v)?,
            "proxy_address" => {
                self.proxy_address = v
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(|a| parse(k, a))
                    .collect::<Result<_, _>>()?
            }
            "rpc_timeout" => self.rpc_timeout = seconds(k, v)?,
            "falcon_client" => self.falcon_client = opt(v),
            "profile" => self.profile = flag(k, v)?,
            "stand_alone" => self.stand_alone = flag(k, v)?,
            "max_frame_size" => self.max_frame_size = positive(k, v)?,
            "max_connections" => self.max_connections = positive(k, v)?,
            "max_inflight" => self.max_inflight = positive(k, v)?,
            "backend_max_inflight" => self.backend_max_inflight = positive(k, v)?,
            "balance" => self.balance = parse(k, v)?,
            "balance_decay_ms" => {
                self.balance_decay = Duration::from_millis(positive(k, v)? as u64)
            }
            "heartbeat_interval_ms" => self.heartbeat_interval = millis(k, v)?,
            "heartbeat_timeout_ms" => self.heartbeat_timeout = millis(k, v)?,
            "drain_timeout" => self.drain_timeout = seconds(k, v)?,
            "frame_timeout" => self.frame_timeout = seconds(k, v)?,
            "quiet_period" => self.quiet_period = seconds(k, v)?,
            "stop_timeout" => self.stop_timeout = seconds(k, v)?,
            "dispatch" => self.dispatch = parse(k, v)?,
            "queue_size" => self.queue_size = positive(k, v)?,
            "register_delay" => self.register_delay = seconds(k, v)?,
            "no_worker_grace" => self.no_worker_grace = seconds(k, v)?,
            "worker_command" => {
                self.worker_command = match v {
                    "" => None,
                    _ => match shlex::split(v) {
                        Some(argv) if !argv.is_empty() => Some(argv),
                        _ => return Err(invalid(k, v, "not a command line (unbalanced quotes?)")),
                    },
                }
            }
            "worker_count" => self.worker_count = parse(k, v)?,
            "worker_max_requests" => self.worker_max_requests = parse(k, v)?,
            "worker_restart_backoff" => self.worker_restart_backoff = seconds(k, v)?,
            "metrics_address" => self.metrics_address = opt(v).map(|a| loopback_unless_named(&a)),
            "socket_mode" => {
                let digits = v.strip_prefix("0o").unwrap_or(v);
                self.socket_mode = match u32::from_str_radix(digits, 8) {
                    Ok(m) if m <= 0o777 => m,
                    _ => return Err(invalid(k, v, "an octal mode such as 0660")),
                }
            }
            "metrics_max_methods" => self.metrics_max_methods = positive(k, v)?,
            "falcon_interval" => match seconds(k, v)? {
                d if d.is_zero() => return Err(invalid(k, v, "must be above 0")),
                d => self.falcon_interval = d,
            },
            "threads" => self.threads = parse(k, v)?,
            "otlp_endpoint" => self.otlp_endpoint = otlp_endpoint(k, v)?,
            "trace_sample_ratio" => match parse::<f64>(k, v)? {
                r if (0.0..=1.0).contains(&r) => self.trace_sample_ratio = r,
                _ => return Err(invalid(k, v, "expected a ratio from 0 to 1")),
            },
            "otlp_service_name" => self.otlp_service_name = opt(v),
            "tls_cert_file" => self.tls.cert = tls_path(v),
            "tls_key_file" => self.tls.key = tls_path(v),
            "tls_client_ca_file" => self.tls.client_ca = tls_path(v),
            "tls_ca_file" => self.tls.ca = tls_path(v),
            _ => {
                tracing::warn!(key = k, "unknown configuration key ignored");
                self.unknown.insert(k.into(), v.into());
            }
        }
        Ok(())
    }

    /// The address a service or LB listens on and registers: `front_sock`,
    /// else `front_host:front_port`, else this machine's first IPv4 address
    /// starting with `ip_prefix`, with `front_port`.
    pub fn front_address(&self) -> Result<Address, ConfigError> {
        if let Some(sock) = &self.front_sock {
            let abs = if sock.is_absolute() {
                sock.clone()
            } else {
                std::env::current_dir()
                    .map(|d| d.join(sock))
                    .unwrap_or_else(|_| sock.clone())
            };
            return Ok(Address::Unix(abs));
        }
        let port = self.front_port.ok_or(ConfigError::Missing("front_port"))?;
        let host = match (&self.front_host, &self.ip_prefix) {
            (Some(h), _) => h.clone(),
            (None, Some(prefix)) => local_ip_with_prefix(prefix).ok_or_else(|| {
                invalid("ip_prefix", prefix, "no local IPv4 address starts with it")
            })?,
            (None, None) => return Err(ConfigError::Missing("front_host")),
        };
        Ok(Address::Tcp(format!("{host}:{port}")))
    }
}

/// First IPv4 address of this machine whose text starts with `prefix`.
pub fn local_ip_with_prefix(prefix: &str) -> Option<String> {
    let mut found = None;
    // SAFETY: getifaddrs fills a linked list that we walk read-only and free.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return None;
        }
        let mut cur = head;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() && (*addr).sa_family as i32 == libc::AF_INET {
                let sin = &*(addr as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).to_string();
                if ip.starts_with(prefix) {
                    found = Some(ip);
                    break;
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_page_given_only_a_port_listens_on_loopback_and_socket_mode_is_octal() {
        for (v, want) in [
            ("9101", "127.0.0.1:9101"),
            (":9101", "127.0.0.1:9101"),
            ("0.0.0.0:9101", "0.0.0.0:9101"),
            ("[::1]:9101", "[::1]:9101"),
        ] {
            let c = Config::parse(&format!("metrics_address = {v}")).unwrap();
            assert_eq!(c.metrics_address.as_deref(), Some(want), "{v}");
        }
        assert_eq!(Config::parse("").unwrap().socket_mode, 0o660);
        for (v, want) in [("0600", 0o600), ("660", 0o660), ("0o666", 0o666)] {
            let c = Config::parse(&format!("socket_mode = {v}")).unwrap();
            assert_eq!(c.socket_mode, want, "{v}");
        }
        for bad in ["0999", "rw", "01777"] {
            let e = Config::parse(&format!("socket_mode = {bad}")).unwrap_err();
            assert!(e.to_string().contains("socket_mode"), "{e}");
        }
    }

    #[test]
    fn reads_the_originals_keys() {
        let c = Config::parse(
            "# comment\n zk = 127.0.0.1:2181,127.0.0.2:2181 \nproduct=online_x\nservice=echo # trailing\n\
             front_host=127.0.0.1\nfront_port=5555\nback_address=/tmp/lb.sock\nworker_pool_size=4\n\
             proxy_address=127.0.0.1:5550\nrpc_timeout=2.5\nverbose=1\nzk_session_timeout=10\n\
             falcon_client=http://x/push\nprofile=0\nstand_alone=0\nip_prefix=\nfront_sock=\n",
        )
        .unwrap();
        assert_eq!(
            c.registry,
            RegistrySpec::ZooKeeper("127.0.0.1:2181,127.0.0.2:2181".into())
        );
        assert_eq!(c.product, "online_x");
        assert_eq!(c.service.as_deref(), Some("echo"));
        assert_eq!(
            c.front_address().unwrap(),
            Address::Tcp("127.0.0.1:5555".into())
        );
        assert_eq!(c.back_address, Some(Address::Unix("/tmp/lb.sock".into())));
        assert_eq!(c.worker_pool_size, 4);
        assert_eq!(c.worker_command, None);
        assert_eq!(c.proxy_address, vec![Address::Tcp("127.0.0.1:5550".into())]);
        let two = Config::parse("proxy_address = 127.0.0.1:1, /run/p.sock").unwrap();
        assert_eq!(two.proxy_address[1], Address::Unix("/run/p.sock".into()));
        assert_eq!(c.rpc_timeout, Duration::from_millis(2500));
        assert_eq!(c.zk_session_timeout, Duration::from_secs(10));
        assert!(c.verbose);
    }

    #[test]
    fn balance_decay_defaults_to_a_second() {
        assert_eq!(
            Config::parse("").unwrap().balance_decay,
            Duration::from_secs(1)
        );
        let c = Config::parse("balance=p2c\nbalance_decay_ms=250").unwrap();
        assert_eq!(c.balance_decay, Duration::from_millis(250));
        assert!(c.unknown.is_empty());
    }

    #[test]
    fn unknown_keys_are_kept_not_fatal() {
        let c = Config::parse("some_future_key = 3\n").unwrap();
        assert_eq!(
            c.unknown.get("some_future_key").map(String::as_str),
            Some("3")
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (text, key) in [
            ("worker_pool_size=0", "worker_pool_size"),
            ("rpc_timeout=soon", "rpc_timeout"),
            ("front_port=70000", "front_port"),
            ("zk=nohostport", "zk"),
            ("balance=random", "balance"),
            ("balance_decay_ms=0", "balance_decay_ms"),
            ("verbose=2", "verbose"),
            ("product=a/b", "product"),
            ("product=online_a,online_b", "one process per product"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        assert!(matches!(
            Config::parse("just words"),
            Err(ConfigError::Syntax { line: 1, .. })
        ));
    }

    #[test]
    fn registry_defaults_to_local() {
        assert!(matches!(
            Config::parse("").unwrap().registry,
            RegistrySpec::Local(_)
        ));
        assert_eq!(
            Config::parse("zk=local:/var/reg").unwrap().registry,
            RegistrySpec::Local("/var/reg".into())
        );
    }

    #[test]
    fn front_sock_wins_and_becomes_absolute() {
        let c = Config::parse("front_sock=echo.sock\nfront_host=1.2.3.4\nfront_port=1").unwrap();
        match c.front_address().unwrap() {
            Address::Unix(p) => assert!(p.is_absolute() && p.ends_with("echo.sock")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ip_prefix_picks_loopback() {
        let c = Config::parse("ip_prefix=127.\nfront_port=9").unwrap();
        assert_eq!(
            c.front_address().unwrap(),
            Address::Tcp("127.0.0.1:9".into())
        );
    }

    #[test]
    fn per_method_statistics_keys() {
        let c = Config::parse("").unwrap();
        assert_eq!(
            (c.metrics_max_methods, c.falcon_interval),
            (64, Duration::from_secs(60))
        );
        let c = Config::parse("metrics_max_methods=8\nfalcon_interval=0.5").unwrap();
        assert_eq!(
            (c.metrics_max_methods, c.falcon_interval),
            (8, Duration::from_millis(500))
        );
        for bad in [
            "metrics_max_methods=0",
            "falcon_interval=0",
            "falcon_interval=-1",
        ] {
            let e = Config::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad.split('=').next().unwrap()), "{e}");
        }
    }

    #[test]
    fn tracing_is_off_unless_an_otlp_endpoint_is_set() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!((c.trace_sample_ratio, c.otlp_service_name), (1.0, None));
        let c = Config::parse(
            "otlp_endpoint=127.0.0.1:4318\ntrace_sample_ratio=0.01\notlp_service_name=edge",
        )
        .unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        assert_eq!(c.trace_sample_ratio, 0.01);
        assert_eq!(c.otlp_service_name.as_deref(), Some("edge"));
        let c = Config::parse("otlp_endpoint=http://collector:4318/custom/traces").unwrap();
        assert_eq!(
            c.otlp_endpoint.as_deref(),
            Some("http://collector:4318/custom/traces")
        );
        assert!(c.unknown.is_empty());
        for bad in [
            "otlp_endpoint=https://collector:4318",
            "otlp_endpoint=http:///v1/traces",
            "trace_sample_ratio=1.5",
            "trace_sample_ratio=-0.1",
            "trace_sample_ratio=often",
        ] {
            let e = Config::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad.split('=').next().unwrap()), "{e}");
        }
    }

    #[test]
    fn zk_auth_keys_and_their_errors_hide_the_password() {
        assert!(Config::parse("").unwrap().zk_auth.is_none());
        let c = Config::parse("zk_auth = digest:echo:pw-secret\n").unwrap();
        let auth = c.zk_auth.as_ref().unwrap();
        assert_eq!(
            (auth.user(), auth.credentials()),
            ("echo", &b"echo:pw-secret"[..])
        );
        assert!(
            !format!("{c:?}").contains("pw-secret"),
            "Debug of the config"
        );
        assert!(Config::parse("zk_auth=").unwrap().zk_auth.is_none());
        for bad in [
            "zk_auth = sasl:echo:pw-secret",
            "zk_auth = digest:echo",
            "zk_auth = digest::pw-secret",
            "zk_auth = echo:pw-secret",
        ] {
            let e = Config::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("zk_auth") && !e.contains("pw-secret"),
                "{bad}: {e}"
            );
        }

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("zk.auth");
        std::fs::write(&file, "digest:echo:pw-secret\n").unwrap();
        let key = format!("zk_auth_file = {}", file.display());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::parse(&key).unwrap_err().to_string();
        assert!(e.contains("zk_auth_file") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("pw-secret"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::parse(&key).unwrap();
        assert_eq!(c.zk_auth.unwrap().to_string(), "digest:echo");

        // One identity: both keys at once is a mistake.
        let both = format!("zk_auth = digest:echo:pw-secret\n{key}");
        let e = Config::parse(&both).unwrap_err().to_string();
        assert!(e.contains("zk_auth") && !e.contains("pw-secret"), "{e}");
    }

    #[test]
    fn supervised_worker_keys() {
        let c = Config::parse(
            "worker_command = python3 -m my_service --name 'a b'\nworker_count=4\n\
             worker_max_requests=1000\nworker_restart_backoff=0.5\n",
        )
        .unwrap();
        let argv = c.worker_command.unwrap();
        assert_eq!(argv, ["python3", "-m", "my_service", "--name", "a b"]);
        assert_eq!((c.worker_count, c.worker_max_requests), (4, 1000));
        assert_eq!(c.worker_restart_backoff, Duration::from_millis(500));
        let e = Config::parse("worker_command = run 'unbalanced\n").unwrap_err();
        assert!(e.to_string().contains("worker_command"), "{e}");
    }

    #[test]
    fn tls_keys_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rpc_testkit::tls::TestCa::new(dir.path(), "fleet");
        let server = ca.server("endpoint");
        let path = |p: &Option<PathBuf>| p.as_ref().unwrap().display().to_string();
        let text = format!(
            "tls_cert_file = {}\ntls_key_file = {}\ntls_client_ca_file = {}\n",
            path(&server.cert),
            path(&server.key),
            path(&server.client_ca)
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.tls, server);
        assert!(c.tls.serves() && !c.tls.dials());

        let client = ca.client("proxy");
        let text = format!(
            "tls_ca_file = {}\ntls_cert_file = {}\ntls_key_file = {}\n",
            path(&client.ca),
            path(&client.cert),
            path(&client.key)
        );
        assert!(Config::parse(&text).unwrap().tls.dials());

        // The key of another certificate.
        let text = format!(
            "tls_ca_file = {}\ntls_cert_file = {}\ntls_key_file = {}\n",
            path(&client.ca),
            path(&client.cert),
            path(&server.key)
        );
        let e = Config::parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("tls_key_file") && e.contains("does not match"),
            "{e}"
        );
        // A certificate alone, or a missing file.
        let e = Config::parse(&format!(
            "tls_client_ca_file = {}\n",
            path(&server.client_ca)
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls_cert_file") && e.contains("missing"), "{e}");
        let e = Config::parse("tls_ca_file = /nonexistent/ca.pem\ntls_cert_file = /nonexistent/c.pem\ntls_key_file = /nonexistent/k.pem\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        // Relative paths are made absolute (SIGHUP reads them again).
        let c = Config::parse("tls_ca_file = ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            c.contains(&std::env::current_dir().unwrap().display().to_string()),
            "{c}"
        );
    }
}
