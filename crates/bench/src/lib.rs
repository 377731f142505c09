//! Benchmark tools that speak only the SPEC wire protocol:
//!
//! - [`load`]: the load generator behind `rpc-bench` (closed and open
//!   loop, every reply checked, HdrHistogram latencies);
//! - [`server`]: the benchmark service's methods (`echo`, `sleep`,
//!   `fail`) as an SDK handler, which `rpc-bench-server` serves as a
//!   listening endpoint or as workers dialling an `rpc-lb`;
//! - [`wire`]: the calls and replies both sides exchange;
//! - [`report`]: counters, percentiles and the JSON report.

pub mod load;
pub mod report;
pub mod server;
pub mod wire;

/// Raises the soft open-files limit to the hard limit (idle-connection
/// scenarios need thousands of descriptors); returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// The runtime the `threads` setting selects, as for every binary here.
pub use rpc_config::runtime;
