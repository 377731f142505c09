//! Supervised workers (`worker_command`): the LB starts `worker_count`
//! worker processes itself and keeps them running, as gunicorn or uWSGI do
//! for web workers. Workers that dial in by themselves are served as ever.
//!
//! - Each worker gets `RPC_BACK_ADDRESS` (where the LB listens for
//!   workers) and `RPC_WORKER_POOL_SIZE` in its environment, and dies with
//!   the LB (`PR_SET_PDEATHSIG`).
//! - One task per slot: a worker that exits is logged with its status and
//!   started again, at once if it had run for a while, else after a delay
//!   that doubles from `worker_restart_backoff` up to 30 s.
//! - Replacing a worker (`worker_max_requests` reached, or `SIGHUP` for
//!   all of them, one after another) starts the new one first, waits until
//!   it has connected to the LB, then stops the old one gracefully
//!   (SIGTERM: it sends STOP, the LB sends it nothing new, it finishes what
//!   it has and exits), so no call fails.
//! - A worker's connection is matched to its process by the peer's pid
//!   (`SO_PEERCRED` on a Unix back address, `/proc` for TCP).

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rpc_config::Config;
use rpc_transport::Address;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use crate::dispatch::Dispatcher;

/// Longest delay between restarts of a worker that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker that ran this long before exiting is restarted at once.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// How often a slot looks at its worker's call count.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a new worker may take to connect before the replacement is
/// given up (the old one keeps serving).
const CONNECT_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Settings {
    argv: Vec<String>,
    back_address: String,
    pool_size: usize,
    max_requests: u64,
    backoff: Duration,
    stop_timeout: Duration,
}

/// One supervised worker as the status page shows it.
#[derive(Debug, Clone, Default)]
pub struct SlotView {
    pub slot: usize,
    pub pid: Option<u32>,
    /// When the current process started.
    pub started: Option<Instant>,
    /// Unplanned exits restarted so far.
    pub restarts: u64,
    /// Planned replacements (max requests, reload).
    pub replaced: u64,
    /// How the last worker of this slot ended.
    pub last_exit: Option<String>,
}

enum Command_ {
    /// Start a new worker, then stop the current one; answer when done.
    Replace(oneshot::Sender<()>),
    /// Stop the worker gracefully and the slot with it.
    Stop(oneshot::Sender<()>),
}

/// The supervisor of one LB's workers.
pub struct Supervisor {
    slots: Vec<mpsc::UnboundedSender<Command_>>,
    views: Arc<Mutex<Vec<SlotView>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Supervisor {
    /// Starts `worker_count` workers (one per CPU when 0), if the
    /// configuration has a `worker_command`.
    pub fn start(
        config: &Config,
        back: &Address,
        dispatcher: Arc<Dispatcher>,
    ) -> Option<Arc<Supervisor>> {
        let argv = config.worker_command.clone()?;
        let count = match config.worker_count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let settings = Arc::new(Settings {
            argv,
            back_address: back.to_string(),
            pool_size: config.worker_pool_size,
            max_requests: config.worker_max_requests,
            backoff: config.worker_restart_backoff,
            stop_timeout: config.stop_timeout,
        });
        tracing::info!(command = ?settings.argv, count, "supervising workers");
        let views = Arc::new(Mutex::new(
            (0..count)
                .map(|slot| SlotView {
                    slot,
                    ..SlotView::default()
                })
                .collect(),
        ));
        let mut slots = Vec::new();
        let mut tasks = Vec::new();
        for slot in 0..count {
            let (tx, rx) = mpsc::unbounded_channel();
            let s = Slot {
                slot,
                settings: settings.clone(),
                views: views.clone(),
                dispatcher: dispatcher.clone(),
            };
            tasks.push(tokio::spawn(s.run(rx)));
            slots.push(tx);
        }
        Some(Arc::new(Supervisor {
            slots,
            views,
            tasks: Mutex::new(tasks),
        }))
    }

    pub fn views(&self) -> Vec<SlotView> {
        self.views.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces every worker, one after another, new before old.
    pub async fn reload(&self) {
        tracing::info!(workers = self.slots.len(), "reload: replacing every worker");
        for slot in &self.slots {
            let (done, wait) = oneshot::channel();
            if slot.send(Command_::Replace(done)).is_ok() {
                let _ = wait.await;
            }
        }
        tracing::info!("reload done");
    }

    /// Stops every worker gracefully (all at once), each bounded by
    /// `stop_timeout`, then killed.
    pub async fn stop(&self) {
        let mut waits = Vec::new();
        for slot in &self.slots {
            let (done, wait) = oneshot::channel();
            if slot.send(Command_::Stop(done)).is_ok() {
                waits.push(wait);
            }
        }
        for w in waits {
            let _ = w.await;
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        tracing::info!("supervised workers stopped");
    }
}

/// One slot: keeps one worker running.
struct Slot {
    slot: usize,
    settings: Arc<Settings>,
    views: Arc<Mutex<Vec<SlotView>>>,
    dispatcher: Arc<Dispatcher>,
}

impl Slot {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Command_>) {
        let mut backoff = self.settings.backoff;
        loop {
            let Some(mut child) = self.spawn_retrying(&mut backoff, &mut commands).await else {
                return;
            };
            let mut started = Instant::now();
            let mut limit = self.request_limit();
            let mut tick = tokio::time::interval(CHECK_EVERY);
            loop {
                tokio::select! {
                    status = child.wait() => {
                        let ran = started.elapsed();
                        self.exited(&child, status, ran, backoff);
                        if ran >= HEALTHY_AFTER {
                            backoff = self.settings.backoff;
                        } else {
                            let delay = backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            if self.wait_or_stop(delay, &mut commands).await {
                                return;
                            }
                        }
                        break;
                    }
                    cmd = commands.recv() => match cmd {
                        Some(Command_::Replace(done)) => {
                            child = self.replace(child).await;
                            (started, limit) = (Instant::now(), self.request_limit());
                            let _ = done.send(());
                        }
                        Some(Command_::Stop(done)) => {
                            self.stop_child(child).await;
                            let _ = done.send(());
                            return;
                        }
                        None => return,
                    },
                    _ = tick.tick(), if limit.is_some() => {
                        let served = self.served(child.id());
                        if limit.is_some_and(|l| served >= l) {
                            tracing::info!(slot = self.slot, pid = child.id(), served, "worker reached worker_max_requests: replacing it");
                            child = self.replace(child).await;
                            (started, limit) = (Instant::now(), self.request_limit());
                        }
                    }
                }
            }
        }
    }

    /// `worker_max_requests` plus up to 10 % jitter, if set.
    fn request_limit(&self) -> Option<u64> {
        let max = self.settings.max_requests;
        (max > 0).then(|| max + rand::thread_rng().gen_range(0..=max / 10))
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let s = &self.settings;
        let mut cmd = Command::new(&s.argv[0]);
        cmd.args(&s.argv[1..])
            .env("RPC_BACK_ADDRESS", &s.back_address)
            .env("RPC_WORKER_POOL_SIZE", s.pool_size.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The worker gets SIGTERM when the LB dies, however it dies.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        tracing::info!(slot = self.slot, pid = child.id(), "worker started");
        Ok(child)
    }

    /// A started worker; `None` when told to stop meanwhile.
    async fn spawn_retrying(
        &self,
        backoff: &mut Duration,
        commands: &mut mpsc::UnboundedReceiver<Command_>,
    ) -> Option<Child> {
        loop {
            match self.spawn() {
                Ok(c) => {
                    self.update(|v| {
                        v.pid = c.id();
                        v.started = Some(Instant::now());
                    });
                    return Some(c);
                }
                Err(e) => {
                    tracing::error!(slot = self.slot, command = ?self.settings.argv, error = %e, retry_in = ?backoff, "cannot start worker");
                    let delay = *backoff;
                    *backoff = (*backoff * 2).min(MAX_BACKOFF);
                    if self.wait_or_stop(delay, commands).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Sleeps `delay`; true if told to stop meanwhile (acknowledged).
    async fn wait_or_stop(
        &self,
        delay: Duration,
        commands: &mut mpsc::UnboundedReceiver<Command_>,
    ) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return false,
                cmd = commands.recv() => match cmd {
                    Some(Command_::Replace(done)) => { let _ = done.send(()); }
                    Some(Command_::Stop(done)) => { let _ = done.send(()); return true; }
                    None => return true,
                },
            }
        }
    }

    fn exited(
        &self,
        child: &Child,
        status: std::io::Result<ExitStatus>,
        ran: Duration,
        backoff: Duration,
    ) {
        let how = describe(status);
        let restart_in = if ran >= HEALTHY_AFTER {
            Duration::ZERO
        } else {
            backoff
        };
        tracing::warn!(slot = self.slot, pid = child.id(), status = %how, ran = ?ran, ?restart_in, "worker exited; restarting it");
        self.update(|v| {
            v.pid = None;
            v.restarts += 1;
            v.last_exit = Some(how);
        });
    }

    /// Starts a new worker, waits until it serves, then stops `old`. If the
    /// new one cannot start or connect, `old` is kept.
    async fn replace(&self, old: Child) -> Child {
        let mut new = match self.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(slot = self.slot, error = %e, "cannot start a replacement; keeping the old worker");
                return old;
            }
        };
        let new_pid = new.id();
        let connected = timeout(CONNECT_WITHIN, async {
            loop {
                if new_pid.is_some_and(|p| self.serving(p)) {
                    return true;
                }
                tokio::select! {
                    _ = sleep(Duration::from_millis(20)) => {}
                    _ = new.wait() => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if !connected {
            tracing::error!(
                slot = self.slot,
                pid = new_pid,
                "replacement did not connect; keeping the old worker"
            );
            self.stop_child(new).await;
            return old;
        }
        tracing::info!(
            slot = self.slot,
            old = old.id(),
            new = new_pid,
            "replacement connected; stopping the old worker"
        );
        self.stop_child(old).await;
        self.update(|v| {
            v.pid = new_pid;
            v.started = Some(Instant::now());
            v.replaced += 1;
        });
        new
    }

    /// SIGTERM, then up to `stop_timeout` to exit, then SIGKILL.
    async fn stop_child(&self, mut child: Child) {
        let pid = child.id();
        if let Some(p) = pid {
            // SAFETY: signalling a child we own and have not reaped.
            unsafe { libc::kill(p as libc::pid_t, libc::SIGTERM) };
        }
        let status = match timeout(self.settings.stop_timeout, child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                tracing::warn!(
                    slot = self.slot,
                    pid,
                    "worker did not stop in time: killing it"
                );
                let _ = child.kill().await;
                child.wait().await
            }
        };
        tracing::info!(slot = self.slot, pid, status = %describe(status), "worker stopped");
    }

    /// Calls answered by the worker process `pid`, over its connections.
    fn served(&self, pid: Option<u32>) -> u64 {
        let Some(pid) = pid else { return 0 };
        let s = self.dispatcher.snapshot();
        s.workers
            .iter()
            .filter(|w| w.pid == Some(pid))
            .map(|w| w.served)
            .sum()
    }

    fn serving(&self, pid: u32) -> bool {
        let s = self.dispatcher.snapshot();
        s.workers.iter().any(|w| w.pid == Some(pid) && w.serving)
    }

    fn update(&self, f: impl FnOnce(&mut SlotView)) {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut views[self.slot]);
    }
}

/// "exit code 3", "killed by signal 9 (SIGKILL)".
fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
            _ => s.to_string(),
        },
        Err(e) => format!("unknown ({e})"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_as_an_operator_would_say_them() {
        let code = ExitStatus::from_raw(3 << 8);
        assert_eq!(describe(Ok(code)), "exit code 3");
        let killed = ExitStatus::from_raw(libc::SIGKILL);
        assert_eq!(describe(Ok(killed)), "killed by signal 9 (SIGKILL)");
    }
}
