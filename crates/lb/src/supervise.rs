//! Supervised workers (`worker_command`): the LB starts `worker_count`
//! worker processes itself and keeps them running, as gunicorn or uWSGI do
//! for web workers. Workers that dial in by themselves are served as ever.
//!
//! - Each worker gets `RPC_BACK_ADDRESS` (where the LB listens for
//!   workers) and `RPC_WORKER_POOL_SIZE` in its environment, runs in a
//!   process group of its own (a terminal's Ctrl-C reaches the LB alone,
//!   which stops the workers after its drain), and dies with the LB
//!   (`PR_SET_PDEATHSIG`).
//! - One task per slot: a worker that exits is logged with its status and
//!   started again, at once if it had run for a while, else after a delay
//!   that doubles from `worker_restart_backoff` up to 30 s.
//! - Replacing a worker (`worker_max_requests` reached, or `SIGHUP` for
//!   all of them, one after another) starts the new one first, waits until
//!   it has connected to the LB, then stops the old one gracefully
//!   (SIGTERM: it sends STOP, the LB sends it nothing new, it finishes what
//!   it has and exits), so no call fails.
//! - Upgrades (`rpc-lb --upgrade`): workers cannot change parents, so the
//!   successor starts workers of its own as it starts, and the old LB
//!   stops its own as in a graceful stop, once the calls it sent them are
//!   answered. For that moment both sets run.
//! - A worker's connection is matched to its process by the peer's pid
//!   (`SO_PEERCRED` on a Unix back address; for TCP, the connection's
//!   socket among the supervised processes' descriptors in `/proc`). So
//!   the command must become the worker: a wrapper script `exec`s it.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::Ordering;
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
use crate::metrics::WorkerCounters;

/// Longest delay between restarts of a worker that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker that ran this long before exiting is restarted at once.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// How often a slot looks at its worker's call count.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often a replacement is looked for among the connected workers.
const CONNECTED_CHECK: Duration = Duration::from_millis(20);
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

/// The pids of the worker processes the LB started and has not reaped,
/// among which a TCP worker connection's process is looked for.
#[derive(Debug, Default)]
pub struct Children {
    pids: Mutex<Vec<u32>>,
}

impl Children {
    fn pids(&self) -> Vec<u32> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn add(&self, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
    }

    fn remove(&self, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&p| p != pid);
    }

    /// Looks for the process at the other end of the TCP connection
    /// `local` ↔ `peer` among the children (in `/proc`, on the blocking
    /// pool) and records it in `counters`. Tried a few times: a worker may
    /// dial in before its pid is listed here.
    pub fn find_tcp_peer(
        self: &Arc<Self>,
        local: SocketAddr,
        peer: SocketAddr,
        counters: Arc<WorkerCounters>,
    ) {
        let children = self.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                let pids = children.pids();
                let found = tokio::task::spawn_blocking(move || {
                    crate::procfs::tcp_peer_pid(local, peer, &pids)
                })
                .await;
                if let Ok(Some(pid)) = found {
                    counters.pid.store(pid, Ordering::Relaxed);
                    tracing::debug!(%peer, pid, "worker connection's process found");
                    return;
                }
                sleep(Duration::from_millis(50)).await;
            }
        });
    }
}

enum Command_ {
    /// Start a new worker, then stop the current one; answer when done.
    Replace(oneshot::Sender<()>),
    /// Stop the worker gracefully and the slot with it.
    Stop(oneshot::Sender<()>),
}

/// The supervisor of one LB's workers.
pub struct Supervisor {
    settings: Arc<Settings>,
    children: Arc<Children>,
    slots: Vec<mpsc::UnboundedSender<Command_>>,
    /// The slots' ends of their command channels, until [`Self::start`].
    inboxes: Mutex<Vec<mpsc::UnboundedReceiver<Command_>>>,
    views: Arc<Mutex<Vec<SlotView>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Supervisor {
    /// A supervisor of `worker_count` workers (one per CPU when 0) that
    /// dial `back` (the LB's resolved worker address), if the
    /// configuration has a `worker_command`. Nothing runs before
    /// [`Self::start`].
    pub fn new(config: &Config, back: &Address) -> Option<Arc<Supervisor>> {
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
        let views = (0..count)
            .map(|slot| SlotView {
                slot,
                ..SlotView::default()
            })
            .collect();
        let (slots, inboxes) = (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        Some(Arc::new(Supervisor {
            settings,
            children: Arc::default(),
            slots,
            inboxes: Mutex::new(inboxes),
            views: Arc::new(Mutex::new(views)),
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// The processes started and not reaped yet.
    pub fn children(&self) -> Arc<Children> {
        self.children.clone()
    }

    /// Starts the workers, one task per slot keeping one running.
    ///
    /// `PR_SET_PDEATHSIG` fires when the *thread* that started a worker
    /// ends, so workers are only ever started from these tasks, which run
    /// on the runtime's own threads (they last as long as the LB), never
    /// on the blocking pool (whose threads come and go).
    pub fn start(&self, dispatcher: Arc<Dispatcher>) {
        let inboxes = std::mem::take(&mut *self.inboxes.lock().unwrap_or_else(|e| e.into_inner()));
        tracing::info!(command = ?self.settings.argv, count = inboxes.len(), "supervising workers");
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for (slot, inbox) in inboxes.into_iter().enumerate() {
            let s = Slot {
                slot,
                settings: self.settings.clone(),
                views: self.views.clone(),
                children: self.children.clone(),
                dispatcher: dispatcher.clone(),
            };
            tasks.push(tokio::spawn(s.run(inbox)));
        }
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

/// A worker process the LB started.
struct Worker {
    child: Child,
    /// Kept: `Child::id` forgets it once the process is reaped.
    pid: u32,
    started: Instant,
}

/// One slot: keeps one worker running.
struct Slot {
    slot: usize,
    settings: Arc<Settings>,
    views: Arc<Mutex<Vec<SlotView>>>,
    children: Arc<Children>,
    dispatcher: Arc<Dispatcher>,
}

impl Slot {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Command_>) {
        // Delay before the next restart of a worker that exits young.
        let mut backoff = self.settings.backoff;
        loop {
            let Some(mut worker) = self.spawn_retrying(&mut backoff, &mut commands).await else {
                return;
            };
            let mut limit = self.request_limit();
            // A replacement that failed is tried again after a delay of its
            // own, not at every look.
            let mut replace_backoff = self.settings.backoff;
            let mut next_try = Instant::now();
            let mut tick = tokio::time::interval(CHECK_EVERY);
            loop {
                tokio::select! {
                    status = worker.child.wait() => {
                        let ran = worker.started.elapsed();
                        self.children.remove(worker.pid);
                        let delay = if ran >= HEALTHY_AFTER {
                            backoff = self.settings.backoff;
                            Duration::ZERO
                        } else {
                            let d = backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            d
                        };
                        self.exited(worker.pid, status, ran, delay);
                        if !delay.is_zero() && self.wait_or_stop(delay, &mut commands).await {
                            return;
                        }
                        break;
                    }
                    cmd = commands.recv() => match cmd {
                        Some(Command_::Replace(done)) => {
                            if self.replace(&mut worker).await {
                                limit = self.request_limit();
                            }
                            let _ = done.send(());
                        }
                        Some(Command_::Stop(done)) => {
                            self.stop_worker(worker).await;
                            let _ = done.send(());
                            return;
                        }
                        None => return,
                    },
                    _ = tick.tick(), if limit.is_some() => {
                        let served = self.dispatcher.process(worker.pid).served;
                        if limit.is_some_and(|l| served >= l) && Instant::now() >= next_try {
                            tracing::info!(slot = self.slot, pid = worker.pid, served, "worker reached worker_max_requests: replacing it");
                            if self.replace(&mut worker).await {
                                limit = self.request_limit();
                                replace_backoff = self.settings.backoff;
                            } else {
                                next_try = Instant::now() + replace_backoff;
                                replace_backoff = (replace_backoff * 2).min(MAX_BACKOFF);
                            }
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

    fn spawn(&self) -> std::io::Result<Worker> {
        let s = &self.settings;
        let mut cmd = Command::new(&s.argv[0]);
        cmd.args(&s.argv[1..])
            .env("RPC_BACK_ADDRESS", &s.back_address)
            .env("RPC_WORKER_POOL_SIZE", s.pool_size.to_string())
            .stdin(Stdio::null())
            // A process group of its own: a terminal's Ctrl-C (SIGINT to the
            // foreground group) reaches the LB alone, which drains and only
            // then stops its workers.
            .process_group(0)
            .kill_on_drop(true);
        let lb = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs
        // in the child between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // The worker gets SIGTERM when the LB dies, however it dies.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The LB died before that was set: nobody would tell us.
                if libc::getppid() as u32 != lb {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id().expect("a process just started has a pid");
        self.children.add(pid);
        tracing::info!(slot = self.slot, pid, "worker started");
        Ok(Worker {
            child,
            pid,
            started: Instant::now(),
        })
    }

    /// A started worker; `None` when told to stop meanwhile.
    async fn spawn_retrying(
        &self,
        backoff: &mut Duration,
        commands: &mut mpsc::UnboundedReceiver<Command_>,
    ) -> Option<Worker> {
        loop {
            match self.spawn() {
                Ok(w) => {
                    self.update(|v| {
                        v.pid = Some(w.pid);
                        v.started = Some(w.started);
                    });
                    return Some(w);
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
                    // Nothing to replace: a new worker starts after the delay.
                    Some(Command_::Replace(done)) => { let _ = done.send(()); }
                    Some(Command_::Stop(done)) => { let _ = done.send(()); return true; }
                    None => return true,
                },
            }
        }
    }

    fn exited(
        &self,
        pid: u32,
        status: std::io::Result<ExitStatus>,
        ran: Duration,
        delay: Duration,
    ) {
        let how = describe(status);
        tracing::warn!(slot = self.slot, pid, status = %how, ran = ?ran, restart_in = ?delay, "worker {pid} exited ({how}); restarting it");
        self.update(|v| {
            v.pid = None;
            v.restarts += 1;
            v.last_exit = Some(how);
        });
    }

    /// Starts a new worker, waits until it serves, puts it in `current`'s
    /// place and stops the old one gracefully: true. If the new one cannot
    /// start or connect, the old one keeps serving: false.
    async fn replace(&self, current: &mut Worker) -> bool {
        let mut new = match self.spawn() {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(slot = self.slot, error = %e, "cannot start a replacement; keeping the old worker");
                return false;
            }
        };
        let connected = timeout(CONNECT_WITHIN, async {
            loop {
                if self.dispatcher.process(new.pid).serving {
                    return Ok(());
                }
                tokio::select! {
                    _ = sleep(CONNECTED_CHECK) => {}
                    status = new.child.wait() => return Err(describe(status)),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("not connected within {CONNECT_WITHIN:?}")));
        if let Err(why) = connected {
            // Its pid must be the one that dials in: a wrapper script must
            // `exec` the worker.
            tracing::error!(
                slot = self.slot,
                pid = new.pid,
                why,
                "replacement did not connect to the LB (does the command exec the worker itself?); keeping the old worker"
            );
            self.stop_worker(new).await;
            return false;
        }
        tracing::info!(
            slot = self.slot,
            old = current.pid,
            new = new.pid,
            "replacement connected; stopping the old worker"
        );
        let (pid, started) = (new.pid, new.started);
        let old = std::mem::replace(current, new);
        self.stop_worker(old).await;
        self.update(|v| {
            v.pid = Some(pid);
            v.started = Some(started);
            v.replaced += 1;
        });
        true
    }

    /// SIGTERM, then up to `stop_timeout` to exit, then SIGKILL (to its
    /// whole process group).
    async fn stop_worker(&self, mut w: Worker) {
        let pid = w.pid;
        // Once reaped, its pid may be another process's: no signal then.
        if let Ok(Some(status)) = w.child.try_wait() {
            self.children.remove(pid);
            tracing::info!(slot = self.slot, pid, status = %describe(Ok(status)), "worker had exited");
            return;
        }
        // SAFETY: signalling a child we own and have not reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let status = match timeout(self.settings.stop_timeout, w.child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                tracing::warn!(
                    slot = self.slot,
                    pid,
                    "worker did not stop in time: killing it"
                );
                // SAFETY: its group is its own (process_group(0) at start).
                unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
                let _ = w.child.kill().await;
                w.child.wait().await
            }
        };
        self.children.remove(pid);
        tracing::info!(slot = self.slot, pid, status = %describe(status), "worker stopped");
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
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGALRM => "SIGALRM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
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
